"""Shared pytest fixtures."""

from __future__ import annotations

import pytest

from niwt.mapping.linear import single_thread as _one_thread


@pytest.fixture
def single_thread():
    """Run a test with one intra-op torch thread, restoring the previous count afterwards.

    The unit tests use tiny tensors, where thread start-up and spinning cost more than the work
    (10x slower on a loaded 2-CPU machine). Opt in with
    ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    with _one_thread():
        yield
