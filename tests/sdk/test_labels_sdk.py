"""Labels in the SDK (docs/routing.md): ``Worker(labels=...)``, ``requires`` on a definition, per call and by
type name, and ``runq worker --label``; bad ones are refused before anything is sent."""

from __future__ import annotations

import click
import pytest

import runq
from runq import Worker
from runq.cli.worker import _labels
from runq.protocol.client import _task_entry


@runq.task(requires={"region": "eu"})
def job(n: int) -> int:
    return n


def test_requires_goes_on_the_wire_entry_from_the_definition_the_call_and_with_options() -> None:
    assert job.call(1).entry()["requires"] == {"region": "eu"}
    assert job.call(1).entry(requires={"region": "us"})["requires"] == {"region": "us"}
    assert job.with_options(requires={"gpu": "1"}).call(1).entry()["requires"] == {"gpu": "1"}
    assert "requires" not in runq.task(lambda: None).call().entry()  # type: ignore[arg-type]
    assert _task_entry("t", requires={"region": "eu"})["requires"] == {"region": "eu"}


def test_bad_labels_are_refused_where_they_are_given() -> None:
    with pytest.raises(ValueError, match="labels"):
        Worker(labels={"region": ""})
    with pytest.raises(ValueError, match="requires"):
        runq.task(requires={"a b": "x"})(lambda: None)
    assert Worker(labels={"z": "1", "a": "2"}).labels == {"a": "2", "z": "1"}


def test_the_worker_command_reads_repeated_labels() -> None:
    ctx = click.Context(click.Command("worker"))
    param = click.Option(["--label"])
    assert _labels(ctx, param, ("region=eu", "gpu=1")) == {"gpu": "1", "region": "eu"}
    assert _labels(ctx, param, ()) is None
    with pytest.raises(click.BadParameter, match="NAME=VALUE"):
        _labels(ctx, param, ("region",))
    with pytest.raises(click.BadParameter, match="labels"):
        _labels(ctx, param, ("region=e u",))
