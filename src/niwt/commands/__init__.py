"""CLI commands that are not pipeline stages (``predict``, ``register``): no DVC stage, no params deps."""
