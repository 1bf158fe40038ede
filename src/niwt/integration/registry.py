"""The injected model in the MLflow model registry, as a ``pyfunc`` model.

``register_model(checkpoint, name, tracking_uri)`` logs :class:`NiwtPyfunc` with the checkpoint
and the class list (``classes.json``) as artifacts and a signature, and registers it under
``name`` (``niwt register``, default ``niwt-injected``; the Prefect pipeline runs it after
``explain``). Loading needs only MLflow
and the model's pip requirements::

    model = mlflow.pyfunc.load_model("models:/niwt-injected@champion")
    model.predict(pd.DataFrame({"image": [base64.b64encode(open("cat.jpg", "rb").read()).decode()]}))

Input: a DataFrame with an ``image`` column of base64-encoded image bytes (the signature;
schema-checked by ``mlflow``; never a file path: a served model must not read the server's files),
or a float array/tensor (B, 3, H, W) of images normalised as the ``evaluate`` transform does,
through ``model.unwrap_python_model().predict(array)`` (an MLflow signature is either column- or
tensor-based, not both); a network over precomputed features (``mlp``) takes a (B, D) float array of
feature rows instead. The model carries the niwt package (``code_paths``) and names only
packages from a package index as requirements, so it loads without this project installed.
Output: one row per image, ``class`` (predicted class name),
``score`` (its softmax probability over all seen + unseen classes), ``class_id``, ``logit`` and
``unseen``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency; keep the module importable anyway
    PythonModel = object  # type: ignore[assignment,misc]


# What MLflow says about choices niwt made, not its user's to act on: ``predict`` without type hints (the
# signature is given, :func:`signature`) and no input example (the signature names the columns).
MLFLOW_NOISE = (r".*Add type hints to the `predict` method", r".*An input example was not provided")


@contextlib.contextmanager
def _unshown() -> Iterator[None]:
    """Drop :data:`MLFLOW_NOISE` where warnings are shown. Filters cannot: MLflow wraps these checks in
    ``simplefilter("once")`` for user warnings, ahead of every filter (class creation and ``log_model``)."""
    import re

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 (warnings' API)
        if not any(re.match(p, str(message)) for p in MLFLOW_NOISE):
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


with _unshown():  # MLflow checks ``predict`` when the class is created
    class NiwtPyfunc(PythonModel):
        """MLflow ``python_model`` around a niwt checkpoint (artifact ``checkpoint``).

        It never reads a file named in a request: images arrive as their bytes (base64 in an ``image``
        column) or as a float array, so a served model cannot be made to read the server's files.
        """

        def load_context(self, context: Any) -> None:
            from niwt.models.checkpoint import load_checkpoint

            self.model, self.meta = load_checkpoint(context.artifacts["checkpoint"], "cpu")
            self.class_names = list(self.meta.class_names)
            self.n_seen = int(self.meta.n_seen)

        def _images(self, model_input: Any):
            import pandas as pd
            import torch

            width = getattr(self.model, "in_features", None)
            if width:  # a network over precomputed features (data.name: xlsa17): (B, D) feature rows, no images
                x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
                if x.ndim != 2 or x.shape[1] != width:
                    raise ValueError(f"this model reads {width}-d feature vectors (ResNet-101 features, data.name: "
                                     f"xlsa17): expected a (B, {width}) float array, got shape {tuple(x.shape)}")
                return x
            if isinstance(model_input, pd.DataFrame):
                if "image" not in model_input.columns:
                    raise ValueError(f"expected a DataFrame with an 'image' column of base64-encoded image bytes, got "
                                     f"columns {list(model_input.columns)} (file paths are never read)")
                return torch.stack([decode_image(v, self.meta.image_size, row)
                                    for row, v in enumerate(model_input["image"].tolist())])
            images = torch.as_tensor(np.asarray(model_input), dtype=torch.float32)
            if images.ndim == 3:
                images = images[None]
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError("expected base64 images or a (B, 3, H, W) float array, got shape "
                                 f"{tuple(images.shape)}")
            return images

        def predict(self, context, model_input, params=None):  # no type hints: MLflow would read them as a schema
            import pandas as pd
            import torch
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import BAD_REQUEST

            class BadPayload(MlflowException, ValueError):
                """niwt's one line as the response's message (HTTP 400, no stack trace); still a ValueError."""

            try:
                images = self._images(model_input)
            except ValueError as err:
                raise BadPayload(str(err), error_code=BAD_REQUEST) from None
            with torch.inference_mode():
                logits = self.model(images).float()
            probs = torch.softmax(logits, 1)
            top = probs.argmax(1)
            return pd.DataFrame({
                "class": [self.class_names[int(c)] for c in top],
                "score": probs.gather(1, top[:, None])[:, 0].double().numpy(),
                "class_id": top.numpy().astype(np.int64),
                "logit": logits.gather(1, top[:, None])[:, 0].double().numpy(),
                "unseen": (top >= self.n_seen).numpy(),
            })


MAX_IMAGE_BYTES = 32 * 2**20


def decode_image(value: Any, image_size: int, row: int = 0):
    """One base64-encoded image (JPEG, PNG, WebP, ...) -> the (3, S, S) tensor of the evaluation transform.

    Only bytes are decoded: a string that is not base64 image data (a file path, say) is an error,
    never a file name to open.
    """
    import base64
    import binascii
    import io

    from PIL import Image, UnidentifiedImageError

    from niwt.data.images import make_transform

    if isinstance(value, str):
        if len(value) > MAX_IMAGE_BYTES * 4 // 3 + 4:
            raise ValueError(f"row {row}: image larger than {MAX_IMAGE_BYTES // 2**20} MiB")
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as err:
            raise ValueError(f"row {row}: 'image' must be base64-encoded image bytes ({err}); file paths are "
                             "never read") from None
    if not isinstance(value, (bytes, bytearray)):
        raise ValueError(f"row {row}: 'image' must be base64-encoded image bytes, got {type(value).__name__}")
    try:
        with Image.open(io.BytesIO(value)) as img:
            image = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"row {row}: not a readable image ({type(err).__name__}: {err})") from None
    return make_transform(image_size, train=False)(image)


def signature(in_features: int | None = None):
    """Column-based signature: ``image`` (base64 string) in; class, score, class_id, logit, unseen out.
    A network over features (``in_features``) takes a (B, in_features) float32 tensor instead."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    inputs = (Schema([TensorSpec(np.dtype(np.float32), (-1, in_features))]) if in_features
              else Schema([ColSpec("string", "image")]))
    return ModelSignature(
        inputs=inputs,
        outputs=Schema([ColSpec("string", "class"), ColSpec("double", "score"), ColSpec("long", "class_id"),
                        ColSpec("double", "logit"), ColSpec("boolean", "unseen")]),
    )


