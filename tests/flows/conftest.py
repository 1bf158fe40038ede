"""One Prefect test harness per session (it costs several seconds to start)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield
