"""The importances of a list of images, as ``extract`` computes them (one shard) and ``validate`` replays them.

One function for both, so the validation chain can never drift from the pipeline's: what an
importance is (:class:`ExtractSpec`: layer, pooling, target class), how images are batched and
fed, and the capture itself (:func:`niwt.importance.capture.loader_importances`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from niwt.data.images import ImageSource, make_loader
from niwt.importance.capture import loader_importances
from niwt.params import ExtractParams, Runtime


@dataclass(frozen=True)
class ExtractSpec:
    """Everything that shapes one image's importance (picklable, for Dask shards)."""

    layer: str
    pooling: str
    target: str  # ground_truth | predicted
    batch_size: int
    channels_last: bool

    @classmethod
    def from_params(cls, e: ExtractParams, rt: Runtime, layer: str | None = None) -> ExtractSpec:
        """The spec of the ``extract`` params section, batched and laid out as the execution
        settings say (they change no number beyond the last float bits); ``layer``: the resolved
        ``extract.layer`` (:func:`niwt.models.networks.importance_layer`) when it is ``auto``."""
        return cls(layer or e.layer, e.pooling, e.target, rt.inference_batch("importances"), rt.channels_last)


def importances_for(model: nn.Module, paths: Sequence[str], class_ids: np.ndarray, image_size: int,
                    spec: ExtractSpec, cache: ImageSource | None = None,
                    progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Importances of the images ``paths`` (labels ``class_ids``), in order.

    Args:
        model: prepared by :func:`niwt.importance.capture.prepare_for_extraction` (once per model,
            not per call).
        cache: the decoded-image cache (None: decode the image files).
        progress: called with the number of images of each finished batch.

    Returns:
        ((N, C) float32 importances, (N,) the class whose logit each one is of).
    """
    loader = make_loader(paths, np.asarray(class_ids), image_size, train=False, batch_size=spec.batch_size,
                         cache=cache)
    return loader_importances(model, loader, spec.layer, spec.pooling, spec.target, spec.channels_last, progress)
