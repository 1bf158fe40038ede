"""Prefect tasks: thin wrappers that run pipeline stages and publish results."""