# What the pyfunc imports, all from a package index; the niwt code travels with the model (code_paths).
REQUIREMENTS = ("torchvision", "pillow", "numpy", "pandas", "pyyaml", "tqdm")


WEIGHTS_TAG = "niwt.weights_sha256"  # model-version tag: the digest of what the model predicts with


def weights_digest(model: Any, class_names: tuple[str, ...] | list[str], n_seen: int) -> str:
    """sha256 of what the model predicts with: every tensor of its state_dict (name, dtype, shape,
    bytes, in state_dict order), its class names and how many are seen. Not the file's bytes: those
    also change with the metadata record (training metrics, timings) when the weights do not."""
    import hashlib

    import torch

    digest = hashlib.sha256(json.dumps({"classes": list(class_names), "n_seen": int(n_seen)}).encode())
    for key, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype, bf16 included
    return digest.hexdigest()


def version_holding(client: Any, name: str, digest: str) -> Any | None:
    """The newest version of registered model ``name`` tagged with ``digest`` (None: none is)."""
    escaped = name.replace("\\", "\\\\").replace("'", "\\'")
    found = [mv for mv in client.search_model_versions(f"name = '{escaped}'") if mv.tags.get(WEIGHTS_TAG) == digest]
    return max(found, key=lambda mv: int(mv.version)) if found else None


