"""Self-describing checkpoints, loaded with ``weights_only=True``.

A checkpoint is a plain dict (nanoGPT/torchvision habit): the state dict plus everything needed
to rebuild the network and read its outputs (arch, class names, image size). Injected checkpoints
also carry the importance layer and pooling their rows were built for (``layer``, ``pooling``).
Only tensors and primitive containers go in, so loading never unpickles code.
"""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from niwt.io.atomic import atomic_path
from niwt.models.networks import ModelError, NiwtNet, build_model, plain_state_dict

REQUIRED = ("arch", "num_classes", "class_names", "n_seen", "image_size", "state_dict")
# Bump when the record below changes shape; a checkpoint of another version is refused with the
# stage to rerun, instead of being half-read.
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about itself, typed and versioned (``schema_version``).

    Every checkpoint: the network to rebuild (``arch``, ``width``, ``hidden``, ``image_size``, and for a
    network over features ``in_features``) and its
    classifier's classes (``class_names``, the first ``n_seen`` of them seen). A validation backbone
    adds the classes it never saw; an injected checkpoint adds its method, the importance layer and
    pooling its rows were built for, and the rows of its held-out calibration problem; and where
    ``validate`` chose the method's calibrated reading under another setting than its rows (NIWT),
    that reading's whole classifier and its held-out calibration problem's rows (``calibrated_rows``:
    ``weight``, ``bias``, ``setting``, ``calibration_weight``, ``calibration_bias``), which
    ``evaluate`` scores calibrated. The network's own classifier is always the method as shipped.
    """

    arch: str
    class_names: tuple[str, ...]
    n_seen: int
    image_size: int
    width: int = 32
    hidden: int = 256
    metrics: dict[str, float] = field(default_factory=dict)
    validation_classes: tuple[str, ...] | None = None  # validation backbone
    validation_source: str | None = None
    class_disjoint: bool | None = None
    method: str | None = None  # injected
    layer: str | None = None
    pooling: str | None = None
    calibration: dict[str, torch.Tensor] | None = None
    calibrated_rows: dict[str, Any] | None = None  # injected: the calibrated reading's own rows, when separate
    in_features: int | None = None  # mlp: the feature width it reads (None: an image network)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Plain containers only (``torch.load(weights_only=True)`` reads them back)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["class_names"] = list(self.class_names)
        if self.validation_classes is not None:
            out["validation_classes"] = list(self.validation_classes)
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], path: str | Path) -> CheckpointMeta:
        """The record of a loaded checkpoint; another version, or a missing or unknown key, is one
        ModelError naming the file."""
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ModelError(f"{path}: checkpoint metadata of version {version!r}, this niwt reads version "
                             f"{SCHEMA_VERSION}; rerun the stage that wrote it (finetune, finetune_validation, inject)")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names - {"state_dict", "num_classes"})
        if unknown:
            raise ModelError(f"{path}: unknown checkpoint metadata {unknown}; rerun the stage that wrote it")
        values = {k: v for k, v in raw.items() if k in names}
        values["class_names"] = tuple(values.get("class_names", ()))
        if values.get("validation_classes") is not None:
            values["validation_classes"] = tuple(values["validation_classes"])
        return cls(**values)

    def replace(self, **changes: Any) -> CheckpointMeta:
        return dataclasses.replace(self, **changes)


def save_checkpoint(path: str | Path, model: NiwtNet, meta: CheckpointMeta) -> None:
    """Atomically save ``model`` with its metadata record."""
    if len(meta.class_names) != model.classifier.out_features:
        raise ValueError(f"{len(meta.class_names)} class names for {model.classifier.out_features} outputs")
    ckpt = meta.to_dict()
    ckpt["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt["num_classes"] = model.classifier.out_features
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def safe_load(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)``; any failure is a ModelError naming the file.

    A file holding pickled Python objects (not tensors and plain containers) is refused without
    running any of it; torch's own message would suggest ``weights_only=False``, which we never do.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0] if lines else "")
        raise ModelError(f"{path}: not a readable {what}: it holds pickled Python objects, which are never "
                         f"loaded (weights_only=True): {detail} Only use files written by niwt.") from err
    except Exception as err:
        first = (str(err).splitlines() or [""])[0]
        raise ModelError(f"{path}: not a readable {what} ({type(err).__name__}: {first}); truncated, or not "
                         "written by torch.save?") from err


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[NiwtNet, CheckpointMeta]:
    """Rebuild the network from a checkpoint written by :func:`save_checkpoint`.

    Returns:
        (model in eval mode on ``device``, its metadata record).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    ckpt = safe_load(path, "checkpoint")
    missing = [k for k in REQUIRED if k not in ckpt] if isinstance(ckpt, dict) else list(REQUIRED)
    if missing:
        raise ModelError(f"{path}: not a niwt checkpoint (missing {missing})")
    model = build_model(ckpt["arch"], ckpt["num_classes"], width=ckpt.get("width", 32),
                        hidden=ckpt.get("hidden", 256), image_size=ckpt["image_size"],
                        in_features=ckpt.get("in_features"), source=str(path))
    try:
        model.load_state_dict(ckpt.pop("state_dict"))
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ModelError(f"{path}: weights do not fit a {ckpt['arch']} with {ckpt['num_classes']} classes "
                         f"({str(err).splitlines()[0]})") from err
    if len(ckpt["class_names"]) != ckpt["num_classes"]:
        raise ModelError(f"{path}: {len(ckpt['class_names'])} class names for "
                         f"{ckpt['num_classes']} outputs")
    return model.to(device).eval(), CheckpointMeta.from_dict(ckpt, path)


