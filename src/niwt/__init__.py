"""niwt: Neuron-Importance-aware Weight Transfer (Selvaraju et al., ECCV 2018) as a reproducible pipeline.

Layers (README, "Layout"): a pure PyTorch/NumPy core (``data``, ``models``, ``importance``,
``mapping``, ``injection``, ``peers``, ``evaluation``, ``explain``, ``io``); ``integration`` (MLflow);
``stages`` (one thin I/O module per pipeline stage) and ``commands``; the entry point ``cli`` with
``params``. Orchestration (Prefect flows and tasks) lives outside the package.
"""

__version__ = "0.1.0"