@contextlib.contextmanager
def _quiet_log_model() -> Iterator[None]:
    """:func:`_unshown` while ``log_model`` runs, and neither MLflow's note on a pickled ``python_model`` (the
    pyfunc is niwt's design) nor its artifact download bars."""
    import logging

    logger = logging.getLogger("mlflow.pyfunc")
    level = logger.level
    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    logger.setLevel(logging.ERROR)
    try:
        with _unshown():
            yield
    finally:
        logger.setLevel(level)
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous


def register_model(checkpoint: str | Path, name: str, tracking_uri: str | None = None, experiment: str = "niwt",
                   alias: str = ""):
    """Log ``checkpoint`` as a pyfunc model and register it as a new version of ``name`` when its
    weights are new: a version already tagged with the same :func:`weights_digest` is returned as
    it is (its alias moved to it), so a rerun that changed no weight registers nothing.

    Logs into the active MLflow run when there is one, else in a run of its own named
    ``register`` in ``experiment`` (created when missing).

    Args:
        checkpoint: an injected checkpoint (``models/injected/niwt.pt``).
        name: registered model name.
        tracking_uri: where to log and register (default: MLflow's current URI).
        alias: set on the new version (``champion``: ``models:/<name>@champion`` then loads it).

    Returns:
        (the :class:`mlflow.entities.model_registry.ModelVersion` holding these weights, whether it
        was created now).
    """
    import mlflow
    import torch

    from niwt.models.checkpoint import load_checkpoint

    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
    model, meta = load_checkpoint(checkpoint)  # fail here, not at serving time, on a bad checkpoint
    if meta.method is None or meta.layer is None or len(meta.class_names) == meta.n_seen:
        from niwt.models.networks import ModelError

        raise ModelError(f"{checkpoint}: not an injected checkpoint (it predicts only its {meta.n_seen} seen "
                         "classes); register one of models/injected/<method>.pt")
    n_seen = int(meta.n_seen)
    client = mlflow.MlflowClient()
    digest = weights_digest(model, meta.class_names, n_seen)
    existing = version_holding(client, name, digest)
    if existing is not None:
        if alias:
            client.set_registered_model_alias(name, alias, existing.version)
        return existing, False
    classes = [{"class_id": i, "name": n, "unseen": i >= n_seen} for i, n in enumerate(meta.class_names)]
    with tempfile.TemporaryDirectory() as tmp:
        classes_json = Path(tmp) / "classes.json"
        classes_json.write_text(json.dumps({"n_seen": n_seen, "layer": meta.layer, "image_size": meta.image_size,
                                            "method": (meta.method or ""), "classes": classes}, indent=2))
        own_run = mlflow.active_run() is None
        if own_run:
            from niwt.integration.tracking import ensure_experiment

            run = mlflow.start_run(run_name="register", experiment_id=ensure_experiment(mlflow, experiment))
        else:
            run = mlflow.active_run()
        try:
            with _quiet_log_model():  # MLflow's notes about a design niwt chose, not the user's to act on
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=NiwtPyfunc(),
                    artifacts={"checkpoint": str(checkpoint), "classes": str(classes_json)},
                    signature=signature(meta.in_features),
                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", *REQUIREMENTS],
                    code_paths=[str(Path(__file__).resolve().parents[1])],  # the niwt package itself
                    registered_model_name=name,
                    metadata={"niwt.method": (meta.method or ""), "niwt.n_seen": n_seen,
                              "niwt.n_classes": len(classes), "niwt.layer": meta.layer},
                )
        finally:
            if own_run:
                mlflow.end_run()
    version = info.registered_model_version
    mv = client.get_model_version(name, str(version))
    client.set_model_version_tag(name, mv.version, "niwt.source_run", run.info.run_id)
    client.set_model_version_tag(name, mv.version, WEIGHTS_TAG, digest)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return client.get_model_version(name, mv.version), True
