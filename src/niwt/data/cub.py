"""Loader of Caltech-UCSD Birds-200-2011 (CUB) in its native format, on the xlsa17 protocol.

CUB's own files carry no zero-shot split, and the NIWT reference configs (150 seen / 50 unseen)
follow Xian et al.'s proposed split, so this loader requires the xlsa17 CUB folder: without it
there is no comparable protocol and it refuses rather than invent one.

Layout of ``root`` (``CUB_200_2011.tgz`` unpacked; ``root`` may also be ``CUB_200_2011/`` itself)::

    attributes.txt                  <id> <attribute name>  (next to CUB_200_2011/ in the archive;
                                                            also looked for inside it)
    CUB_200_2011/images.txt         <image id> <class dir>/<file>.jpg
    CUB_200_2011/image_class_labels.txt   <image id> <1-based class id>
    CUB_200_2011/classes.txt        <1-based class id> <NNN.Name>
    CUB_200_2011/attributes/class_attribute_labels_continuous.txt   200 rows x 312, 0..100
    CUB_200_2011/images/<NNN.Name>/<file>.jpg

Class order of the result is xlsa17's ``allclasses_names`` (seen classes first, not 001..200).
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from niwt.data.raw import DatasetError, RawDataset
from niwt.data.xlsa17 import ATT_SPLITS, SENT_SPLITS, apply_xlsa17, load_sent_splits

CUB_DIR = "CUB_200_2011"
IMAGES_TXT = "images.txt"
LABELS_TXT = "image_class_labels.txt"
CLASSES_TXT = "classes.txt"
CONTINUOUS = "attributes/class_attribute_labels_continuous.txt"
XLSA17_URL = "http://datasets.d2.mpi-inf.mpg.de/xian/xlsa17.zip"


def _cub_dir(root: Path) -> Path:
    """``root`` itself when it holds ``images.txt``, else ``root/CUB_200_2011``."""
    return root if (root / IMAGES_TXT).is_file() else root / CUB_DIR


def _id_lines(path: Path) -> list[tuple[int, str]]:
    """``<integer id> <rest>`` lines; the rest may contain spaces (attribute names do not, but be lenient)."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (part of CUB_200_2011.tgz)")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        lineno = data[:err.start].count(b"\n") + 1
        byte = data[err.start:err.start + 1]
        raise DatasetError(f"{path}:{lineno}: not valid UTF-8 text ({err.reason}, byte {byte!r} at offset "
                           f"{err.start}); fix or re-extract the file") from None
    out = []
    first_line: dict[int, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        head, _, rest = line.strip().partition(" ")
        if not head.isdigit() or not rest.strip():
            raise DatasetError(f"{path}:{lineno}: expected '<id> <value>', got {line!r}")
        if int(head) in first_line:  # a dict would silently keep the later one
            raise DatasetError(f"{path}:{lineno}: id {int(head)} appears again (first on line "
                               f"{first_line[int(head)]}); every id must be listed once")
        first_line[int(head)] = lineno
        out.append((int(head), rest.strip()))
    if not out:
        raise DatasetError(f"{path}: file is empty")
    return out


def _ordered(lines: list[tuple[int, str]], path: Path) -> list[str]:
    """Values of ``<id> <value>`` lines whose ids must run 1..n in order (CUB's class and attribute
    ids index matrix rows and labels, so a gap would shift everything after it)."""
    ids = [i for i, _ in lines]
    if ids != list(range(1, len(ids) + 1)):
        bad = next(k for k, i in enumerate(ids, start=1) if i != k)
        raise DatasetError(f"{path}: ids must run 1..{len(ids)} in order; entry {bad} has id {ids[bad - 1]}")
    return [v for _, v in lines]


def _attribute_names(root: Path, cub: Path, n: int) -> list[str]:
    """Attribute names from ``attributes.txt`` (archive top level, or inside CUB_200_2011/).

    The names only label columns, so a missing file warns and falls back to ``attr_NNN``.
    """
    for path in (root / "attributes.txt", cub / "attributes.txt", cub / "attributes" / "attributes.txt",
                 cub.parent / "attributes.txt"):
        if path.is_file():
            names = _ordered(_id_lines(path), path)
            if len(names) != n:
                raise DatasetError(f"{path}: {len(names)} attribute names for {n} attribute columns")
            return names
    warnings.warn(f"CUB attributes.txt not found next to or inside {cub}; naming attributes attr_001..",
                  stacklevel=3)
    return [f"attr_{i:03d}" for i in range(1, n + 1)]


def _read_matrix(path: Path, n_rows: int) -> np.ndarray:
    """The class x attribute percentage matrix, checked for shape and finiteness."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (part of CUB_200_2011.tgz)")
    try:
        matrix = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise DatasetError(f"{path}: not a numeric matrix ({err})") from err
    if matrix.shape[0] != n_rows:
        raise DatasetError(f"{path}: {matrix.shape[0]} rows for {n_rows} classes in {CLASSES_TXT}")
    if not np.isfinite(matrix).all():
        raise DatasetError(f"{path}: NaN or infinite values")
    return matrix.astype(np.float32)


def _images(cub: Path, n_classes: int) -> tuple[list[str], np.ndarray]:
    """Image paths (under ``images/``) and 0-based labels, joined on the image id."""
    paths = dict(_id_lines(cub / IMAGES_TXT))
    labels_path = cub / LABELS_TXT
    labels: dict[int, int] = {}
    for image_id, value in _id_lines(labels_path):
        if not value.isdigit() or not 1 <= int(value) <= n_classes:
            raise DatasetError(f"{labels_path}: image {image_id} has class {value!r}, not in 1..{n_classes}")
        labels[image_id] = int(value) - 1
    if set(paths) != set(labels):
        only = sorted(set(paths) ^ set(labels))[:5]
        raise DatasetError(f"{cub}: {IMAGES_TXT} and {LABELS_TXT} list different image ids, e.g. {only}")
    ids = sorted(paths)
    return [str(cub / "images" / paths[i]) for i in ids], np.asarray([labels[i] for i in ids], dtype=np.int64)


def _missing_xlsa(xlsa_dir: Path | None) -> str:
    """Why the xlsa17 files are needed and where they go."""
    where = f"{xlsa_dir}/{ATT_SPLITS}" if xlsa_dir else f"<data.root>/xlsa17/data/CUB/{ATT_SPLITS}"
    return (f"CUB needs the xlsa17 CUB split files (att_splits.mat, and for the per-image split res101.mat) "
            f"for its seen/unseen protocol; get {XLSA17_URL} and put xlsa17/data/CUB/ so that {where} exists")


def load_cub(root: Path, xlsa_dir: Path | None = None) -> RawDataset:
    """Read CUB_200_2011 from ``root`` and put it on the xlsa17 protocol in ``xlsa_dir``.

    Attributes are ``class_attribute_labels_continuous.txt`` (0..100, no binary matrix); when
    ``sent_splits.mat`` sits in ``xlsa_dir`` its 1024-d class sentence embeddings become
    ``sentences``. See :func:`niwt.data.xlsa17.apply_xlsa17` for the class order, ``unseen`` and
    ``image_splits``.

    Raises:
        DatasetError: ``xlsa_dir`` missing, or a missing or malformed file (named in the message).
    """
    root = Path(root)
    if xlsa_dir is None or not (Path(xlsa_dir) / ATT_SPLITS).is_file():
        raise DatasetError(_missing_xlsa(xlsa_dir))
    xlsa_dir = Path(xlsa_dir)
    cub = _cub_dir(root)
    classes = _ordered(_id_lines(cub / CLASSES_TXT), cub / CLASSES_TXT)
    attributes = _read_matrix(cub / CONTINUOUS, len(classes))
    paths, labels = _images(cub, len(classes))
    raw = RawDataset(name="cub", class_names=classes, unseen=[],
                     attribute_names=_attribute_names(root, cub, attributes.shape[1]),
                     attributes=attributes, image_paths=paths, image_labels=labels)
    out = apply_xlsa17(raw, xlsa_dir)
    sent_path = xlsa_dir / SENT_SPLITS
    if sent_path.is_file():
        sent = load_sent_splits(sent_path)
        index = {n: i for i, n in enumerate(sent.class_names)}
        if set(index) != set(out.class_names):
            raise DatasetError(f"{sent_path}: allclasses_names differ from those of {xlsa_dir / ATT_SPLITS}")
        out = replace(out, sentences=sent.att[[index[n] for n in out.class_names]])
    return out
