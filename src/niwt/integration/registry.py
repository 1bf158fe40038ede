"""The injected model in the MLflow model registry, as a ``pyfunc`` model.

``register_model(checkpoint, name, tracking_uri)`` logs :class:`NiwtPyfunc` with the checkpoint
and the class list (``classes.json``) as artifacts and a signature, and registers it under
``name`` (``niwt register``, default ``niwt-injected``; the Prefect pipeline runs it after
``explain``). Loading needs only MLflow
and this package::

    model = mlflow.pyfunc.load_model("models:/niwt-injected/1")
    model.predict(pd.DataFrame({"path": ["cat.jpg", "dog.jpg"]}))

Input: a DataFrame with a ``path`` column of image paths (the signature; schema-checked by
``mlflow``), or a float array/tensor (B, 3, H, W) of images normalised as the ``evaluate`` transform
does, through ``model.unwrap_python_model().predict(array)`` (an MLflow signature is either
column- or tensor-based, not both). Output: one row per image, ``class`` (predicted class name),
``score`` (its softmax probability over all seen + unseen classes), ``class_id``, ``logit`` and
``unseen``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency; keep the module importable anyway
    PythonModel = object  # type: ignore[assignment,misc]



class NiwtPyfunc(PythonModel):
    """MLflow ``python_model`` around a niwt checkpoint (artifact ``checkpoint``)."""

    def load_context(self, context: Any) -> None:
        from niwt.models.checkpoint import load_checkpoint

        self.model, self.meta = load_checkpoint(context.artifacts["checkpoint"], "cpu")
        self.class_names = list(self.meta["class_names"])
        self.n_seen = int(self.meta["n_seen"])

    def _images(self, model_input: Any):
        import pandas as pd
        import torch

        from niwt.explain.predict import load_images

        if isinstance(model_input, pd.DataFrame):
            if "path" not in model_input.columns:
                raise ValueError(f"expected a DataFrame with a 'path' column, got columns {list(model_input.columns)}")
            return load_images(model_input["path"].astype(str).tolist(), self.meta["image_size"])
        images = torch.as_tensor(np.asarray(model_input), dtype=torch.float32)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected image paths or a (B, 3, H, W) float array, got shape {tuple(images.shape)}")
        return images

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would read them as a schema
        import pandas as pd
        import torch

        with torch.inference_mode():
            logits = self.model(self._images(model_input)).float()
        probs = torch.softmax(logits, 1)
        top = probs.argmax(1)
        return pd.DataFrame({
            "class": [self.class_names[int(c)] for c in top],
            "score": probs.gather(1, top[:, None])[:, 0].double().numpy(),
            "class_id": top.numpy().astype(np.int64),
            "logit": logits.gather(1, top[:, None])[:, 0].double().numpy(),
            "unseen": (top >= self.n_seen).numpy(),
        })


def signature():
    """Column-based signature: ``path`` (string) in; class, score, class_id, logit, unseen out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "path")]),
        outputs=Schema([ColSpec("string", "class"), ColSpec("double", "score"), ColSpec("long", "class_id"),
                        ColSpec("double", "logit"), ColSpec("boolean", "unseen")]),
    )


def register_model(checkpoint: str | Path, name: str, tracking_uri: str | None = None, experiment: str = "niwt"):
    """Log ``checkpoint`` as a pyfunc model and register it as a new version of ``name``.

    Logs into the active MLflow run when there is one, else in a run of its own named
    ``register`` in ``experiment`` (created when missing).

    Args:
        checkpoint: an injected checkpoint (``models/injected/niwt.pt``).
        name: registered model name.
        tracking_uri: where to log and register (default: MLflow's current URI).

    Returns:
        The :class:`mlflow.entities.model_registry.ModelVersion` created.
    """
    import mlflow
    import torch

    from niwt.models.checkpoint import load_checkpoint

    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
    _, meta = load_checkpoint(checkpoint)  # fail here, not at serving time, on a bad checkpoint
    n_seen = int(meta["n_seen"])
    classes = [{"class_id": i, "name": n, "unseen": i >= n_seen} for i, n in enumerate(meta["class_names"])]
    with tempfile.TemporaryDirectory() as tmp:
        classes_json = Path(tmp) / "classes.json"
        classes_json.write_text(json.dumps({"n_seen": n_seen, "layer": meta["layer"], "image_size": meta["image_size"],
                                            "method": meta.get("method", ""), "classes": classes}, indent=2))
        own_run = mlflow.active_run() is None
        if own_run:
            from niwt.integration.tracking import ensure_experiment

            run = mlflow.start_run(run_name="register", experiment_id=ensure_experiment(mlflow, experiment))
        else:
            run = mlflow.active_run()
        try:
            info = mlflow.pyfunc.log_model(
                name="model", python_model=NiwtPyfunc(),
                artifacts={"checkpoint": str(checkpoint), "classes": str(classes_json)},
                signature=signature(), pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                                         "torchvision", "pillow", "pandas", "niwt"],
                registered_model_name=name,
                metadata={"niwt.method": meta.get("method", ""), "niwt.n_seen": n_seen,
                          "niwt.n_classes": len(classes), "niwt.layer": meta["layer"]},
            )
        finally:
            if own_run:
                mlflow.end_run()
    client = mlflow.MlflowClient()
    version = info.registered_model_version
    mv = client.get_model_version(name, str(version))
    client.set_model_version_tag(name, mv.version, "niwt.source_run", run.info.run_id)
    return mv
