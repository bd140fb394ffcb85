"""Fixtures of the server tests."""

from __future__ import annotations

import pytest
from server_helpers import VirtualClock


@pytest.fixture
def virtual_clock() -> VirtualClock:
    """Trio's clock for the test that asks for it, moved on only when nothing is at work (``VirtualClock``)."""
    return VirtualClock()
