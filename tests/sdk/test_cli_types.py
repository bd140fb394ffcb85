"""`runq enqueue` of a task type no connected worker handles: a warning (with a suggestion), or with
--strict a refusal; `runq types` lists what the connected workers handle."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from runq import SyncClient, Worker
from runq.cli import main


@pytest.fixture
def with_worker(threaded_server: Any) -> Iterator[str]:
    worker = Worker(queues=["mail"], concurrency=1)

    @worker.task("send_email")
    async def send_email(payload: Any) -> None:
        await asyncio.sleep(0)

    thread = threading.Thread(target=lambda: asyncio.run(worker.run(threaded_server.address)), daemon=True)
    thread.start()
    with SyncClient(threaded_server.address) as c:
        for _ in range(200):
            if c.task_types():
                break
            threading.Event().wait(0.02)
    yield threaded_server.address
    worker.stop()
    thread.join(15)


def test_enqueue_warns_about_an_unknown_type_and_strict_refuses(with_worker: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["types", "--server", with_worker, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"type": "send_email", "workers": 1, "queues": ["mail"],
                                                         "batch": None, "requires": None}]
    assert main(["types", "--server", with_worker]) == 0  # the human view: a table, plain in a pipe
    assert [line.split() for line in capsys.readouterr().out.splitlines()] == [
        ["TYPE", "WORKERS", "QUEUES", "BATCH", "REQUIRES"], ["send_email", "1", "mail", "-", "-"]]

    assert main(["enqueue", "sendemail", "--server", with_worker, "--strict"]) == 3
    out = capsys.readouterr()
    assert out.out == "" and "no connected worker handles task type 'sendemail'" in out.err
    assert "did you mean 'send_email'?" in out.err and "nothing enqueued" in out.err
    with SyncClient(with_worker) as c:
        assert c.list_tasks()[0] == []  # refused: nothing was enqueued

    assert main(["enqueue", "sendemail", "--server", with_worker]) == 0
    out = capsys.readouterr()
    assert "warning: no connected worker handles task type 'sendemail'" in out.err
    assert int(out.out) > 0  # enqueued all the same

    assert main(["enqueue", "send_email", "--server", with_worker, "--strict", "--queue", "other"]) == 3
    out = capsys.readouterr()
    assert "the workers of task type 'send_email' take tasks from 'mail', not from 'other'" in out.err
    assert main(["enqueue", "send_email", "--server", with_worker, "--strict", "--queue", "mail"]) == 0
    out = capsys.readouterr()
    assert "runq enqueue" not in out.err and int(out.out) > 0


def test_enqueue_with_no_worker_says_so(threaded_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["enqueue", "anything", "--server", threaded_server.address]) == 0
    assert "(no worker is connected)" in capsys.readouterr().err
