"""Loader of the SUN Attribute dataset (Patterson & Hays) in its native format, on the xlsa17 protocol.

SUN's attributes are per image (3 AMT votes each), and the dataset has no zero-shot split, so the
xlsa17 SUN folder is required for the 645 seen / 72 unseen protocol.

Layout of ``root`` (``SUNAttributeDB.tar.gz`` and ``SUNAttributeDB_Images.tar.gz`` unpacked)::

    SUNAttributeDB/images.mat                      'images': cell of N paths, 'a/abbey/sun_x.jpg'
    SUNAttributeDB/attributes.mat                  'attributes': cell of 102 names
    SUNAttributeDB/attributeLabels_continuous.mat  'labels_cv': N x 102, 0..1
    images/<letter>/<class>[/<sub>]/<file>.jpg     (also accepted: SUNAttributeDB_Images/images/)

The class of an image is its path without the first-letter directory and the file name, with
``/`` joined by ``_`` (``a/apartment_building/outdoor/x.jpg`` -> ``apartment_building_outdoor``),
which is how xlsa17 names SUN classes.

Class attributes: the mean of the class's per-image ``labels_cv`` rows, computed here from the
native files (0..1). xlsa17's ``original_att`` is not used as the source; ``apply_xlsa17`` checks
it against this mean and warns if they disagree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from niwt.data.raw import DatasetError, RawDataset
from niwt.data.xlsa17 import ATT_SPLITS, apply_xlsa17, cellstr, loadmat, require

DB_DIR = "SUNAttributeDB"
IMAGES_MAT = "images.mat"
ATTRIBUTES_MAT = "attributes.mat"
LABELS_MAT = "attributeLabels_continuous.mat"
XLSA17_URL = "http://datasets.d2.mpi-inf.mpg.de/xian/xlsa17.zip"


def _db_dir(root: Path) -> Path:
    """``root/SUNAttributeDB``, or ``root`` itself when it holds ``images.mat``."""
    return root if (root / IMAGES_MAT).is_file() else root / DB_DIR


def _image_dir(root: Path) -> Path:
    """Where the images tarball was unpacked: ``root/images`` or ``root/SUNAttributeDB_Images/images``."""
    for candidate in (root / "images", root / "SUNAttributeDB_Images" / "images"):
        if candidate.is_dir():
            return candidate
    raise DatasetError(f"{root / 'images'}: SUN image directory not found "
                       f"(unpack SUNAttributeDB_Images.tar.gz into {root})")


def class_of(rel_path: str) -> str:
    """SUN class name of an image path relative to ``images/`` (see the module docstring)."""
    parts = [p for p in rel_path.replace("\\", "/").split("/") if p]
    if len(parts) < 3:
        raise DatasetError(f"SUN image path {rel_path!r} is not '<letter>/<class>/<file>'")
    return "_".join(parts[1:-1])


def _labels(path: Path, n_images: int, n_attributes: int) -> np.ndarray:
    """The N x A per-image attribute matrix (``labels_cv``), shape- and value-checked."""
    mat = loadmat(path)
    key = "labels_cv" if "labels_cv" in mat else next((k for k in mat if not k.startswith("__")), "labels_cv")
    labels = np.asarray(require(mat, key, path), dtype=np.float64)
    if labels.shape != (n_images, n_attributes):
        raise DatasetError(f"{path}: {key!r} has shape {labels.shape}, expected ({n_images}, {n_attributes}) "
                           f"(images in {IMAGES_MAT} x attributes in {ATTRIBUTES_MAT})")
    if not np.isfinite(labels).all():
        raise DatasetError(f"{path}: NaN or infinite values")
    return labels


def load_sun(root: Path, xlsa_dir: Path | None) -> RawDataset:
    """Read the SUN Attribute dataset from ``root`` and put it on the xlsa17 protocol in ``xlsa_dir``.

    Raises:
        DatasetError: ``xlsa_dir`` missing, or a missing or malformed file (named in the message).
    """
    root = Path(root)
    if xlsa_dir is None or not (Path(xlsa_dir) / ATT_SPLITS).is_file():
        where = f"{xlsa_dir}/{ATT_SPLITS}" if xlsa_dir else f"<data.root>/xlsa17/data/SUN/{ATT_SPLITS}"
        raise DatasetError(f"SUN needs the xlsa17 SUN split files (att_splits.mat, and for the per-image "
                           f"split res101.mat) for its 645/72 protocol; get {XLSA17_URL} and put "
                           f"xlsa17/data/SUN/ so that {where} exists")
    db = _db_dir(root)
    images_path = db / IMAGES_MAT
    rel = [p.lstrip("/") for p in cellstr(require(loadmat(images_path), "images", images_path), images_path,
                                          "images")]
    attr_path = db / ATTRIBUTES_MAT
    attribute_names = cellstr(require(loadmat(attr_path), "attributes", attr_path), attr_path, "attributes")
    per_image = _labels(db / LABELS_MAT, len(rel), len(attribute_names))
    image_classes = [class_of(p) for p in rel]
    class_names = sorted(set(image_classes))
    index = {n: i for i, n in enumerate(class_names)}
    labels = np.asarray([index[c] for c in image_classes], dtype=np.int64)
    sums = np.zeros((len(class_names), len(attribute_names)))
    np.add.at(sums, labels, per_image)
    attributes = (sums / np.bincount(labels, minlength=len(class_names))[:, None]).astype(np.float32)
    image_dir = _image_dir(root)
    raw = RawDataset(name="sun", class_names=class_names, unseen=[], attribute_names=attribute_names,
                     attributes=attributes, image_paths=[str(image_dir / p) for p in rel],
                     image_labels=labels)
    return apply_xlsa17(raw, Path(xlsa_dir))
