"""Integration with tracking services: MLflow runs (``tracking``) and the model registry (``registry``).

May import the core and ``niwt.params``; never the stages, the CLI, Prefect flows or tasks."""
