"""Named parameter recipes: the overrides one published comparison needs, in one place.

``XLSA17`` runs the pipeline on Xian et al.'s ResNet-101 features (``data.name: xlsa17``): a network
over features (``mlp``; ``extract.layer: auto`` is its first hidden layer) and every method beside NIWT,
the classic ones (DEVISE, ALE, SJE, SAE) included. The README prints :func:`dvc_command` for it, and
``benchmarks/bench_features.py`` measures exactly these overrides.
"""

from __future__ import annotations

XLSA17: dict[str, object] = {
    "data.name": "xlsa17",
    "model.arch": "mlp",
    "model.hidden": 512,
    "finetune.batch_size": 256,  # an AdamW step per 64 rows dominated training time on 2 CPUs
    "inject.methods": ["niwt", "icis", "regression", "regression_rescaled", "eszsl", "devise", "ale", "sje", "sae"],
}


def _value(value: object) -> str:
    return "[" + ",".join(map(str, value)) + "]" if isinstance(value, list) else str(value)


def dvc_command(dataset: str, root: str) -> str:
    """The ``dvc exp run`` command that runs the xlsa17 recipe on ``dataset`` with the archive's
    ``xlsa17/data`` folder at ``root`` (one ``-S`` per override)."""
    sets = {**XLSA17, "data.dataset": dataset, "data.root": root}
    return f"dvc exp run -n xlsa17-{dataset.lower()} " + " ".join(f"-S '{k}={_value(v)}'" for k, v in sets.items())
