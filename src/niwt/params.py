"""The params schema: typed, frozen views of ``params.yaml``, and of the execution settings.

Every hyperparameter of the pipeline lives in ``params.yaml``; each section is a frozen dataclass
here, and its defaults are the one place for defaults (a test keeps ``params.yaml`` equal to them).
This module holds only the schema, so that it is cheap to import and the stages' DVC lineage holds
nothing else of the configuration: reading and type-checking the YAML is :mod:`niwt.config.load`,
value bounds are :mod:`niwt.config.bounds`, the execution settings from the environment are
:mod:`niwt.config.runtime`, and what a stage may see is :mod:`niwt.config.view`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class BaseParams:
    seed: int = 0


@dataclass(frozen=True)
class SyntheticParams:
    """Knobs of the embedded generated benchmark (see ``niwt.data.synthetic``)."""

    n_classes: int = 50
    n_unseen: int = 10
    images_per_class: int = 100
    image_size: int = 64
    dominant_prob: float = 0.97
    clutter: float = 0.3


@dataclass(frozen=True)
class DataParams:
    name: Literal["synthetic", "awa2", "cub", "sun", "folder", "xlsa17"] = "synthetic"
    root: str = "data/raw"
    dataset: Literal["AWA2", "CUB", "SUN", "AWA1", "APY", "FLO"] = "CUB"  # data.name xlsa17: which features
    download: bool = False
    domain: Literal["attributes", "attributes_binary", "sentences", "text"] = "attributes"
    val_fraction: float = 0.1
    test_seen_fraction: float = 0.2
    bad_images: Literal["fail", "skip"] = "fail"
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)


@dataclass(frozen=True)
class CacheParams:
    enabled: bool = True  # decoded-image cache (the cache stage); false: stages decode the image files


@dataclass(frozen=True)
class ModelParams:
    """The network that ``finetune`` builds and trains (the importance layer belongs to ``extract``)."""

    arch: str = "smallcnn"  # or any torchvision classification model (torchvision.models.list_models)
    weights: str = "none"  # none | imagenet | path of a state_dict (or .safetensors) the user trained
    class_names: str = ""  # with a weights file: text file, one class per classifier row, in row order
    width: int = 32
    hidden: int = 256
    image_size: int = 64


@dataclass(frozen=True)
class FinetuneParams:
    mode: Literal["fixed", "full", "none"] = "full"
    head_epochs: int = 0
    epochs: int = 12
    batch_size: int = 64
    lr: float = 0.003
    lr_full: float = 0.003
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    amp: bool = False
    channels_last: bool = False


@dataclass(frozen=True)
class ExtractParams:
    """What an importance is: the layer, the pooling and the target class. Downstream stages read
    the layer and pooling from the importances' metadata, never from here."""

    layer: str = "auto"  # auto: the architecture's layer (niwt.models.networks.default_layer), or a module name
    pooling: Literal["sum", "mean"] = "sum"
    target: Literal["ground_truth", "predicted"] = "ground_truth"
    allow_degenerate: bool = False  # accept a layer with no nonlinearity above it (NIWT degenerates)


@dataclass(frozen=True)
class MappingParams:
    """The map domain vector -> importance. The lists are candidates ``validate`` chooses from."""

    epochs: int = 60  # the held-out-seen trace's length (the paper's rule, still recorded)
    lr: tuple[float, ...] = (0.001, 0.01)  # Adam's learning rate
    batch_size: int = 64
    weight_decay: tuple[float, ...] = (0.0, 0.0001)
    n_val_classes: int = 5
    selection: Literal["rank_corr", "val_loss"] = "rank_corr"
    candidate_epochs: tuple[int, ...] = (1, 2, 5, 10, 20, 40, 60)


@dataclass(frozen=True)
class InjectParams:
    # empty: every registered method but the opt-in ones (devise, ale, sje, sae), in registry order
    # (the loader, niwt.config.load, writes them out)
    methods: tuple[str, ...] = ()
    lr: tuple[float, ...] = (0.001, 0.01)
    lambda_: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    ridge_alpha: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
    eszsl_exponents: tuple[int, ...] = (-3, -2, -1, 0, 1, 2, 3, 4, 5, 6)
    devise_lr: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0)  # DEVISE's SGD step
    ale_lr: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0)  # ALE's SGD step
    sje_lr: tuple[float, ...] = (0.1, 1.0, 10.0)  # SJE's SGD step
    bilinear_epochs: tuple[int, ...] = (5, 10, 20)  # DEVISE, ALE, SJE: SGD epochs
    sae_exponents: tuple[int, ...] = (-2, -1, 0, 1, 2, 3, 4)  # SAE's lambda: 10^e
    batch_size: int = 64
    max_iters: int = 3000
    patience: int = 40
    min_improvement: float = 0.01
    pool: str = "train"  # train | noise | a folder of images (searched recursively)
    pool_size: int = 1024
    solver: Literal["auto", "jacobian", "double_backprop"] = "auto"
    init: Literal["seen_centered", "mean"] = "seen_centered"


