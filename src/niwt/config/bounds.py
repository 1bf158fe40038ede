"""Bounds on params values that types cannot express.

Far beyond any real run, so that a typo (an extra digit, 1e30) fails at once, before any work,
instead of allocating petabytes or training forever. The one place for these checks.
"""

from __future__ import annotations

from niwt.errors import ParamsError
from niwt.params import Params

# Bounds far beyond any real run, so that a typo (an extra digit, 1e30) fails at once instead of
# allocating petabytes or training forever. (low, high), inclusive; lower bounds of batch sizes and
# epochs are also checked above, with the "must be positive" message.
UPPER_BOUNDS: dict[str, tuple[int, int]] = {
    "data.synthetic.n_classes": (2, 10_000),
    "data.synthetic.images_per_class": (1, 100_000),
    "data.synthetic.image_size": (16, 2048),
    "model.image_size": (16, 2048),
    "model.width": (1, 4096),
    "model.hidden": (1, 65_536),
    "finetune.epochs": (0, 10_000),
    "finetune.head_epochs": (0, 10_000),
    "finetune.batch_size": (0, 65_536),
    "mapping.epochs": (0, 100_000),
    "mapping.batch_size": (0, 1_048_576),
    "mapping.n_val_classes": (0, 100_000),
    "inject.batch_size": (0, 65_536),
    "validate.min_classes": (1, 100_000),
    "validate.finetune_epochs": (0, 10_000),
    "inject.max_iters": (0, 10_000_000),
    "inject.patience": (1, 10_000_000),
    "inject.pool_size": (1, 10_000_000),
    "explain.images_per_class": (0, 10_000),
    "explain.top_attributes": (0, 100_000),
}

# Real-valued knobs: (low, high), inclusive; NaN is outside every range. A negative learning rate or
# weight decay, or a step of 1e30, trains to NaN weights and every later stage would report on them.
FLOAT_RANGES: dict[str, tuple[float, float]] = {
    "finetune.lr": (1e-12, 1e3),
    "finetune.lr_full": (1e-12, 1e3),
    "finetune.weight_decay": (0.0, 1e3),
    "finetune.label_smoothing": (0.0, 1.0),
    "inject.min_improvement": (0.0, 1.0),
}


def check_bounds(p: Params, source: str) -> None:
    """Value checks that types cannot express, all problems in one error naming ``source``."""
    # The architecture, weights and method lists are the model factory's and the registry's own;
    # imported here, not at the top, so that reading params needs torch only when checking them.
    from niwt.injection.registry import METHODS
    from niwt.models.networks import ARCHS, WEIGHTS_CHOICES

    s = p.data.synthetic
    problems = []
    if not 0 < s.n_unseen < s.n_classes:
        problems.append("data.synthetic.n_unseen must be between 1 and n_classes - 1")
    if not 0.0 < p.validate.fraction < 1.0:
        problems.append(f"validate.fraction must be in (0, 1), got {p.validate.fraction}")
    if not 0.0 < p.data.val_fraction + p.data.test_seen_fraction < 1.0:
        problems.append("data.val_fraction + data.test_seen_fraction must be in (0, 1)")
    for name in ("finetune.batch_size", "mapping.batch_size", "inject.batch_size", "explain.images_per_class",
                 "explain.top_attributes", "finetune.epochs", "mapping.epochs"):
        section, key = name.split(".")
        if getattr(getattr(p, section), key) <= 0:
            problems.append(f"{name} must be positive")
    if not 0 <= p.base.seed <= 2**32 - 1:
        problems.append(f"base.seed must be between 0 and 2^32-1 = {2**32 - 1} (numpy and torch seeds), "
                        f"got {p.base.seed}")
    if p.finetune.head_epochs < 0:
        problems.append("finetune.head_epochs must be >= 0")
    for name, (low, high) in UPPER_BOUNDS.items():
        section, *middle, key = name.split(".")
        value = getattr(getattr(p, section), key) if not middle else getattr(getattr(getattr(p, section),
                                                                                      middle[0]), key)
        if value > high or value < low:
            problems.append(f"{name} must be between {low} and {high} (a real run never needs more), got {value}")
    for name, (low, high) in FLOAT_RANGES.items():
        section, key = name.split(".")
        value = getattr(getattr(p, section), key)
        if not low <= value <= high:
            problems.append(f"{name} must be between {low:g} and {high:g}, got {value}")
    if p.model.arch not in ARCHS:
        import torchvision  # only for other architectures: reading the default params stays cheap

        archs = torchvision.models.list_models(module=torchvision.models)
        if p.model.arch not in archs:
            problems.append(f"model.arch: {p.model.arch!r} is neither smallcnn nor a torchvision classification "
                            f"model ({', '.join(sorted(archs))})")
    if p.finetune.mode == "none" and p.model.weights in WEIGHTS_CHOICES:
        problems.append("finetune.mode: none keeps a classifier you trained: set model.weights to its state_dict "
                        "file (and model.class_names to its class list)")
    if (p.data.name == "xlsa17") != (p.model.arch == "mlp"):  # features need the network over features, and only it
        problems.append(f"data.name: {p.data.name} with model.arch: {p.model.arch}: precomputed features "
                        "(data.name: xlsa17) are read by model.arch: mlp, and mlp reads nothing else")
    if p.model.weights not in WEIGHTS_CHOICES and not p.model.class_names:
        problems.append("model.weights is a file: set model.class_names to a text file naming its classifier rows, "
                        "one class per line, in row order")
    problems += _grid_problems(p)
    valid = tuple(METHODS)
    unknown = set(p.inject.methods) - set(valid)
    if unknown:
        problems.append(f"inject.methods: unknown {sorted(unknown)}; valid: {' '.join(valid)}")
    if problems:
        raise ParamsError(f"{source}: " + "; ".join(problems))


