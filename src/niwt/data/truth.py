"""Per-image ground truth of the generated benchmark: what each image really shows.

``prepare`` writes ``image_attributes.parquet`` next to the split table for the synthetic default
(real benchmarks have no such file; ``explain`` then reports no ground-truth metrics). One row per
image of the split table, keyed by ``image_id``:

* ``attributes``: the image's true attribute names, one ``<group>_<value>`` per attribute group
  (the sampled value, which differs from the class's dominant one with probability
  ``1 - dominant_prob``);
* the object's :class:`~niwt.data.synthetic.Geometry` (``shape``, ``centre_x``, ``centre_y``,
  ``radius``, ``angle``), from which :func:`object_masks` re-renders its mask exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from niwt.data.raw import DatasetError
from niwt.data.synthetic import Geometry, geometry_of, object_mask

IMAGE_TRUTH = "image_attributes.parquet"


@dataclass(frozen=True)
class ImageTruth:
    """Ground truth of a set of images (rows in ``image_id`` order of the file).

    Attributes:
        image_id: (N,) int64, the split table's ids.
        attributes: per image, its true attribute names (one per group).
        geometry: per image, the object's geometry.
        image_size: the generated images' side in pixels.
    """

    image_id: np.ndarray
    attributes: list[list[str]]
    geometry: list[Geometry]
    image_size: int

    def rows(self, image_id: np.ndarray) -> np.ndarray:
        """Positions of ``image_id`` in this table; DatasetError naming the first missing id."""
        order = {int(i): k for k, i in enumerate(self.image_id)}
        missing = [int(i) for i in image_id if int(i) not in order]
        if missing:
            raise DatasetError(f"{IMAGE_TRUTH}: no ground truth for image_id {missing[0]} "
                               f"({len(missing)} missing); rerun prepare")
        return np.array([order[int(i)] for i in image_id], dtype=np.int64)


def write_image_truth(path: Path, image_id: np.ndarray, rel_paths: list[str], records: Path) -> None:
    """Join the generator's records (keyed by relative path) to the split table's ``image_id``.

    Args:
        image_id, rel_paths: the split table's ids and image paths relative to the dataset root.
        records: the generator's ``image_attributes.parquet`` (keyed by ``path``).
    """
    table = pq.read_table(records)
    position = {p: i for i, p in enumerate(table["path"].to_pylist())}
    missing = [p for p in rel_paths if p not in position]
    if missing:
        raise DatasetError(f"{records}: no record for {missing[0]} ({len(missing)} images); regenerate the data")
    rows = table.take(pa.array([position[p] for p in rel_paths], pa.int64()))
    rows = rows.add_column(0, "image_id", pa.array(np.asarray(image_id, dtype=np.int64), pa.int64()))
    pq.write_table(rows.replace_schema_metadata(table.schema.metadata), path)


def read_image_truth(path: Path) -> ImageTruth | None:
    """The ground truth next to a split table, or None when the dataset has none (real data)."""
    path = Path(path)
    if not path.is_file():
        return None
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    rows = table.drop_columns(["path", "class"]).to_pylist()
    return ImageTruth(table["image_id"].to_numpy().astype(np.int64), [r["attributes"] for r in rows],
                      [geometry_of(r) for r in rows], int(meta[b"image_size"]))


def object_masks(truth: ImageTruth, rows: np.ndarray, size: int | None = None) -> np.ndarray:
    """(len(rows), S, S) boolean object masks (coverage >= 0.5), resized to ``size`` if given.

    A different ``size`` resamples the coverage bilinearly before the threshold, the way the
    evaluation transform moves the pixels: a plain resize below 128 px, and at 128 px and above a
    resize of the shorter side to ``size * 256 / 224`` followed by a centre crop of ``size``.
    """
    import torch
    from torch.nn import functional as F

    cover = np.stack([object_mask(truth.geometry[int(r)], truth.image_size) for r in rows]) if len(rows) else \
        np.zeros((0, truth.image_size, truth.image_size))
    if size is not None and size != truth.image_size and len(rows):
        side = size if size < 128 else int(size * 256 / 224)
        cover = F.interpolate(torch.tensor(cover)[:, None], size=(side, side), mode="bilinear",
                              align_corners=False)[:, 0].numpy()
        start = int(round((side - size) / 2.0))  # torchvision CenterCrop's offset
        cover = cover[:, start:start + size, start:start + size]
    return cover >= 0.5


def attribute_hits(truth: ImageTruth, rows: np.ndarray, attribute_names: list[str]) -> np.ndarray:
    """(len(rows), a) boolean: which of ``attribute_names`` each image truly shows."""
    index = {n: j for j, n in enumerate(attribute_names)}
    out = np.zeros((len(rows), len(attribute_names)), dtype=bool)
    for k, r in enumerate(rows):
        for name in truth.attributes[int(r)]:
            if name in index:
                out[k, index[name]] = True
    return out
