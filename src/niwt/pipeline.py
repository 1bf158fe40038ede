"""The one list of pipeline stages, in order, with the params each one reads.

The CLI, the Prefect flow, ``niwt lineage`` (which writes each stage's code deps into ``dvc.yaml``) and
the tests use it; a test holds ``dvc.yaml`` equal to it. The CLI hands a stage only the params it
declares (:func:`niwt.config.view.declared_view`), so a stage that reads an undeclared key fails
instead of going stale under DVC. This is wiring: no stage imports it, so editing a help text here
reruns nothing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str  # the dvc.yaml stage, the `niwt` subcommand, the Prefect task run and the MLflow run
    params: tuple[str, ...]  # params.yaml sections or single keys it reads (= its dvc.yaml `params:`)
    help: str
    tracked: bool = True  # opens an MLflow run (fingerprint, run on every `dvc repro`, does not)


STAGES: tuple[Stage, ...] = (
    # Reads where the raw data is (data.name, data.root, data.dataset: owned by prepare) and the files the
    # user names (model.weights, model.class_names: finetune's; inject.pool: inject's) to fingerprint them.
    Stage("fingerprint", ("data.name", "data.root", "data.dataset", "model.weights", "model.class_names",
                          "inject.pool", "model.arch", "model.width", "model.hidden", "extract.layer",
                          "extract.allow_degenerate"),
          "fingerprint the raw dataset and the files params name, so that editing any of them reruns its "
          "readers; check the importance layer against the architecture before any training",
          tracked=False),
    Stage("prepare", ("base.seed", "data"), "generate or read the dataset; write classes.parquet and splits.parquet"),
    Stage("cache", ("model.image_size", "cache"),
          "decode every image once into memory-mapped uint8 arrays that the later stages read"),
    Stage("finetune", ("base.seed", "model", "finetune"), "train the classifier on seen classes"),
    # The class-disjoint validation protocol replays the chain: finetune_validation trains as finetune
    # does (its params) without the validation classes; validate rebuilds extract .. inject on that
    # backbone (their params) and chooses among the candidate lists of mapping and inject.
    Stage("finetune_validation", ("base.seed", "model", "finetune", "validate.classes", "validate.fraction",
                                  "validate.min_classes", "validate.finetune_epochs"),
          "train the validation backbone on the seen classes minus the validation classes"),
    Stage("validate", ("base.seed", "extract", "mapping", "inject", "validate.criterion"),
          "choose every hyperparameter and gamma on validation classes the validation backbone never saw"),
    Stage("extract", ("base.seed", "extract"), "neuron importances of every seen training image (sharded Parquet)"),
    Stage("fit_mapping", ("base.seed", "mapping"), "fit the domain-vector -> importance map and its inverse"),
    Stage("inject", ("base.seed", "inject"), "add unseen-class rows to the classifier (NIWT and peers)"),
    Stage("evaluate", (), "GZSL metrics (S, U, H, ZSL T1, AUSUC) of every injected model"),
    Stage("explain", ("base.seed", "explain"), "Grad-CAM panels, textual explanations, neuron names, report"),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
