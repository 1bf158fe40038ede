"""Reader of Xian et al.'s xlsa17 "Proposed Split" (PS) files, the standard GZSL protocol.

Published GZSL numbers on AWA2, CUB and SUN are only comparable on this split, so the loaders
reorder their classes to ``allclasses_names`` and take the seen/unseen classes and the per-image
trainval / test_seen / test_unseen assignment from here instead of inventing their own.

Folder layout (``xlsa17/data/<DATASET>/``)::

    att_splits.mat       allclasses_names (C cells), att / original_att (A x C), *_loc (1-based)
    res101.mat           optional: image_files (N cells, absolute MPI paths), labels (N, 1-based),
                         features (2048 x N, never loaded here)
    sent_splits.mat      CUB only, optional: att (1024 x 200 class-level sentence embeddings)
    trainvalclasses.txt  optional: seen class names, one a line
    testclasses.txt      optional: unseen class names, one a line

``att_splits.mat`` alone does not say which classes are unseen (its indices point into the image
list of ``res101.mat``), so seen/unseen come from ``res101.mat`` labels or the two class lists;
with neither, :func:`apply_xlsa17` refuses rather than guess. Files are read with
``scipy.io.loadmat`` only (no pickles), after a forked child has checked that parsing does not
crash the interpreter (see :func:`loadmat`).
"""

from __future__ import annotations

import faulthandler
import os
import signal
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.io

from niwt.data.features import row_path
from niwt.data.raw import DatasetError, RawDataset

ATT_SPLITS = "att_splits.mat"
RES101 = "res101.mat"
SENT_SPLITS = "sent_splits.mat"
TRAINVAL_CLASSES = "trainvalclasses.txt"
TEST_CLASSES = "testclasses.txt"
LOC_KEYS = {"trainval": "trainval_loc", "test_seen": "test_seen_loc", "test_unseen": "test_unseen_loc"}
# res101.mat paths are absolute paths on MPI machines; the part after this directory is the same
# in every local copy of the dataset.
IMAGE_MARKERS = {"awa2": "JPEGImages", "cub": "images", "sun": "images"}
_SHOW = 5  # how many offending items an error message lists


@dataclass(frozen=True)
class Xlsa17Splits:
    """The content of one ``att_splits.mat`` (or ``sent_splits.mat``), validated, in Python form.

    Attributes:
        path: the file read.
        class_names: ``allclasses_names``, stripped; the canonical class order.
        att: (C, A) float32, rows in ``class_names`` order (the file's A x C, transposed); in
            ``att_splits.mat`` each row is L2-normalised.
        original_att: (C, A) float32 unnormalised attributes, or None (``sent_splits.mat``).
        trainval_loc, test_seen_loc, test_unseen_loc: 0-based int64 indices into the image list
            of ``res101.mat``.
        train_loc, val_loc: 0-based, or None where the file lacks them (CUB and APY copies).
            Beware: they come from the older split and partition trainval + test_seen, so
            ``train_loc`` contains test_seen images; remove those before using it for tuning.
        seen, unseen: class names in ``class_names`` order, or None when not derivable (no
            ``res101.mat`` labels and no class lists).
        n_images: N, the length of the image list, when known (from labels or the caller).
    """

    path: Path
    class_names: list[str]
    att: np.ndarray
    original_att: np.ndarray | None
    trainval_loc: np.ndarray
    test_seen_loc: np.ndarray
    test_unseen_loc: np.ndarray
    train_loc: np.ndarray | None = None
    val_loc: np.ndarray | None = None
    seen: list[str] | None = None
    unseen: list[str] | None = None
    n_images: int | None = None

    @property
    def locs(self) -> dict[str, np.ndarray]:
        """The three protocol sets by split name (``trainval``, ``test_seen``, ``test_unseen``)."""
        return {"trainval": self.trainval_loc, "test_seen": self.test_seen_loc,
                "test_unseen": self.test_unseen_loc}


# ------------------------------------------------------------------------------------ mat helpers


