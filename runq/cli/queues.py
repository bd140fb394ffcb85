"""Commands about queues and workers: ``pause``, ``resume``, ``queues``, ``workers``, ``types``, ``drain``."""

from __future__ import annotations

import time
from typing import Any

import click

from . import output
from .options import Settings, client, command, json_option, log_options, server_options

__all__ = ["drain", "pause", "queues", "resume", "types", "types_rows", "workers"]


@command("stop dispatching a queue's tasks (enqueue still accepted)")
@click.argument("queue")
@server_options
@log_options
@click.pass_obj
def pause(settings: Settings, queue: str) -> int:
    """Stop dispatching the tasks of QUEUE to workers; enqueueing goes on."""
    with client(settings) as c:
        c.pause(queue)
    click.echo(f"queue {queue} paused")
    return 0


@command("dispatch a paused queue's tasks again")
@click.argument("queue")
@server_options
@log_options
@click.pass_obj
def resume(settings: Settings, queue: str) -> int:
    """Dispatch the tasks of QUEUE again."""
    with client(settings) as c:
        c.resume(queue)
    click.echo(f"queue {queue} resumed")
    return 0


@command("show the queues and their counts")
@server_options
@json_option
@log_options
@click.pass_obj
def queues(settings: Settings, json: bool) -> int:
    """Show every queue: paused or not, its tasks scheduled, ready and running, the workers that take from it."""
    with client(settings) as c:
        found = c.queues()
    if json:
        output.print_json(found)
    elif not found:
        output.note("runq queues: no queues yet (a queue exists once a task or a worker names it)")
    else:
        output.print_table(
            ["QUEUE", "PAUSED", "SCHEDULED", "READY", "RUNNING", "WORKERS"],
            [(q["queue"], "paused" if q["paused"] else "no", q["scheduled"], q["ready"], q["running"], q["workers"])
             for q in found],
            styles={1: {"paused": "yellow"}}, right=[2, 3, 4, 5])
    return 0


@command("show the connected workers")
@server_options
@json_option
@log_options
@click.pass_obj
def workers(settings: Settings, json: bool) -> int:
    """Show every connected worker: its state, queues, tasks in flight, counts and last heartbeat."""
    with client(settings) as c:
        found = c.workers()
    if json:
        output.print_json(found)
    elif not found:
        output.note("runq workers: no worker is connected")
    else:
        now = time.time()
        output.print_table(
            ["ID", "STATE", "HOST", "PID", "QUEUES", "IN_FLIGHT", "COMPLETED", "FAILED", "HEARTBEAT", "CONNECTED"],
            [(w["id"], w["state"], w.get("host"), w.get("pid"), ",".join(w["queues"]),
              f"{w['in_flight']}/{w['concurrency']}", w["completed"], w["failed"],
              output.ago(w["last_heartbeat"], now), output.ago(w["connected_at"], now)) for w in found],
            styles={1: output.STATE_STYLES}, right=[3, 5, 6, 7])
    return 0


@command("show the task types the connected workers handle")
@server_options
@json_option
@log_options
@click.pass_obj
def types(settings: Settings, json: bool) -> int:
    """Show the task types the connected workers handle: how many workers, on which queues."""
    with client(settings) as c:
        found = c.task_types()
    if json:
        output.print_json(found)
    elif not found:
        output.note("runq types: no task types: no worker is connected")
    else:
        output.print_table(["TYPE", "WORKERS", "QUEUES", "BATCH", "REQUIRES"], types_rows(found), right=[1])
    return 0


def types_rows(found: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The rows of ``runq types``: a batched type's ``max_size`` and ``max_wait`` (docs/batching.md), the labels
    its definition requires (docs/routing.md), ``-`` for none."""
    rows = []
    for t in found:
        b = t.get("batch")
        batch = f"{b['max_size']} / {b['max_wait']:g}s" if b else "-"
        req = t.get("requires")
        requires = ",".join(f"{k}={v}" for k, v in sorted(req.items())) if req else "-"
        rows.append((t["type"], t["workers"], ",".join(t["queues"]), batch, requires))
    return rows


@command("ask a worker to finish its running tasks, hand back the rest and leave")
@click.argument("worker_id")
@server_options
@json_option
@log_options
@click.pass_obj
def drain(settings: Settings, worker_id: str, json: bool) -> int:
    """Ask worker WORKER_ID (see `runq workers`) to take no new task, finish its running ones, hand back
    the rest and leave."""
    with client(settings) as c:
        w = c.drain(worker_id)
    if json:
        output.print_json(w)
    else:
        click.echo(f"worker {w['id']} {w['state']} ({w['in_flight']} task(s) running)")
    return 0
