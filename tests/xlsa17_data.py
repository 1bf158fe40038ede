"""Generated xlsa17-shaped feature files (Xian et al.'s ``xlsa17/data/<DATASET>/`` layout) for tests and benchmarks.

The real archive holds, per dataset, ``res101.mat`` (ResNet-101 features, image labels and paths) and
``att_splits.mat`` (class names, class attributes and the protocol's image index sets). Only the
``att_splits.mat`` files (and CUB's ``sent_splits.mat``) are available here, so this module generates a
``res101.mat`` that agrees with them in everything they say:

* **labels** (:func:`plan_labels`): a class per image such that the classes of the ``test_unseen_loc``
  images are exactly the unseen classes and the classes of ``trainval_loc`` + ``test_seen_loc`` exactly
  the seen ones, every seen class with >= 2 trainval and >= 1 test_seen image, every unseen class with
  >= 1 image. Where the file (or, for CUB, ``sent_splits.mat`` beside it) has ``train_loc``/``val_loc``,
  the classes of ``val_loc``'s images are exactly a set of seen *validation* classes and those of
  ``train_loc`` exactly the other seen classes (Xian et al.'s class-disjoint train/val split).
* **features** (:func:`write_res101`): ``dim`` x N, non-negative, mean about 0.5 like ResNet-101's pooled
  features, with class structure learnable from the class attributes ``att`` (see :func:`make_features`).
* **image_files**: unique MPI-style absolute paths ``/BS/xlsa17/<DS>/<marker>/<class>/<class>_<k>.jpg``
  (``marker`` ``JPEGImages`` for AWA1/AWA2, ``images`` otherwise, as ``niwt.data.xlsa17.IMAGE_MARKERS``).

What the real index sets say (checked on AWA1, AWA2, CUB ``sent_splits.mat``, SUN and FLO): ``train_loc`` and
``val_loc`` are disjoint, disjoint from ``test_unseen_loc``, and together cover exactly ``trainval_loc`` +
``test_seen_loc`` (the older split: both hold trainval *and* test_seen images; e.g. AWA2 ``val_loc`` =
7,340 trainval + 1,851 test_seen images, CUB 2,355 + 591, SUN 1,040 + 260). The real image list is sorted
by class, so each set is a union of runs of consecutive indices (CUB test_unseen: 41 runs for 50 classes,
AWA2: 8 runs for 10, SUN: 66 runs for 72, each SUN run a multiple of its 20 images per class; APY's
sets are interleaved, 1,858 runs). The plan keeps that: a class is a contiguous piece of one run where the
run count allows (so SUN gets exactly 20 images per class and CUB 41..60, as CUB_200_2011 has; AWA2's
unseen classes get 215..1,204 images, since a run of 215 cannot be shared), else a contiguous piece of the
set's sorted indices: roughly equal counts within each run, not across runs.

Which classes are unseen: CUB the last 50 of ``allclasses_names`` (xlsa17 lists seen classes first);
AWA1/AWA2 the standard 10 (chimpanzee, giant+panda, ...) when the names match; others a seeded choice of
the protocol's count (:data:`UNSEEN_COUNTS`; round(0.2 C) for an unknown dataset). Validation classes:
Xian et al.'s counts (:data:`VALIDATION_COUNTS`: CUB 50, AWA1/AWA2 13, SUN 65, FLO 20), a seeded choice
of the seen classes; where that count cannot be planned (too few runs' worth of classes, or too few images
for the per-class minimums), the count proportional to ``val_loc``'s share of the seen images, or the
nearest count that can.

Usage: ``python tests/xlsa17_data.py OUT --dataset CUB [--dim 2048] [--seed 0] [--splits tests/data/xlsa17/CUB]``
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import scipy.io

REPO = Path(__file__).resolve().parents[1]
SPLITS_ROOTS = (REPO / "tests" / "data" / "xlsa17", REPO.parent / "shared" / "data" / "xlsa17")
ATT_SPLITS, SENT_SPLITS, RES101 = "att_splits.mat", "sent_splits.mat", "res101.mat"
# the protocol's unseen class counts (Xian et al., "Proposed Split")
UNSEEN_COUNTS = {"CUB": 50, "AWA1": 10, "AWA2": 10, "SUN": 72, "APY": 12, "FLO": 20}
# Xian et al.'s validation classes (of the seen ones) for the class-disjoint hyper-parameter split
VALIDATION_COUNTS = {"CUB": 50, "AWA1": 13, "AWA2": 13, "SUN": 65, "APY": 5, "FLO": 20}
AWA_UNSEEN = ("chimpanzee", "giant+panda", "leopard", "persian+cat", "pig", "hippopotamus", "humpback+whale",
              "raccoon", "rat", "seal")
IMAGE_MARKERS = {"AWA1": "JPEGImages", "AWA2": "JPEGImages"}  # default: "images"
MIN_TRAINVAL, MIN_TEST_SEEN = 2, 1
FEATURE_MEAN = 0.5  # ResNet-101 pooled features on these datasets average about 0.4..0.5


# ------------------------------------------------------------------------------------------ reading


def _dataset_name(splits_dir: Path, dataset: str | None) -> str:
    return (dataset or Path(splits_dir).name).upper()


def _read(path: Path) -> dict[str, np.ndarray]:
    """The index sets (0-based int64), ``att`` as (C, A) and the class names of a split file."""
    mat = scipy.io.loadmat(str(path))
    out: dict[str, np.ndarray] = {k: np.asarray(mat[k]).ravel().astype(np.int64) - 1
                                  for k in mat if k.endswith("_loc")}
    out["att"] = np.ascontiguousarray(np.asarray(mat["att"], dtype=np.float64).T)
    if "allclasses_names" in mat:  # FLO's file has none
        out["names"] = np.asarray([str(np.asarray(c).ravel()[0]).strip() for c in mat["allclasses_names"].ravel()])
    else:
        out["names"] = np.asarray([f"class_{i + 1:03d}" for i in range(out["att"].shape[0])])
    return out


def _train_val(splits_dir: Path, split: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(train_loc, val_loc)`` from ``att_splits.mat``, else from ``sent_splits.mat`` beside it, else None."""
    if "val_loc" in split and "train_loc" in split:
        return split["train_loc"], split["val_loc"]
    sent = Path(splits_dir) / SENT_SPLITS
    if sent.is_file():
        other = _read(sent)
        if "val_loc" in other and "train_loc" in other:
            return other["train_loc"], other["val_loc"]
    return None


