"""Prefect tasks: thin wrappers that run pipeline stages and publish results.

The offline-friendly telemetry settings are set here, before anything imports Prefect (or MLflow,
DVC): set later, Prefect's first ephemeral run still tries its analytics and prints a traceback.
"""

from niwt.integration.tracking import quiet_telemetry

quiet_telemetry()