def loadmat(path: Path, variable_names: list[str] | None = None) -> dict[str, np.ndarray]:
    """``scipy.io.loadmat`` with every failure turned into a DatasetError naming the file.

    scipy's MAT v5 reader can crash the interpreter outright (SIGSEGV in ``mio5_utils``) on some
    corrupted files, which no ``except`` can catch and which would take the whole stage down
    with it. Where ``os.fork`` exists, a forked child parses the file first (a few ms; it only
    reports whether parsing worked) and a crash there becomes a DatasetError; the parser is
    deterministic, so the file is then read here.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    if hasattr(os, "fork"):
        _check_in_child(path, variable_names)
    try:
        return scipy.io.loadmat(str(path), variable_names=variable_names)
    except NotImplementedError as err:  # MATLAB v7.3 (HDF5) files
        raise DatasetError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; save it with -v7 ({err})") \
            from err
    except Exception as err:  # scipy's parser raises many types (MatReadError, IndexError, ...) on junk
        raise DatasetError(f"{path}: not a readable MATLAB .mat file ({type(err).__name__}: {err})") from err


def _check_in_child(path: Path, variable_names: list[str] | None) -> None:
    """Raise a DatasetError if parsing ``path`` kills the process; Python errors are left to the
    caller's own parse (same parser, same message)."""
    pid = os.fork()
    if pid == 0:  # child: parse, and leave without running any of the parent's exit handlers
        status = 0
        try:
            faulthandler.disable()  # a crash is reported by the parent, not as a traceback dump
            scipy.io.loadmat(str(path), variable_names=variable_names)
        except BaseException:  # noqa: B036 - any Python-level failure is reported by the parent's parse
            status = 1
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        raise DatasetError(f"{path}: not a readable MATLAB .mat file (the MAT parser crashed with {sig} on it: "
                           "the file is corrupted)")


def require(mat: dict[str, np.ndarray], key: str, path: Path) -> np.ndarray:
    """``mat[key]``, or a DatasetError naming the file, the key and the keys it does have."""
    if key not in mat:
        have = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetError(f"{path}: no variable {key!r} (has {have})")
    return mat[key]


def cellstr(value: np.ndarray, path: Path, key: str) -> list[str]:
    """A MATLAB cell array of strings (or a char matrix) as a list of stripped Python strings."""
    arr = np.asarray(value)
    if arr.dtype.kind == "U":
        return [str(s).strip() for s in arr.ravel()]
    if arr.dtype != object:
        raise DatasetError(f"{path}: {key!r} is not a cell array of strings (dtype {arr.dtype})")
    out = []
    for i, item in enumerate(arr.ravel()):
        flat = np.asarray(item).ravel()
        if flat.size == 0:
            out.append("")
        elif flat.dtype.kind == "U" and flat.size == 1:
            out.append(str(flat[0]).strip())
        else:
            raise DatasetError(f"{path}: {key!r} cell {i + 1} is not a string "
                               f"({flat.dtype}, {flat.size} items)")
    return out


def _matrix(mat: dict[str, np.ndarray], key: str, path: Path, n_classes: int) -> np.ndarray:
    """The file's (A, C) matrix ``key`` as a finite (C, A) float32 array, rows in class order."""
    arr = np.asarray(require(mat, key, path))
    if arr.ndim != 2 or arr.shape[1] != n_classes or arr.dtype.kind not in "fiu":
        raise DatasetError(f"{path}: {key!r} has shape {arr.shape} ({arr.dtype}); expected a numeric "
                           f"(n_attributes, {n_classes}) matrix, one column per class in allclasses_names")
    if not np.isfinite(arr).all():
        raise DatasetError(f"{path}: {key!r} contains NaN or infinite values")
    return np.ascontiguousarray(arr.T, dtype=np.float32)


def _locs(mat: dict[str, np.ndarray], key: str, path: Path, n_images: int | None) -> np.ndarray:
    """A 1-based MATLAB index vector as 0-based int64, checked for range and duplicates."""
    arr = np.asarray(require(mat, key, path))
    if arr.dtype.kind not in "iuf" or (arr.size and not np.all(arr == np.round(arr))):
        raise DatasetError(f"{path}: {key!r} is not an integer index vector ({arr.dtype})")
    loc = arr.ravel().astype(np.int64) - 1
    if loc.size and loc.min() < 0:
        raise DatasetError(f"{path}: {key!r} has index {loc.min() + 1}; MATLAB indices start at 1")
    if n_images is not None and loc.size and loc.max() >= n_images:
        raise DatasetError(f"{path}: {key!r} has index {loc.max() + 1} beyond the {n_images} images")
    if np.unique(loc).size != loc.size:
        raise DatasetError(f"{path}: {key!r} lists some images more than once")
    return loc


