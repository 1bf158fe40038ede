"""A CUB-shaped image dataset in the project's folder format, built from the real xlsa17 CUB split files.

CUB's images and ``res101.mat`` (which says which image shows which class) are not available here,
so the labels are generated, consistently with everything the split files do say:

* the 200 classes of ``allclasses_names`` in that order, with its 312 class attributes
  ``original_att`` (0..100, the percentage of a class's images showing the attribute);
* seen / unseen exactly as the protocol: xlsa17 lists CUB's 150 seen classes first, and the
  classes of ``test_unseen_loc`` are its last 50 (the images are generated so that this holds);
* the real split sizes: 7,057 trainval, 1,764 test_seen and 2,967 test_unseen images (11,788), about
  59 per class, unseen classes only in test_unseen, seen classes in trainval and test_seen;
* with ``sent_splits.mat`` and a chosen set of 50 validation classes (``val_classes``): its
  class-disjoint train/val split of the seen classes in image counts: the validation classes hold
  ``val_loc``'s 2,946 images (2,355 trainval + 591 test_seen), the other 100 ``train_loc``'s 5,875.

Images carry their class's attributes, so the zero-shot methods have something to learn: attribute
``j`` is a fixed seeded smooth, localised colour pattern ``P_j`` (3 x S x S: a Gaussian blob times a
low-frequency wave, in a random colour), and an image of class ``c`` is
``x = background + sum_j z_j P_j + noise`` with ``z_j ~ Bernoulli(original_att[c, j] / 100)`` (one
(N x 312) x (312 x 3S^2) product), saved as an S x S PNG.

Written as the folder dataset (``data.name: folder``, README "Your own data and classifier")::

    images/<class>/<class>_<k>.png, classes.csv (class,split), attributes.csv, splits.csv

``splits.csv`` fixes every image's split; the trainval images of each seen class are divided into
train and val (fine-tuning's model selection) as ``prepare`` divides xlsa17's trainval
(``val_fraction`` of them, 0.1 / (1 - 0.2) by default, as ``data.val_fraction`` and
``data.test_seen_fraction`` do). The folder format has no column for the validation classes of the
class-disjoint protocol; ``validate.classes: auto`` then draws them from ``base.seed``, which is why
:func:`seeded_validation_classes` reproduces that draw for ``val_classes``.

Usage: ``python benchmarks/cub_shaped.py OUT [--scale 0.02] [--seed 0] [--xlsa tests/data/xlsa17/CUB]``
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
XLSA_CUB = REPO / "tests" / "data" / "xlsa17" / "CUB"
IMAGES_PER_CLASS_MAX = 60  # CUB_200_2011 has 41..60 images per class, most 60
MIN_TRAINVAL, MIN_TEST = 2, 1  # each seen class: a train and a val image, and a test_seen image


@dataclass(frozen=True)
class Plan:
    """Every image's class and split, before any pixel is drawn.

    Attributes:
        class_names: ``allclasses_names`` (200), the class order of ``attributes``.
        unseen: the unseen class names (the last 50).
        validation: the seen classes given the ``val_loc`` image counts (empty without them).
        attributes: (200, 312) float32 ``original_att`` (0..100).
        labels: (N,) index into ``class_names`` per image, grouped by class.
        splits: (N,) ``train`` | ``val`` | ``test_seen`` | ``test_unseen``.
    """

    class_names: list[str]
    unseen: list[str]
    validation: list[str]
    attributes: np.ndarray
    labels: np.ndarray
    splits: np.ndarray

    def sizes(self) -> dict[str, int]:
        """Images per protocol split (trainval = train + val)."""
        count = {s: int((self.splits == s).sum()) for s in ("train", "val", "test_seen", "test_unseen")}
        return {"trainval": count["train"] + count["val"], **count, "total": len(self.splits)}


def seeded_validation_classes(seen: list[str], fraction: float, min_classes: int, seed: int) -> list[str]:
    """The seen classes ``finetune_validation`` draws for a dataset without its own validation classes
    (``validate.fraction``, ``validate.min_classes``, ``base.seed``): the project's own draw, so the
    classes given ``val_loc``'s image counts are the classes the pipeline validates on."""
    from niwt.data.tables import held_out_classes, validation_count

    count = validation_count(len(seen), fraction, min_classes)
    return [seen[i] for i in held_out_classes(len(seen), count, seed, "validate.fraction")]


