"""The in-memory form every dataset loader returns, before splits are written.

A loader reads a benchmark's native files and returns a :class:`RawDataset`; ``prepare`` turns it
into the two Parquet tables the rest of the pipeline reads. Keeping this contract small lets the
synthetic default, AWA2, CUB and SUN share one code path from ``prepare`` on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from niwt.errors import InputError


class DatasetError(InputError):
    """A dataset on disk that cannot be read: the message names the file and the problem."""


SPLITS = ("train", "val", "test_seen", "test_unseen")


@dataclass(frozen=True)
class RawDataset:
    """A zero-shot benchmark as read from disk.

    Attributes:
        name: dataset name (``synthetic``, ``awa2``, ``cub``, ``sun``).
        class_names: every class, in the benchmark's canonical order (for xlsa17 data:
            ``allclasses_names``).
        unseen: names of the unseen (test) classes; all others are seen.
        attribute_names: one name per attribute column.
        attributes: (n_classes, n_attributes) float32 continuous class attributes, rows in
            ``class_names`` order, raw scale (AWA2: 0..100; -1 marks "unknown" and is mapped to 0).
        attributes_binary: same shape, 0/1, or None when the benchmark has none.
        image_paths: every image file (absolute or relative to the working directory).
        image_labels: index into ``class_names`` for each image.
        image_splits: optional fixed split per image (``trainval``, ``test_seen``, ``test_unseen``)
            from the benchmark's protocol (xlsa17); None means ``prepare`` draws the split itself.
        descriptions: optional one-line text per class, for the ``text`` domain.
        sentences: optional (n_classes, d) class-level sentence embeddings (CUB ``sent_splits.mat``).
        validation: optional seen classes the benchmark sets aside for validation (the classes of
            xlsa17's ``val_loc`` images), which ``validate`` uses with ``validate.classes: auto``.
        notes: lines for the user about what was read (files skipped for their suffix).
    """

    name: str
    class_names: list[str]
    unseen: list[str]
    attribute_names: list[str]
    attributes: np.ndarray
    image_paths: list[str]
    image_labels: np.ndarray
    attributes_binary: np.ndarray | None = None
    image_splits: list[str] | None = None
    descriptions: list[str] | None = None
    sentences: np.ndarray | None = field(default=None)
    validation: list[str] | None = None
    notes: tuple[str, ...] = ()  # what reading it skipped or changed, for ``prepare`` to say

    def __post_init__(self) -> None:
        n_classes = len(self.class_names)
        if self.attributes.shape[0] != n_classes:
            raise DatasetError(
                f"{self.name}: {self.attributes.shape[0]} attribute rows for {n_classes} classes")
        if len(self.image_paths) != len(self.image_labels):
            raise DatasetError(f"{self.name}: {len(self.image_paths)} images but "
                               f"{len(self.image_labels)} labels")
        missing = sorted(set(self.unseen) - set(self.class_names))
        if missing:
            raise DatasetError(f"{self.name}: unseen classes not in the class list: {missing}")