def _check_partition(locs: dict[str, np.ndarray], path: Path, n_images: int | None) -> None:
    """The three protocol sets must be disjoint (else test images leak into training) and, when
    N is known, cover every image exactly once."""
    names = list(locs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = np.intersect1d(locs[a], locs[b])
            if both.size:
                raise DatasetError(f"{path}: {LOC_KEYS[a]} and {LOC_KEYS[b]} share {both.size} images "
                                   f"(e.g. index {both[0] + 1}); the protocol sets must be disjoint")
    total = sum(v.size for v in locs.values())
    if n_images is not None and total != n_images:
        raise DatasetError(f"{path}: the three *_loc sets hold {total} images but the image list has "
                           f"{n_images}; they must cover 1..{n_images}")


# ------------------------------------------------------------------------------ seen and unseen


def _classes_from_labels(names: list[str], locs: dict[str, np.ndarray], labels: np.ndarray,
                         path: Path) -> tuple[list[str], list[str]]:
    """Seen = classes of trainval/test_seen images, unseen = classes of test_unseen images."""
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise DatasetError(f"{path}: image labels outside 1..{len(names)} (the classes in allclasses_names)")
    unseen_idx = set(np.unique(labels[locs["test_unseen"]]).tolist())
    seen_idx = set(np.unique(labels[np.concatenate([locs["trainval"], locs["test_seen"]])]).tolist())
    both = sorted(unseen_idx & seen_idx)
    if both:
        raise DatasetError(f"{path}: classes with images both in test_unseen and in trainval/test_seen: "
                           f"{[names[i] for i in both[:_SHOW]]}")
    neither = [n for i, n in enumerate(names) if i not in unseen_idx and i not in seen_idx]
    if neither:
        raise DatasetError(f"{path}: classes without any image in the protocol sets: {neither[:_SHOW]}")
    seen = [n for i, n in enumerate(names) if i in seen_idx]
    return seen, [n for i, n in enumerate(names) if i in unseen_idx]


def _read_names(path: Path) -> list[str]:
    """Non-blank, stripped lines of a class-list file."""
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot be read ({err})") from err


def _classes_from_lists(names: list[str], folder: Path) -> tuple[list[str], list[str]] | None:
    """Seen/unseen from ``trainvalclasses.txt``/``testclasses.txt`` in ``folder``; None if absent."""
    seen_path, unseen_path = folder / TRAINVAL_CLASSES, folder / TEST_CLASSES
    if not seen_path.is_file() and not unseen_path.is_file():
        return None
    for p in (seen_path, unseen_path):
        if not p.is_file():
            raise DatasetError(f"{p}: file not found (the other class list is there; both are needed)")
    seen, unseen = _read_names(seen_path), _read_names(unseen_path)
    known = set(names)
    for p, listed in ((seen_path, seen), (unseen_path, unseen)):
        unknown = [n for n in listed if n not in known]
        if unknown:
            raise DatasetError(f"{p}: classes not in allclasses_names: {unknown[:_SHOW]}")
    both = sorted(set(seen) & set(unseen))
    if both:
        raise DatasetError(f"{unseen_path}: classes also in {TRAINVAL_CLASSES}: {both[:_SHOW]}")
    listed = set(seen) | set(unseen)
    neither = [n for n in names if n not in listed]
    if neither:
        raise DatasetError(f"{folder}: classes in neither {TRAINVAL_CLASSES} nor {TEST_CLASSES}: "
                           f"{neither[:_SHOW]}")
    seen_set = set(seen)
    return [n for n in names if n in seen_set], [n for n in names if n not in seen_set]


def _read_splits(path: Path, need_original: bool, labels: np.ndarray | None,
                 n_images: int | None) -> Xlsa17Splits:
    """Shared reader of ``att_splits.mat`` and ``sent_splits.mat``."""
    path = Path(path)
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64).ravel()
        if n_images is not None and n_images != labels.size:
            raise DatasetError(f"{path}: {labels.size} image labels but n_images={n_images}")
        n_images = labels.size
    mat = loadmat(path)
    names = cellstr(require(mat, "allclasses_names", path), path, "allclasses_names")
    if not names or "" in names or len(set(names)) != len(names):
        raise DatasetError(f"{path}: allclasses_names must be non-empty, unique class names")
    att = _matrix(mat, "att", path, len(names))
    original = _matrix(mat, "original_att", path, len(names)) if need_original else None
    locs = {split: _locs(mat, key, path, n_images) for split, key in LOC_KEYS.items()}
    _check_partition(locs, path, n_images)
    # train_loc/val_loc are absent from some copies (CUB, APY): optional, never required.
    extra = {k: _locs(mat, f"{k}_loc", path, n_images) if f"{k}_loc" in mat else None
             for k in ("train", "val")}
    if labels is not None:
        seen, unseen = _classes_from_labels(names, locs, labels, path)
        listed = _classes_from_lists(names, path.parent)
        if listed is not None and listed != (seen, unseen):
            raise DatasetError(f"{path.parent}: {TEST_CLASSES} disagrees with the classes of the test_unseen "
                               f"images in {RES101}: files from different xlsa17 versions?")
    else:
        seen, unseen = _classes_from_lists(names, path.parent) or (None, None)
    return Xlsa17Splits(path=path, class_names=names, att=att, original_att=original,
                        trainval_loc=locs["trainval"], test_seen_loc=locs["test_seen"],
                        test_unseen_loc=locs["test_unseen"], train_loc=extra["train"], val_loc=extra["val"],
                        seen=seen, unseen=unseen, n_images=n_images)


