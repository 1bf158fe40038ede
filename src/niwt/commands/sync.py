"""``niwt sync``: upload the MLflow metrics and artifacts that stages could not log.

When logging fails after a stage's work (server down, database locked), the stage keeps its
outputs and exits 0 (DVC records it), and its metrics wait under
``<project>/.niwt/pending-tracking/<run id>/``. This command logs them into their run (the one
the stage opened before working), ends it FINISHED and removes the entry.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--params", type=Path, default=Path("params.yaml"),
                    help="params file; its directory's project holds the pending entries (default: %(default)s)")
    sp.add_argument("--uri", help="tracking URI to upload to (default: the one each entry was made for)")


def command(args: argparse.Namespace) -> int:
    """Upload every pending entry; exit 0 when all went up (or none were waiting), else 1."""
    from niwt.integration import tracking
    from niwt.io.project import project_root

    root = project_root(Path(args.params).absolute().parent, default=Path.cwd())
    done, problems = tracking.sync_pending(root, args.uri)
    for problem in problems:
        print(f"niwt sync: error: {problem}", file=sys.stderr)
    print(f"niwt sync: uploaded {done} pending run(s){f', {len(problems)} left' if problems else ''}", flush=True)
    return 1 if problems else 0
