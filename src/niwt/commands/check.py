"""``niwt check [--params FILE]``: read a params file exactly as every stage will, before DVC does.

DVC reads ``params.yaml`` itself, before any niwt code runs, and expands every YAML alias: a few nested
ones (an "alias bomb") make ``dvc status`` and ``dvc repro`` grow to gigabytes and hang. niwt's loader
refuses aliases, duplicate keys, unknown keys, values out of bounds and files over
:data:`niwt.config.load.MAX_PARAMS_BYTES` at the first event, in milliseconds. The Prefect flow runs the
same check before its first stage; run this before ``dvc repro`` on a params file you did not write.
It also checks ``extract.layer`` against ``model.arch`` (the layer exists, a nonlinearity is above it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")


def command(args: argparse.Namespace) -> int:
    """``niwt check``; returns the exit status (2: the file would fail a stage, or hang DVC)."""
    from niwt.config.load import load_params
    from niwt.errors import InputError
    from niwt.importance.degenerate import check_structure

    try:
        p = load_params(args.params)
        # the importance layer against the architecture (fingerprint, the first stage, checks it too)
        check_structure(p.model.arch, p.extract.layer, p.model.image_size, width=p.model.width, hidden=p.model.hidden,
                        allow=p.extract.allow_degenerate)
    except InputError as err:
        print(f"niwt check: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.params}: ok (every stage reads it; DVC can too)")
    return 0