def load_att_splits(path: Path, labels: np.ndarray | None = None,
                    n_images: int | None = None) -> Xlsa17Splits:
    """Read and validate an xlsa17 ``att_splits.mat``.

    Args:
        path: the file.
        labels: optional 0-based class index per image (``res101.mat`` labels minus 1); gives N
            and the seen/unseen classes. Without it, seen/unseen come from
            ``trainvalclasses.txt``/``testclasses.txt`` next to ``path`` when present.
        n_images: optional N, to check that the index sets cover 1..N.

    Raises:
        DatasetError: a missing key, overlapping index sets, a shape mismatch; it names the file.
    """
    return _read_splits(Path(path), need_original=True, labels=labels, n_images=n_images)


def load_sent_splits(path: Path, n_images: int | None = None) -> Xlsa17Splits:
    """Read CUB ``sent_splits.mat``: ``att`` holds (as (C, 1024)) class-level sentence embeddings."""
    return _read_splits(Path(path), need_original=False, labels=None, n_images=n_images)


# -------------------------------------------------------------------------------------- images


def load_res101_image_list(path: Path) -> tuple[list[str], np.ndarray]:
    """Image paths and 0-based labels of ``res101.mat``, without loading its 2048 x N features."""
    path = Path(path)
    mat = loadmat(path, variable_names=["image_files", "labels"])
    files = cellstr(require(mat, "image_files", path), path, "image_files")
    raw = np.asarray(require(mat, "labels", path))
    if raw.dtype.kind not in "iuf":
        raise DatasetError(f"{path}: 'labels' is not numeric ({raw.dtype})")
    labels = raw.ravel().astype(np.int64) - 1
    if labels.size != len(files):
        raise DatasetError(f"{path}: {len(files)} image_files but {labels.size} labels")
    if labels.size and labels.min() < 0:
        raise DatasetError(f"{path}: 'labels' must be 1-based (found {labels.min() + 1})")
    return files, labels


