"""Write the embedded synthetic benchmark as a ``data.name: folder`` dataset.

    python scripts/synthetic_to_folder.py data/raw/synthetic_folder [--params params.yaml]

generates the synthetic dataset of ``params.yaml`` (``data.synthetic``, ``base.seed``) and writes it in
the folder layout of the README's 'Your own data and classifier': ``images/<class>/<file>`` (hard
links to the generated JPEGs where possible), ``classes.csv`` (class, split, description) and
``attributes.csv`` (the continuous attribute matrix, exact). File names keep the generator's order,
so ``prepare`` draws the same split from ``base.seed`` and a run with ``data.name: folder`` and
``data.root`` pointing here should reproduce the synthetic run's numbers.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import tempfile
from pathlib import Path

from niwt.config.load import load_params
from niwt.data.awa2 import load_awa2
from niwt.data.synthetic import generate_synthetic


def convert(raw, out: Path) -> None:
    """Write a loaded :class:`~niwt.data.raw.RawDataset` under ``out`` in the folder layout."""
    out.mkdir(parents=True, exist_ok=True)
    counters: dict[int, int] = {}
    for path, label in zip(raw.image_paths, raw.image_labels, strict=True):
        name = raw.class_names[label]
        n = counters[label] = counters.get(label, 0) + 1
        target = out / "images" / name / f"{n:05d}{Path(path).suffix.lower()}"  # name order = generator order
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
    unseen = set(raw.unseen)
    with (out / "classes.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["class", "split", "description"] if raw.descriptions else ["class", "split"])
        for i, name in enumerate(raw.class_names):
            row = [name, "unseen" if name in unseen else "seen"]
            writer.writerow(row + [raw.descriptions[i]] if raw.descriptions else row)
    with (out / "attributes.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["class", *raw.attribute_names])
        for name, values in zip(raw.class_names, raw.attributes, strict=True):
            writer.writerow([name, *(repr(float(v)) for v in values)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder dataset to write (data.root)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    p = load_params(args.params)
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; remove it first")
    with tempfile.TemporaryDirectory(dir=args.out.parent if args.out.parent.exists() else None) as tmp:
        generate_synthetic(Path(tmp) / "raw", p.data.synthetic, seed=p.base.seed)
        convert(load_awa2(Path(tmp) / "raw", name="synthetic"), args.out)
    print(f"wrote {args.out}: data.name: folder, data.root: {args.out}")


if __name__ == "__main__":
    main()
