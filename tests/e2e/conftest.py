"""Fixtures of the end-to-end tests: ``cluster`` (see ``e2e_cluster``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_cluster import Cluster


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the processes' output to the report of a failed e2e test."""
    rep = yield
    c = getattr(item, "funcargs", {}).get("cluster")
    if rep.when == "call" and rep.failed and isinstance(c, Cluster):
        rep.sections.append(("runq processes", c.report()))
    return rep


@pytest.fixture
def cluster(tmp_path: Path, runq_env: dict[str, str]) -> Iterator[Cluster]:
    c = Cluster(tmp_path, runq_env)
    try:
        yield c
    finally:
        c.close()