def image_key(path: str, marker: str) -> str:
    """The part of ``path`` after the last ``marker`` directory (``JPEGImages``, ``images``).

    This part (``<class>/<file>.jpg``) is what a local copy shares with the MPI paths in
    ``res101.mat``. Empty segments (``//``) are ignored.

    Raises:
        DatasetError: ``marker`` is not a directory of ``path``.
    """
    parts = [p for p in str(path).replace("\\", "/").split("/") if p not in ("", ".")]
    mark = [p for p in marker.replace("\\", "/").split("/") if p]
    hits = [i for i in range(len(parts) - len(mark)) if parts[i:i + len(mark)] == mark]
    if not mark or not hits:
        raise DatasetError(f"image path {path!r} has no {marker!r} directory to map it by")
    return "/".join(parts[hits[-1] + len(mark):])


def map_image_paths(image_files: list[str], dataset_root: Path, marker: str) -> list[Path]:
    """Map ``res101.mat`` MPI paths onto a local copy: ``dataset_root/<marker>/<part after marker>``.

    ``dataset_root`` is the directory that holds the marker directory (``Animals_with_Attributes2``
    for ``JPEGImages``; ``CUB_200_2011`` or the SUN root for ``images``).
    """
    base = Path(dataset_root).joinpath(*[p for p in marker.replace("\\", "/").split("/") if p])
    return [base / image_key(f, marker) for f in image_files]