def _grid_problems(p: Params) -> list[str]:
    """The candidate lists ``validate`` chooses from: non-empty, in range."""
    problems = []
    grids = {"inject.lr": p.inject.lr, "inject.lambda": p.inject.lambda_, "inject.ridge_alpha": p.inject.ridge_alpha,
             "inject.eszsl_exponents": p.inject.eszsl_exponents, "inject.devise_lr": p.inject.devise_lr,
             "inject.ale_lr": p.inject.ale_lr, "inject.sje_lr": p.inject.sje_lr,
             "inject.bilinear_epochs": p.inject.bilinear_epochs, "inject.sae_exponents": p.inject.sae_exponents,
             "mapping.candidate_epochs": p.mapping.candidate_epochs,
             "mapping.lr": p.mapping.lr, "mapping.weight_decay": p.mapping.weight_decay}
    for name, grid in grids.items():
        if not grid:
            problems.append(f"{name}: give at least one candidate (one value fixes it)")
        elif len(grid) > 64:
            problems.append(f"{name}: at most 64 candidates, got {len(grid)}")
    for name, grid, low, high in (("inject.lr", p.inject.lr, 1e-12, 1e3), ("inject.lambda", p.inject.lambda_, 0.0, 1e9),
                                  ("inject.ridge_alpha", p.inject.ridge_alpha, 0.0, 1e12),
                                  ("inject.eszsl_exponents", p.inject.eszsl_exponents, -12, 12),
                                  ("inject.devise_lr", p.inject.devise_lr, 1e-12, 1e6),
                                  ("inject.ale_lr", p.inject.ale_lr, 1e-12, 1e6),
                                  ("inject.sje_lr", p.inject.sje_lr, 1e-12, 1e6),
                                  ("inject.bilinear_epochs", p.inject.bilinear_epochs, 1, 10_000),
                                  ("inject.sae_exponents", p.inject.sae_exponents, -12, 12),
                                  ("mapping.lr", p.mapping.lr, 1e-12, 1e3),
                                  ("mapping.weight_decay", p.mapping.weight_decay, 0.0, 1e3)):
        bad = [v for v in grid if not low <= v <= high]
        if bad:
            problems.append(f"{name}: candidates must be between {low} and {high}, got {bad}")
    bad = [e for e in p.mapping.candidate_epochs if not 1 <= e <= p.mapping.epochs]
    if bad:
        problems.append(f"mapping.candidate_epochs: each must be between 1 and mapping.epochs = {p.mapping.epochs}, "
                        f"got {bad}")
    return problems


def check_image_size(size: int, flag: str = "--image-size") -> None:
    """A command-line image side within ``model.image_size``'s bounds (a side of 100,000 px would
    ask for terabytes), as one :class:`ParamsError` naming ``flag``."""
    low, high = UPPER_BOUNDS["model.image_size"]
    if not low <= size <= high:
        raise ParamsError(f"{flag} must be between {low} and {high}, got {size}")
