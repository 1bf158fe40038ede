"""niwt: Neuron-Importance-aware Weight Transfer (Selvaraju et al., ECCV 2018) as a reproducible pipeline.

The package is a pure PyTorch/NumPy core (``data``, ``models``, ``importance``, ``mapping``,
``injection``, ``peers``, ``metrics``, ``explain``, ``io``) with a thin I/O layer (``stages``,
``cli``, ``tracking``). Orchestration (Prefect flows and tasks) lives outside the package.
"""

__version__ = "0.1.0"