def _check_exist(paths: list[str], what: str) -> None:
    """Every image must exist locally; list the first few missing so the user can see the pattern."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DatasetError(f"{what}: {len(missing)} of {len(paths)} images are missing locally, e.g. "
                           f"{missing[:_SHOW]}")


# ----------------------------------------------------------------------------------- apply


def _class_order(raw: RawDataset, names: list[str], path: Path) -> np.ndarray:
    """For each class of ``names``, its row in ``raw``; both must hold exactly the same classes."""
    have, want = set(raw.class_names), set(names)
    if have != want:
        raise DatasetError(f"{path}: the classes of {raw.name} and allclasses_names differ: only in "
                           f"{raw.name}: {sorted(have - want)[:_SHOW]}, only in allclasses_names: "
                           f"{sorted(want - have)[:_SHOW]}")
    index = {n: i for i, n in enumerate(raw.class_names)}
    return np.asarray([index[n] for n in names], dtype=np.int64)


def _compare_attributes(raw: RawDataset, order: np.ndarray, splits: Xlsa17Splits) -> None:
    """Cross-check the native attributes against ``original_att``.

    A different attribute count means a different attribute set and is an error; different
    values only warn (xlsa17 may round or use another release), but a large disagreement usually
    means misaligned classes, which is worth a loud message. -1 ("unknown", AWA2) counts as 0.
    """
    if splits.original_att is None:
        return
    mine = np.maximum(raw.attributes[order], 0)
    theirs = np.maximum(splits.original_att, 0)
    if mine.shape != theirs.shape:
        raise DatasetError(f"{splits.path}: original_att has {theirs.shape[1]} attributes, "
                           f"{raw.name} has {mine.shape[1]}: not the same attribute set")
    scale = max(float(np.abs(theirs).max()), 1e-12)
    diff = float(np.abs(mine - theirs).max())
    if diff > 1e-3 * scale:
        warnings.warn(f"{raw.name}: native class attributes differ from {splits.path} original_att by up "
                      f"to {diff:.4g} (scale {scale:.4g}); check the class alignment", stacklevel=3)


def _reorder(raw: RawDataset, order: np.ndarray, names: list[str]) -> RawDataset:
    """``raw`` with its classes (rows and image labels) in ``names`` order."""
    new_index = np.empty(order.size, dtype=np.int64)
    new_index[order] = np.arange(order.size)
    labels = np.asarray(raw.image_labels, dtype=np.int64)
    return replace(
        raw, class_names=list(names), attributes=raw.attributes[order],
        attributes_binary=None if raw.attributes_binary is None else raw.attributes_binary[order],
        descriptions=None if raw.descriptions is None else [raw.descriptions[i] for i in order],
        sentences=None if raw.sentences is None else raw.sentences[order],
        image_labels=new_index[labels] if labels.size else labels)


def _align_images(raw: RawDataset, files: list[str], labels: np.ndarray, splits: Xlsa17Splits,
                  marker: str, res_path: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """The local images in ``res101.mat`` order, their labels and protocol split names."""
    local = {image_key(p, marker): j for j, p in enumerate(raw.image_paths)}
    picked = [local.get(image_key(f, marker)) for f in files]
    missing = [f"{marker}/{image_key(f, marker)}" for f, j in zip(files, picked, strict=True) if j is None]
    if missing:
        raise DatasetError(f"{res_path}: {len(missing)} of {len(files)} images it lists are not in the "
                           f"local {raw.name} dataset, e.g. {missing[:_SHOW]}")
    index = np.asarray(picked, dtype=np.int64)
    wrong = np.flatnonzero(raw.image_labels[index] != labels)
    if wrong.size:
        i = int(wrong[0])
        raise DatasetError(f"{res_path}: {wrong.size} images have another class than locally, e.g. "
                           f"{files[i]!r}: {splits.class_names[labels[i]]!r} vs "
                           f"{raw.class_names[raw.image_labels[index[i]]]!r}")
    if len(raw.image_paths) > index.size:
        warnings.warn(f"{raw.name}: {len(raw.image_paths) - index.size} local images are not in {res_path} "
                      "and are left out", stacklevel=3)
    split_of = np.empty(index.size, dtype=object)
    for name, loc in splits.locs.items():
        split_of[loc] = name
    return [raw.image_paths[j] for j in index], labels.copy(), [str(s) for s in split_of]


def _validation_classes(splits: Xlsa17Splits, labels: np.ndarray) -> list[str] | None:
    """The seen classes of xlsa17's ``val_loc`` images (its class-disjoint train/val split of the
    seen classes), or None where the file has no ``val_loc`` or it names no seen class only."""
    if splits.val_loc is None or splits.unseen is None or not len(splits.val_loc):
        return None
    names = {splits.class_names[i] for i in np.unique(labels[splits.val_loc])}
    seen = [n for n in splits.class_names if n in names and n not in set(splits.unseen)]
    return seen if seen and len(seen) == len(names) else None


def _with_val_loc(splits: Xlsa17Splits, folder: Path, n_images: int) -> Xlsa17Splits:
    """``splits`` with the protocol's train/val split of the seen classes: its own ``val_loc``, else
    the one of ``sent_splits.mat`` beside it (CUB's ``att_splits.mat`` has none; its sentence file
    carries Xian et al.'s 100 + 50 split), else none."""
    sent = folder / SENT_SPLITS
    if splits.val_loc is not None or not sent.is_file():
        return splits
    other = load_sent_splits(sent)
    if other.val_loc is None:
        return splits
    if other.class_names != splits.class_names:
        raise DatasetError(f"{sent}: its allclasses_names differ from {splits.path}'s")
    if other.val_loc.size and other.val_loc.max() >= n_images:
        raise DatasetError(f"{sent}: 'val_loc' has index {other.val_loc.max() + 1} beyond the {n_images} images of "
                           f"{RES101}")
    return replace(splits, train_loc=other.train_loc, val_loc=other.val_loc)


def apply_xlsa17(raw: RawDataset, xlsa_dir: Path, marker: str | None = None) -> RawDataset:
    """Put ``raw`` on the xlsa17 protocol found in ``xlsa_dir`` (``xlsa17/data/<DATASET>``).

    Classes are reordered to ``allclasses_names`` (attributes, binary attributes, descriptions,
    sentences and image labels follow) and ``unseen`` is set from xlsa17, replacing whatever the
    native files said. When ``res101.mat`` is present the images become exactly its image list, in
    its order, each with its ``image_splits`` entry (``trainval``, ``test_seen``, ``test_unseen``);
    without it ``image_splits`` is None and ``prepare`` draws the image split itself.

    Args:
        raw: a dataset read from native files.
        xlsa_dir: the folder holding ``att_splits.mat`` (and optionally ``res101.mat`` and the class
            lists).
        marker: the directory after which local and ``res101.mat`` image paths agree; defaults by
            ``raw.name`` (``JPEGImages`` for awa2, ``images`` for cub and sun).

    Raises:
        DatasetError: missing or inconsistent files, a class mismatch, or images missing locally.
    """
    folder = Path(xlsa_dir)
    att_path, res_path = folder / ATT_SPLITS, folder / RES101
    if not att_path.is_file():
        raise DatasetError(f"{att_path}: file not found (xlsa17 split of {raw.name}; it comes in "
                           "http://datasets.d2.mpi-inf.mpg.de/xian/xlsa17.zip as xlsa17/data/<DATASET>/)")
    files, labels = load_res101_image_list(res_path) if res_path.is_file() else (None, None)
    splits = load_att_splits(att_path, labels=labels)
    if splits.unseen is None:
        raise DatasetError(f"{folder}: cannot tell seen from unseen classes: put {RES101} or "
                           f"{TRAINVAL_CLASSES} and {TEST_CLASSES} (all in xlsa17.zip) next to {ATT_SPLITS}")
    order = _class_order(raw, splits.class_names, att_path)
    _compare_attributes(raw, order, splits)
    out = replace(_reorder(raw, order, splits.class_names), unseen=list(splits.unseen), image_splits=None)
    if files is not None and labels is not None:
        marker = marker or IMAGE_MARKERS.get(raw.name)
        if marker is None:
            raise DatasetError(f"{raw.name}: no default image-path marker; pass marker= to apply_xlsa17")
        paths, image_labels, image_splits = _align_images(out, files, labels, splits, marker, res_path)
        out = replace(out, image_paths=paths, image_labels=image_labels, image_splits=image_splits,
                      validation=_validation_classes(_with_val_loc(splits, folder, labels.size), labels))
    _check_exist(out.image_paths, f"{raw.name}")
    return out


# ------------------------------------------------------------------------- features (data.name: xlsa17)
#
# Most generalized zero-shot work since 2017 reports on the ImageNet ResNet-101 features of this
# archive, not on images: ``data.name: xlsa17`` reads ``<data.root>/<DATASET>/res101.mat`` and
# ``att_splits.mat`` as a dataset, keeping the proposed split exactly (the ``allclasses_names`` order,
# the ``val_loc`` classes for the validation protocol); ``prepare`` writes the features as rows of
# ``features.npy`` (:mod:`niwt.data.features`).

# xlsa17's datasets (their folder names in the archive)
DATASETS = ("AWA2", "CUB", "SUN", "AWA1", "APY", "FLO")
ARCHIVE_URL = "http://datasets.d2.mpi-inf.mpg.de/xian/xlsa17.zip"


def features_dir(root: Path, dataset: str) -> Path:
    """Where ``<DATASET>/res101.mat`` lives: ``<data.root>/<DATASET>`` (``data.root`` is the archive's
    ``xlsa17/data``), else ``<data.root>/xlsa17/data/<DATASET>`` (where ``data.download`` unpacks it)."""
    direct = Path(root) / dataset
    nested = Path(root) / "xlsa17" / "data" / dataset
    # the folder that holds the features (on a case-insensitive disk data/raw/CUB is also the images' cub/)
    return nested if not (direct / RES101).is_file() and (nested / RES101).is_file() else direct


def check_dataset_name(dataset: str) -> None:
    """``data.dataset`` must be one of xlsa17's datasets (a name, never a path)."""
    if dataset not in DATASETS:
        raise DatasetError(f"data.dataset {dataset!r}: not an xlsa17 dataset; valid: {', '.join(DATASETS)}")


def _feature_matrix(raw: np.ndarray, path: Path, n_images: int) -> np.ndarray:
    """``features`` (D x N in the archive) as a finite (N, D) float32 array."""
    arr = np.asarray(raw)
    if arr.ndim != 2 or arr.dtype.kind not in "fiu" or 0 in arr.shape:
        raise DatasetError(f"{path}: 'features' has shape {arr.shape} ({arr.dtype}); expected a numeric "
                           f"(feature_dim, {n_images}) matrix, one column per image")
    if arr.shape[1] != n_images:
        if arr.shape[0] == n_images:  # some re-exports store it N x D
            arr = arr.T
        else:
            raise DatasetError(f"{path}: 'features' has shape {arr.shape} but there are {n_images} images "
                               "(labels, image_files); expected (feature_dim, N)")
    out = np.ascontiguousarray(arr.T, dtype=np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        rows = np.flatnonzero(bad.any(1))
        raise DatasetError(f"{path}: 'features' has NaN or infinite values in {rows.size} images (e.g. image "
                           f"{rows[0] + 1}, 1-based as in the file)")
    return out


def load_features(folder: Path, dataset: str) -> tuple[RawDataset, np.ndarray]:
    """Read one xlsa17 dataset's ``res101.mat`` and ``att_splits.mat`` (and CUB's ``sent_splits.mat``).

    Returns:
        the dataset (``image_paths`` are feature rows, ``row_path(j)`` for the j-th image of
        ``res101.mat``; ``image_splits`` the proposed split; ``attributes`` xlsa17's ``att`` (L2-normalised per class),
        ``sentences`` CUB's sentence embeddings), and the (N, D) float32 features.

    Raises:
        DatasetError: a missing file or key, a v7.3 (HDF5) file, labels out of range or not matching
            the split, NaN features, N of ``features`` not matching the image list; it names the file.
    """
    check_dataset_name(dataset)
    folder = Path(folder)
    res_path, att_path = folder / RES101, folder / ATT_SPLITS
    missing = [p for p in (res_path, att_path) if not p.is_file()]
    if missing:
        raise DatasetError(f"{missing[0]}: not found: xlsa17's {dataset} features and split; get {ARCHIVE_URL} "
                           f"(879 MB) and set data.root to its xlsa17/data folder (holding {dataset}/{RES101})")
    mat = loadmat(res_path, variable_names=["features", "labels", "image_files"])
    raw_labels = np.asarray(require(mat, "labels", res_path))
    if raw_labels.dtype.kind not in "iuf" or (raw_labels.size and not np.all(raw_labels == np.round(raw_labels))):
        raise DatasetError(f"{res_path}: 'labels' is not an integer vector ({raw_labels.dtype})")
    labels = raw_labels.ravel().astype(np.int64) - 1
    files = cellstr(require(mat, "image_files", res_path), res_path, "image_files") if "image_files" in mat else None
    if files is not None and len(files) != labels.size:
        raise DatasetError(f"{res_path}: {len(files)} image_files but {labels.size} labels")
    if labels.size == 0 or labels.min() < 0:
        raise DatasetError(f"{res_path}: 'labels' must be 1-based class indices (found "
                           f"{labels.min() + 1 if labels.size else 'none'})")
    features = _feature_matrix(require(mat, "features", res_path), res_path, labels.size)
    del mat
    names = cellstr(require(loadmat(att_path, ["allclasses_names"]), "allclasses_names", att_path), att_path,
                    "allclasses_names")
    if labels.max() >= len(names):
        raise DatasetError(f"{res_path}: 'labels' has class {labels.max() + 1}, outside 1..{len(names)} (the classes "
                           f"of {att_path.name}'s allclasses_names)")
    splits = load_att_splits(att_path, labels=labels)  # locs cover 1..N, seen/unseen
    sentences = None
    if (folder / SENT_SPLITS).is_file():
        sent = load_sent_splits(folder / SENT_SPLITS, n_images=labels.size)
        if sent.class_names != splits.class_names:
            raise DatasetError(f"{folder / SENT_SPLITS}: its allclasses_names differ from {att_path}'s")
        sentences = sent.att
    split_of = np.empty(labels.size, dtype=object)
    for name, loc in splits.locs.items():
        split_of[loc] = name
    # ``att`` (each class column L2-normalised), the class embedding every method of the published table used
    attributes = splits.att
    raw = RawDataset(
        name=f"xlsa17/{dataset}", class_names=list(splits.class_names), unseen=list(splits.unseen or []),
        attribute_names=[f"att_{i}" for i in range(attributes.shape[1])],
        attributes=attributes.astype(np.float32),
        image_paths=[row_path(j) for j in range(labels.size)], image_labels=labels,
        image_splits=[str(s) for s in split_of], sentences=sentences,
        validation=_validation_classes(_with_val_loc(splits, folder, labels.size), labels))
    return raw, features
