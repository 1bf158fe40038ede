"""Write the per-method lines of dvc.yaml's plots from the methods the pipeline runs.

    python scripts/dvc_method_plots.py          # rewrite dvc.yaml in place
    python scripts/dvc_method_plots.py --check  # exit 1 (printing the expected lines) if out of date

DVC overlays several files in one plot only when each is named (a directory plot becomes one plot
per file), so the seen-unseen curves and the per-class panels list one file per method. These
lines are generated: one per method of ``inject.methods`` in params.yaml, in registry order, as
``evaluate`` writes them (``plots/evaluate/<kind>/<method>.csv``). Everything else in dvc.yaml,
comments included, is left as it is.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

from niwt.injection.registry import ordered

REPO = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^(?P<indent>\s+)plots/evaluate/(?P<kind>curves|per_class)/[^/\s]+\.csv: (?P<field>\w+)\n")


def methods(params: Path) -> list[str]:
    """The methods the pipeline runs (params.yaml ``inject.methods``), in registry order."""
    return ordered(list(yaml.safe_load(params.read_text())["inject"]["methods"]))


def generate(text: str, names: list[str]) -> str:
    """``text`` (dvc.yaml) with each block of per-method plot lines replaced by one line per name."""
    out: list[str] = []
    previous: tuple[str, str, str] | None = None
    for line in text.splitlines(keepends=True):
        match = LINE.match(line)
        key = (match["indent"], match["kind"], match["field"]) if match else None
        if key is not None and key != previous:
            indent, kind, field = key
            out += [f"{indent}plots/evaluate/{kind}/{name}.csv: {field}\n" for name in names]
        elif key is None:
            out.append(line)
        previous = key
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if dvc.yaml is out of date")
    parser.add_argument("--root", type=Path, default=REPO, help="the project (dvc.yaml, params.yaml)")
    args = parser.parse_args(argv)
    dvc_yaml = args.root / "dvc.yaml"
    text = dvc_yaml.read_text()
    wanted = generate(text, methods(args.root / "params.yaml"))
    if wanted == text:
        return 0
    if args.check:
        lines = [line for line in wanted.splitlines() if LINE.match(line + "\n")]
        print(f"{dvc_yaml}: the per-method plot lines are out of date; run `python scripts/dvc_method_plots.py`. "
              "Expected:\n" + "\n".join(lines), file=sys.stderr)
        return 1
    dvc_yaml.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