def _spread(total: int, k: int, floor: int, rng: np.random.Generator) -> np.ndarray:
    """``total`` items over ``k`` classes as evenly as possible (the remainder to random classes),
    at least ``floor`` each (then the sum exceeds ``total``)."""
    counts = np.full(k, total // k, dtype=np.int64)
    counts[rng.choice(k, total % k, replace=False)] += 1
    return np.maximum(counts, floor)


def _loc_counts(xlsa: Path, validation: bool) -> dict[str, int]:
    """Image counts of the protocol's sets; with ``validation``, trainval / test_seen divided between
    the validation classes (``val_loc``) and the others (``train_loc``) of ``sent_splits.mat``."""
    from niwt.data.xlsa17 import load_att_splits, load_sent_splits

    att = load_att_splits(xlsa / "att_splits.mat")
    counts = {"trainval": len(att.trainval_loc), "test_seen": len(att.test_seen_loc),
              "test_unseen": len(att.test_unseen_loc)}
    sent = xlsa / "sent_splits.mat"
    if validation and sent.is_file():
        other = load_sent_splits(sent)
        if other.val_loc is not None:
            val = np.asarray(other.val_loc)
            counts["val_trainval"] = int(np.isin(val, att.trainval_loc).sum())
            counts["val_test_seen"] = int(np.isin(val, att.test_seen_loc).sum())
    return counts


def plan(xlsa: Path = XLSA_CUB, scale: float = 1.0, seed: int = 0, val_classes: list[str] | None = None,
         val_fraction: float = 0.125) -> Plan:
    """Labels and splits of a CUB-shaped dataset (see the module docstring).

    Args:
        xlsa: the xlsa17 CUB folder (``att_splits.mat``; ``sent_splits.mat`` for ``val_loc``).
        scale: fraction of the real image counts (every class keeps at least one image per split).
        val_classes: the seen classes to give ``val_loc``'s image counts (e.g.
            :func:`seeded_validation_classes`); None: the seen classes share the counts evenly.
        val_fraction: of each seen class's trainval images, marked ``val`` (fine-tuning's selection).
    """
    from niwt.data.xlsa17 import load_att_splits

    att = load_att_splits(xlsa / "att_splits.mat")
    names = att.class_names
    counts = _loc_counts(xlsa, val_classes is not None)
    n_unseen = 50  # xlsa17 CUB: 150 seen classes first, then the 50 unseen ones
    seen, unseen = names[:-n_unseen], names[-n_unseen:]
    rng = np.random.default_rng(seed)
    groups: list[tuple[list[str], int, int]] = []  # (classes, trainval images, test_seen images)
    if val_classes and "val_trainval" in counts:
        held = set(val_classes)
        if not held <= set(seen):
            raise ValueError(f"validation classes must be seen classes: {sorted(held - set(seen))[:5]}")
        groups.append(([n for n in seen if n in held], counts["val_trainval"], counts["val_test_seen"]))
        groups.append(([n for n in seen if n not in held], counts["trainval"] - counts["val_trainval"],
                       counts["test_seen"] - counts["val_test_seen"]))
    else:
        groups.append((seen, counts["trainval"], counts["test_seen"]))
    per_class: dict[str, tuple[int, int]] = {}
    for members, trainval, test_seen in groups:
        tv = _spread(round(trainval * scale), len(members), MIN_TRAINVAL, rng)
        ts = _spread(round(test_seen * scale), len(members), MIN_TEST, rng)
        per_class.update({n: (int(a), int(b)) for n, a, b in zip(members, tv, ts, strict=True)})
    tu = _spread(round(counts["test_unseen"] * scale), n_unseen, 1, rng)
    labels, splits = [], []
    for index, name in enumerate(names):
        if name in per_class:
            trainval, test_seen = per_class[name]
            n_val = min(max(1, round(val_fraction * trainval)), trainval - 1)
            kinds = ["train"] * (trainval - n_val) + ["val"] * n_val + ["test_seen"] * test_seen
            kinds = list(rng.permutation(kinds))  # the split of an image is not its file order
        else:
            kinds = ["test_unseen"] * int(tu[unseen.index(name)])
        labels += [index] * len(kinds)
        splits += kinds
    return Plan(list(names), list(unseen), list(val_classes or []) if "val_trainval" in counts else [],
                att.original_att.astype(np.float32), np.asarray(labels, dtype=np.int64), np.asarray(splits))


def attribute_patterns(n_attributes: int, size: int, seed: int) -> np.ndarray:
    """(n_attributes, 3 * size * size) float32 patterns: a Gaussian blob (random centre, width
    size/10..size/5) times a wave of at most 2 cycles per image, in a random colour; max |value| 1."""
    rng = np.random.default_rng(seed)
    grid = (np.arange(size) + 0.5) / size
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    centre = rng.uniform(0.15, 0.85, (n_attributes, 2))
    width = rng.uniform(0.1, 0.2, n_attributes)
    freq = rng.integers(0, 3, (n_attributes, 2))
    phase = rng.uniform(0, 2 * np.pi, n_attributes)
    colour = rng.normal(size=(n_attributes, 3))
    colour /= np.linalg.norm(colour, axis=1, keepdims=True)
    dist2 = (yy - centre[:, :1, None]) ** 2 + (xx - centre[:, 1:, None]) ** 2
    blob = np.exp(-dist2 / (2 * width[:, None, None] ** 2))
    wave = np.cos(2 * np.pi * (freq[:, :1, None] * yy + freq[:, 1:, None] * xx) + phase[:, None, None])
    spatial = blob * (0.5 + 0.5 * wave)
    patterns = colour[:, :, None, None] * spatial[:, None]
    patterns /= np.abs(patterns).reshape(n_attributes, -1).max(1)[:, None, None, None]
    return patterns.reshape(n_attributes, -1).astype(np.float32)


def render(labels: np.ndarray, attributes: np.ndarray, size: int = 32, seed: int = 0, contrast: float = 45.0,
           noise: float = 8.0) -> np.ndarray:
    """(N, size, size, 3) uint8 images: grey + the patterns of each image's Bernoulli-drawn attributes
    (scaled to ``contrast`` grey levels per standard deviation) + Gaussian pixel noise."""
    rng = np.random.default_rng(seed + 1)
    prob = np.clip(attributes[labels] / 100.0, 0.0, 1.0)
    z = (rng.random(prob.shape) < prob).astype(np.float32)
    patterns = attribute_patterns(attributes.shape[1], size, seed)
    x = z @ patterns  # (N, 3 * size * size)
    x = 128.0 + contrast * (x - x.mean()) / max(float(x.std()), 1e-6)
    x += rng.normal(0.0, noise, x.shape).astype(np.float32)
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return x.reshape(len(labels), 3, size, size).transpose(0, 2, 3, 1)


def expected_images(attributes: np.ndarray, size: int = 32, seed: int = 0) -> np.ndarray:
    """(n_classes, 3 * size * size) each class's mean pattern sum ``sum_j p_j P_j`` (unscaled): what an
    image of the class shows on average, up to the affine map of :func:`render`."""
    return (np.clip(attributes / 100.0, 0, 1) @ attribute_patterns(attributes.shape[1], size, seed)).astype(np.float32)


def write_folder(out: Path, p: Plan, size: int = 32, seed: int = 0) -> dict[str, int]:
    """Render every image of ``p`` and write the folder dataset under ``out``; returns the split sizes."""
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pixels = render(p.labels, p.attributes, size, seed)
    unseen = set(p.unseen)
    rows = []
    for name in p.class_names:
        (out / "images" / name).mkdir(parents=True, exist_ok=True)
    k = np.zeros(len(p.class_names), dtype=np.int64)
    for i, (label, split) in enumerate(zip(p.labels, p.splits, strict=True)):
        name = p.class_names[label]
        rel = f"images/{name}/{name}_{k[label]:04d}.png"
        k[label] += 1
        Image.fromarray(pixels[i]).save(out / rel, compress_level=1)
        rows.append((rel, str(split)))
    with open(out / "classes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "split"])
        w.writerows((n, "unseen" if n in unseen else "seen") for n in p.class_names)
    with open(out / "attributes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", *(f"attribute_{j + 1:03d}" for j in range(p.attributes.shape[1]))])
        w.writerows([n, *(f"{v:.6g}" for v in row)] for n, row in zip(p.class_names, p.attributes, strict=True))
    with open(out / "splits.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "split"])
        w.writerows(rows)
    return p.sizes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--xlsa", type=Path, default=XLSA_CUB,
                        help="xlsa17 CUB folder (att_splits.mat, sent_splits.mat)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the real image counts")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="labels, patterns and pixels; also base.seed")
    parser.add_argument("--validation-fraction", type=float, default=None,
                        help="give val_loc's image counts to the classes the pipeline draws with this "
                             "validate.fraction (and --validation-min-classes, --seed); default: none")
    parser.add_argument("--validation-min-classes", type=int, default=5)
    args = parser.parse_args()
    start = time.perf_counter()
    seen = None
    if args.validation_fraction is not None:
        from niwt.data.xlsa17 import load_att_splits

        seen = seeded_validation_classes(load_att_splits(args.xlsa / "att_splits.mat").class_names[:150],
                                         args.validation_fraction, args.validation_min_classes, args.seed)
    sizes = write_folder(args.out, plan(args.xlsa, args.scale, args.seed, seen), args.size, args.seed)
    print(f"{args.out}: {sizes} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