# -------------------------------------------------------------------------------------- label plan


def _runs(idx: np.ndarray) -> list[np.ndarray]:
    """Sorted indices cut into runs of consecutive integers."""
    if not idx.size:
        return []
    return np.split(idx, np.flatnonzero(np.diff(idx) != 1) + 1)


def _cut(run: np.ndarray, k: int, trainval: np.ndarray | None) -> list[np.ndarray]:
    """``run`` into ``k`` contiguous pieces of about equal size; with ``trainval`` (a mask over all images),
    each piece needs >= MIN_TRAINVAL trainval and >= MIN_TEST_SEEN other images. ValueError if impossible."""
    n = run.size
    if k < 1 or n < k:
        raise ValueError(f"{n} images cannot make {k} classes")
    if trainval is None:
        bounds = np.round(np.linspace(0, n, k + 1)).astype(np.int64)
        return [run[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    tv = trainval[run]
    cum_tv = np.concatenate([[0], np.cumsum(tv)])
    cum_ts = np.concatenate([[0], np.cumsum(~tv)])
    pieces, pos = [], 0
    for j in range(k - 1):
        target = pos + round((n - pos) / (k - j))
        need = max(int(np.searchsorted(cum_tv, cum_tv[pos] + MIN_TRAINVAL)),
                   int(np.searchsorted(cum_ts, cum_ts[pos] + MIN_TEST_SEEN)))
        end = max(target, need)
        if end >= n:
            raise ValueError(f"{n} images cannot make {k} seen classes")
        pieces.append(run[pos:end])
        pos = end
    pieces.append(run[pos:])
    for p in pieces:
        if trainval[p].sum() < MIN_TRAINVAL or (~trainval[p]).sum() < MIN_TEST_SEEN:
            raise ValueError(f"{n} images cannot make {k} seen classes")
    return pieces


def _capacity(run: np.ndarray, trainval: np.ndarray | None) -> int:
    """At most how many classes ``run`` can hold."""
    if trainval is None:
        return run.size
    n_tv = int(trainval[run].sum())
    return min(n_tv // MIN_TRAINVAL, (run.size - n_tv) // MIN_TEST_SEEN)


def _split_region(idx: np.ndarray, k: int, trainval: np.ndarray | None) -> list[np.ndarray]:
    """The images ``idx`` into ``k`` classes: each class a contiguous piece of one run of consecutive
    indices, runs given classes in proportion to their size (D'Hondt: the next class to the run with the
    most images per class), as the real class-sorted image list does; if the runs outnumber ``k`` or
    cannot hold the minimums, contiguous pieces of the sorted ``idx``. ValueError if neither works."""
    idx = np.sort(idx)
    runs = _runs(idx)
    if 0 < len(runs) <= k:
        caps = np.asarray([_capacity(r, trainval) for r in runs])
        if caps.min() >= 1 and caps.sum() >= k:
            sizes = np.asarray([r.size for r in runs], dtype=np.float64)
            counts = np.ones(len(runs), dtype=np.int64)
            for _ in range(k - len(runs)):
                score = np.where(counts < caps, sizes / counts, -1.0)
                counts[int(np.argmax(score))] += 1
            try:
                return [p for r, c in zip(runs, counts, strict=True) for p in _cut(r, int(c), trainval)]
            except ValueError:
                pass
    return _cut(idx, k, trainval)


def _unseen_names(names: list[str], ds: str, n_unseen_images: int, rng: np.random.Generator) -> list[str]:
    count = UNSEEN_COUNTS.get(ds, max(1, round(0.2 * len(names))))
    if ds == "CUB":
        chosen = set(names[-count:])  # xlsa17 lists CUB's 150 seen classes first
    elif ds in ("AWA1", "AWA2") and set(AWA_UNSEEN) <= set(names):
        chosen = set(AWA_UNSEEN)
    else:
        chosen = {names[i] for i in rng.choice(len(names), count, replace=False)}
    if len(chosen) > n_unseen_images:
        raise ValueError(f"{ds}: {len(chosen)} unseen classes but only {n_unseen_images} test_unseen images")
    return [n for n in names if n in chosen]


def _validation_plan(seen_idx: np.ndarray, val_idx: np.ndarray, n_seen: int, preferred: int | None,
                     trainval: np.ndarray) -> tuple[int, list[np.ndarray], list[np.ndarray]]:
    """The validation class count and the pieces of the validation / other seen images: ``preferred``
    if it can be planned, else the count proportional to the image shares, else the nearest that can."""
    other_idx = np.setdiff1d(seen_idx, val_idx)
    proportional = min(max(round(n_seen * val_idx.size / seen_idx.size), 1), n_seen - 1)
    candidates = [preferred] if preferred is not None and 1 <= preferred < n_seen else []
    candidates += sorted(range(1, n_seen), key=lambda n: (abs(n - proportional), n))
    for n_val in candidates:
        try:
            return n_val, _split_region(val_idx, n_val, trainval), _split_region(other_idx, n_seen - n_val, trainval)
        except ValueError:
            continue
    raise ValueError(f"no count of validation classes fits the {val_idx.size} val_loc images "
                     f"and the {other_idx.size} other seen images")


def plan_labels(splits_dir: Path, seed: int = 0,
                dataset: str | None = None) -> tuple[np.ndarray, list[str], list[str]]:
    """A class per image of the dataset whose ``att_splits.mat`` is in ``splits_dir``.

    Args:
        splits_dir: the xlsa17 folder (``att_splits.mat``; CUB: ``sent_splits.mat`` for ``val_loc``).
        seed: seeds the choice of unseen classes (datasets without a fixed list) and validation classes.
        dataset: the dataset name (``CUB``, ``AWA2``, ``SUN``, ...); default: the folder's name.

    Returns:
        ``(labels0, unseen, validation)``: (N,) int64 0-based indices into ``allclasses_names``; the unseen
        class names and the validation class names (empty without ``val_loc``), in ``allclasses_names``
        order. The classes of the ``test_unseen_loc`` images are exactly ``unseen``, those of
        ``trainval_loc`` + ``test_seen_loc`` the others (each with >= 2 trainval and >= 1 test_seen
        images), and those of ``val_loc`` exactly ``validation``.

    Raises:
        ValueError: the index sets do not partition 0..N-1, or too few images for the classes.
    """
    ds = _dataset_name(splits_dir, dataset)
    split = _read(Path(splits_dir) / ATT_SPLITS)
    names = [str(n) for n in split["names"]]
    trainval_loc, test_seen_loc, test_unseen_loc = (split[k] for k in ("trainval_loc", "test_seen_loc",
                                                                      "test_unseen_loc"))
    n = trainval_loc.size + test_seen_loc.size + test_unseen_loc.size
    every = np.sort(np.concatenate([trainval_loc, test_seen_loc, test_unseen_loc]))
    if not np.array_equal(every, np.arange(n)):
        raise ValueError(f"{splits_dir}: trainval/test_seen/test_unseen_loc do not partition 1..{n}")
    rng = np.random.default_rng(seed)
    unseen = _unseen_names(names, ds, test_unseen_loc.size, rng)
    unseen_set = set(unseen)
    seen = [c for c in names if c not in unseen_set]
    trainval = np.zeros(n, dtype=bool)
    trainval[trainval_loc] = True
    seen_idx = np.sort(np.concatenate([trainval_loc, test_seen_loc]))
    groups: list[tuple[list[str], list[np.ndarray]]] = [(unseen, _split_region(test_unseen_loc, len(unseen), None))]
    validation: list[str] = []
    tv = _train_val(splits_dir, split)
    if tv is not None:
        val_idx = np.intersect1d(tv[1], seen_idx)  # val_loc's seen images (all of val_loc in the real files)
        n_val, val_pieces, other_pieces = _validation_plan(seen_idx, val_idx, len(seen),
                                                           VALIDATION_COUNTS.get(ds), trainval)
        pick = set(rng.choice(len(seen), n_val, replace=False).tolist())
        validation = [c for i, c in enumerate(seen) if i in pick]
        groups += [(validation, val_pieces), ([c for i, c in enumerate(seen) if i not in pick], other_pieces)]
    else:
        groups.append((seen, _split_region(seen_idx, len(seen), trainval)))
    index = {c: i for i, c in enumerate(names)}
    labels = np.full(n, -1, dtype=np.int64)
    for members, pieces in groups:
        for name, piece in zip(members, pieces, strict=True):
            labels[piece] = index[name]
    assert (labels >= 0).all()
    return labels, unseen, validation


# ---------------------------------------------------------------------------------------- features


def make_features(att: np.ndarray, labels0: np.ndarray, dim: int = 2048, seed: int = 0, noise: float = 1.0,
                  idiosyncratic: float = 0.5, chunk: int = 4096) -> np.ndarray:
    """(N, dim) float32 non-negative features with the class structure of ``att`` ((C, A) class attributes).

    An image ``i`` of class ``c`` is ``softplus(P^T (att_c - mean_att + noise * s * u_i) / r + idiosyncratic * g_c + b
    + noise * e_i)``, then all features are scaled to mean 0.5 (ResNet-101's pooled features are
    non-negative with mean about 0.5):

    * ``P`` a seeded Gaussian (A, dim) projection, applied to the attributes centred over the classes,
      ``r`` making the class means' between-class standard deviation 1 per feature;
    * ``u_i`` ~ N(0, I_A): the image's own attribute variation (one bird shows a wing colour more than
      another), ``s`` the typical between-class standard deviation of one attribute: this noise lies in
      the same directions as the class differences, so it limits accuracy at any ``dim``;
    * ``g_c`` ~ N(0, I_dim) a seeded per-class component that the attributes cannot predict (what makes
      zero-shot harder than seen-class recognition); ``b`` ~ N(-0.5, 0.5) a per-feature bias;
    * ``e_i`` ~ N(0, I_dim) per-feature noise, in units of the between-class spread.

    Built in float32, in row chunks (the image noise depends on ``chunk``). How hard that is (seed 0; ridge
    from attributes to the seen classes' trainval means, nearest predicted mean on test_unseen / nearest
    seen mean on test_seen): at dim 2048 and ``noise`` 1 both are about 1.0 on CUB, AWA2 and SUN; ``noise``
    3 gives zero-shot 0.70 / 0.79 / 0.47 and seen 0.98 / 0.88 / 0.31; at dim 32 and ``noise`` 1 zero-shot
    is 0.44 / 0.69 / 0.41 (chance 0.02 / 0.10 / 0.014).
    """
    ss = np.random.SeedSequence([seed, 17])
    class_rng, image_rng = (np.random.default_rng(s) for s in ss.spawn(2))
    att = np.asarray(att, dtype=np.float32)
    proj = class_rng.standard_normal((att.shape[1], dim), dtype=np.float32)
    means = (att - att.mean(0)) @ proj
    spread = max(float(means.std()), 1e-12)
    proj /= np.float32(spread)
    means /= np.float32(spread)
    means += idiosyncratic * class_rng.standard_normal(means.shape, dtype=np.float32)
    means += class_rng.normal(-0.5, 0.5, dim).astype(np.float32)
    attribute_noise = np.float32(noise * float(att.std(0).mean()))
    x = np.empty((labels0.size, dim), dtype=np.float32)
    image_rng.standard_normal(out=x, dtype=np.float32)
    for start in range(0, labels0.size, chunk):
        block = x[start:start + chunk]
        u = image_rng.standard_normal((block.shape[0], att.shape[1]), dtype=np.float32)
        u *= attribute_noise
        block *= np.float32(noise)
        block += u @ proj
        block += means[labels0[start:start + chunk]]
        np.logaddexp(np.float32(0), block, out=block)  # softplus
    x *= np.float32(FEATURE_MEAN / max(float(x.mean(dtype=np.float64)), 1e-12))
    return x


def image_files(names: list[str], labels0: np.ndarray, dataset: str) -> list[str]:
    """Unique MPI-style absolute image paths, ``<class>_<k>`` numbered within each class in index order."""
    ds = dataset.upper()
    marker = IMAGE_MARKERS.get(ds, "images")
    order = np.argsort(labels0, kind="stable")
    rank = np.empty(labels0.size, dtype=np.int64)
    starts = np.searchsorted(labels0[order], labels0[order])
    rank[order] = np.arange(labels0.size) - starts
    return [f"/BS/xlsa17/{ds}/{marker}/{names[c]}/{names[c]}_{k + 1:05d}.jpg"
            for c, k in zip(labels0.tolist(), rank.tolist(), strict=True)]


def write_res101(out_dir: Path, dataset: str, splits_dir: Path, dim: int = 2048, seed: int = 0, noise: float = 1.0,
                 dtype=np.float32, *, idiosyncratic: float = 0.5) -> Path:
    """Write ``out_dir/<dataset>/res101.mat`` and copy the split files beside it; returns that folder.

    ``res101.mat`` (MAT v5, as the real one): ``features`` (dim, N) ``dtype`` (:func:`make_features` of
    ``att_splits.mat``'s ``att``), ``labels`` (N, 1) float64 1-based into ``allclasses_names`` (the plan
    of :func:`plan_labels`), ``image_files`` (N, 1) cell array of :func:`image_files`. ``att_splits.mat``
    and, where present, ``sent_splits.mat`` are copied unchanged.
    """
    splits_dir = Path(splits_dir)
    folder = Path(out_dir) / dataset
    folder.mkdir(parents=True, exist_ok=True)
    labels0, _, _ = plan_labels(splits_dir, seed, dataset)
    split = _read(splits_dir / ATT_SPLITS)
    names = [str(n) for n in split["names"]]
    features = make_features(split["att"], labels0, dim, seed, noise, idiosyncratic)
    if np.dtype(dtype) != features.dtype:
        features = features.astype(dtype)
    cells = np.empty((labels0.size, 1), dtype=object)
    cells[:, 0] = image_files(names, labels0, dataset)
    scipy.io.savemat(str(folder / RES101), {"features": features.T, "labels": (labels0 + 1.0)[:, None],
                                            "image_files": cells}, format="5", do_compression=False)
    for name in (ATT_SPLITS, SENT_SPLITS):
        if (splits_dir / name).is_file():
            shutil.copyfile(splits_dir / name, folder / name)
    return folder


# --------------------------------------------------------------------------------------------- CLI


def default_splits(dataset: str) -> Path:
    """``tests/data/xlsa17/<DS>`` if it has ``att_splits.mat``, else the shared reference copy."""
    for root in SPLITS_ROOTS:
        if (root / dataset.upper() / ATT_SPLITS).is_file():
            return root / dataset.upper()
    return SPLITS_ROOTS[0] / dataset.upper()


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="writes OUT/<DATASET>/{res101,att_splits}.mat")
    parser.add_argument("--dataset", required=True, help="CUB, AWA2, SUN, AWA1, APY, ...")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension (ResNet-101: 2048)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=1.0, help="per-image noise / between-class spread")
    parser.add_argument("--splits", type=Path, default=None,
                        help="folder with att_splits.mat (default tests/data/xlsa17/<DATASET>)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    folder = write_res101(args.out, args.dataset, args.splits or default_splits(args.dataset), args.dim,
                          args.seed, args.noise)
    print(f"{folder}: written in {time.perf_counter() - start:.1f} s")
    return folder


if __name__ == "__main__":
    main()