def check_classes(meta: CheckpointMeta, class_names: list[str], path: str | Path, *, exact: bool = False,
                  what: str = "classes") -> None:
    """Fail early when a checkpoint was trained on another dataset's classes.

    Args:
        class_names: the classes the dataset expects, in joint order.
        exact: the checkpoint must have exactly these classes (else a prefix of them suffices).
        what: how the message calls ``class_names`` ("seen classes", ...).
    """
    have = list(meta.class_names)
    names = list(class_names)
    if len(have) > len(names) or (exact and len(have) != len(names)):
        raise ModelError(f"{path}: checkpoint has {len(have)} output classes but the dataset has {len(names)} "
                         f"{what}. Was it trained on another dataset or split? Rerun finetune.")
    want = names[: len(have)]
    if have != want:
        raise ModelError(
            f"{path}: checkpoint classes do not match the dataset ({len(have)} outputs; first "
            f"mismatch: checkpoint {next((a for a, b in zip(have, want, strict=False) if a != b), have[-1])!r}). "
            "Was it trained on another dataset? Rerun finetune.")


# ------------------------------------------------------------------ the user's own trained classifier


def read_class_names(path: str | Path) -> list[str]:
    """``model.class_names``: one class per line, in the classifier's row order."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: class names file (model.class_names) not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ModelError(f"{path}: not valid UTF-8 text ({err.reason} at byte {err.start})") from err
    names: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if name in names:
            raise ModelError(f"{path}:{lineno}: class {name!r} listed twice (first on line {names[name]})")
        names[name] = lineno
    if not names:
        raise ModelError(f"{path}: no class names (one class per line, in the classifier's row order)")
    return list(names)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state dict the user trained: ``torch.save(model.state_dict())`` (loaded with
    ``weights_only=True``) or a ``.safetensors`` file. A dict that wraps it under ``state_dict`` or
    ``model`` (a training script's checkpoint) and DataParallel's ``module.`` prefix are accepted."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: weights file (model.weights) not found; expected none, imagenet or the "
                         "path of a state_dict")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise ModelError(f"{path}: reading .safetensors needs the safetensors package ({err})") from err
        try:
            sd = load_file(str(path))
        except Exception as err:
            raise ModelError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from err
    else:
        sd = safe_load(path, "state_dict")
    if isinstance(sd, dict):
        for key in ("state_dict", "model"):
            if isinstance(sd.get(key), dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelError(f"{path}: not a state_dict (a mapping of parameter names to tensors, as written by "
                         "torch.save(model.state_dict()))")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def export_plain(path: str | Path, model: NiwtNet, arch: str, class_names: list[str]) -> tuple[Path, Path]:
    """Write the network as plain PyTorch: ``<path>`` the state dict in torchvision's layout (loads into
    ``torchvision.models.get_model(arch, num_classes=N)``) and ``<path stem>.classes.txt`` its class
    per output row. Returns both paths."""
    path = Path(path)
    names_path = path.with_name(path.name.split(".")[0] + ".classes.txt")
    with atomic_path(path) as tmp:
        torch.save(plain_state_dict(model, arch), tmp)
    with atomic_path(names_path) as tmp:
        tmp.write_text("".join(f"{n}\n" for n in class_names), encoding="utf-8")
    return path, names_path
