"""mypy checks a typed task's arguments and result through its definition (ParamSpec)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api")

SNIPPET = Path(__file__).with_name("typing_snippet.py")


def test_mypy_checks_arguments_and_results_of_typed_tasks(tmp_path: Path) -> None:
    stdout, stderr, _ = api.run(["--strict", "--no-error-summary", "--hide-error-context", "--show-column-numbers",
                                 "--cache-dir", str(tmp_path / "cache"), str(SNIPPET)])
    lines = SNIPPET.read_text().splitlines()
    expected = {i + 1 for i, line in enumerate(lines) if "# E:" in line}
    got: dict[int, list[str]] = {}
    for m in re.finditer(r"^.*typing_snippet\.py:(\d+):\d+: error: (.*)$", stdout, re.MULTILINE):
        got.setdefault(int(m.group(1)), []).append(m.group(2))
    assert set(got) == expected, f"mypy said:\n{stdout}{stderr}"
