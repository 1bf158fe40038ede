"""Prefect flows. Telemetry settings come first, before any Prefect import (see ``tasks``)."""

from niwt.integration.tracking import quiet_telemetry

quiet_telemetry()