@dataclass(frozen=True)
class ValidateParams:
    """The class-disjoint validation protocol (see ``niwt.data.tables.validation_count``)."""

    classes: Literal["auto", "seeded"] = "auto"  # auto: the dataset's own validation classes where it has them
    fraction: float = 0.33  # of the seen classes, drawn by base.seed (Xian et al.: about a third)
    min_classes: int = 5  # never fewer validation classes than this, where the seen classes allow
    finetune_epochs: int = 0
    # auto: a method's own held-out signal where it has one (ridge: held-out R² of the rows), else
    # the way it is used (NIWT as shipped: H; the peers, calibrated: cal_H); a criterion flat near
    # zero for a method falls back to the next (niwt.evaluation.selection)
    criterion: Literal["auto", "H", "cal_H", "ausuc"] = "auto"


@dataclass(frozen=True)
class ExplainParams:
    images_per_class: int = 4
    top_attributes: int = 5


@dataclass(frozen=True)
class TrackingParams:
    experiment: str = "niwt"


@dataclass(frozen=True)
class Params:
    base: BaseParams = field(default_factory=BaseParams)
    data: DataParams = field(default_factory=DataParams)
    cache: CacheParams = field(default_factory=CacheParams)
    model: ModelParams = field(default_factory=ModelParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    extract: ExtractParams = field(default_factory=ExtractParams)
    mapping: MappingParams = field(default_factory=MappingParams)
    inject: InjectParams = field(default_factory=InjectParams)
    validate: ValidateParams = field(default_factory=ValidateParams)
    explain: ExplainParams = field(default_factory=ExplainParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)


# Execution settings: where and how a stage runs, never what it computes. They are not in
# params.yaml (no stage lists them), so switching to a GPU, to Dask or to more loader workers
# never makes DVC rerun anything. Each comes from an environment variable (which `dvc repro`
# passes to its stages) and may be overridden by the matching `niwt` flag.
@dataclass(frozen=True)
class Runtime:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int = 0  # DataLoader worker processes (0: load in the main process)
    runner: Literal["local", "dask"] = "local"  # where extraction shards run
    dask_address: str = ""  # empty: a LocalCluster of dask_workers processes; else a scheduler address
    dask_workers: int = 2
    progress: bool = True
    # How many images one forward pass takes in the inference stages (importances, features,
    # evaluation, explanations) and how extraction's output is cut: speed and memory only, the same
    # numbers to the last float bits. 0: the default of the kind of work (INFERENCE_BATCH).
    batch_size: int = 0
    shard_size: int = 512  # images per importance shard (what a killed extraction resumes by)
    channels_last: bool = True  # extraction's memory format: ~2x faster on CPU, same values to ~1e-7
    # Processes of the fine-tuning stages (data-parallel under torch.distributed.run; one per GPU).
    nproc: int = 1

    def inference_batch(self, kind: Literal["importances", "features"]) -> int:
        """Images per forward pass: ``batch_size``, or the default of ``kind``."""
        return self.batch_size or INFERENCE_BATCH[kind]


# Default images per forward pass: importances need a backward pass too, so half the batch.
INFERENCE_BATCH = {"importances": 64, "features": 128}


# YAML keys that are Python keywords map to a trailing-underscore field.
KEYWORD_FIELDS = {"lambda": "lambda_"}


def section_dict(section: Any) -> dict[str, Any]:
    """Flatten a params section to ``{"key": value}`` for logging (nested keys dotted)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        key = next((k for k, v in KEYWORD_FIELDS.items() if v == f.name), f.name)
        if dataclasses.is_dataclass(value):
            out.update({f"{key}.{k}": v for k, v in section_dict(value).items()})
        elif isinstance(value, tuple):
            out[key] = ",".join(map(str, value))
        else:
            out[key] = value
    return out
