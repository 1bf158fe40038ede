"""Shared pytest fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def single_thread():
    """Run a test with one intra-op torch thread, restoring the previous count afterwards.

    The unit tests use tiny tensors, where thread start-up and spinning cost more than the work
    (10x slower on a loaded 2-CPU machine). Opt in with
    ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
