"""Commands about tasks: ``enqueue``, ``status``, ``wait``, ``cancel``, ``retry``, ``events``, ``tasks``."""

from __future__ import annotations

from datetime import datetime
from json import JSONDecodeError, loads
from typing import Any

import click

from . import output
from .options import EXIT_CANNOT_START, Settings, client, command, json_option, log_options, option, server_options

__all__ = ["cancel", "enqueue", "events", "retry", "status", "tasks", "wait"]


class JsonValue(click.ParamType[Any]):
    """A JSON text, given as its value."""

    name = "JSON"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return loads(value)
        except JSONDecodeError as exc:
            self.fail(f"is not JSON: {exc}", param, ctx)


class RetryPolicyJson(click.ParamType[Any]):
    """A retry policy as JSON (docs/tasks.md, "Retry policies"), checked as the server checks it."""

    name = "JSON"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from ..protocol.errors import ProtocolError
        from ..protocol.retry_policy import RetryPolicy, check_retry_policy

        if isinstance(value, RetryPolicy):
            return value
        try:
            checked = check_retry_policy(loads(value), "a retry policy")
        except JSONDecodeError as exc:
            self.fail(f"is not JSON: {exc}", param, ctx)
        except ProtocolError as exc:
            self.fail(str(exc), param, ctx)
        return None if checked is None else RetryPolicy.from_wire(checked)


class IsoTime(click.ParamType[float]):
    """An ISO 8601 time (naive: local time), given as a Unix time."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError as exc:
            self.fail(f"is not an ISO time: {exc}", param, ctx)


@command("enqueue one task and print its id")
@click.argument("type")
@server_options
@option("--payload", type=JsonValue(), default="null", help="the task's arguments, as JSON")
@option("--queue", default=None, show_default="the default queue", help="queue name")
@option("--priority", type=int, default=None, show_default="0", help="higher runs first")
@option("--delay", type=float, default=None, metavar="SECONDS", help="seconds before it may run")
@option("--at", type=IsoTime(), default=None, help="ISO time before which it may not run (naive = local)")
@option("--timeout", type=float, default=None, metavar="SECONDS", show_default="600",
        help="seconds one attempt may run")
@option("--retries", type=int, default=None, show_default="3", help="retries after a failure")
@option("--key", default=None, help="unique key: a second task with the same key is not created")
@option("--retry-policy", type=RetryPolicyJson(), default=None,
        help='this task\'s own retry policy, as JSON: {"delays": [5, 30], "retry_on": ["ConnectionError"], '
             '"never_retry": ["ValueError"]} or {"base": 2, "max": 600, "jitter": 0.1} (docs/tasks.md)')
@option("--coalesce-key", default=None, metavar="KEY",
        help="while a task enqueued with this key waits, merge into it (its id is printed) instead of adding one")
@option("--coalesce", type=click.Choice(["replace", "keep"]), default=None, show_default="replace",
        help="with --coalesce-key: the newest payload wins (replace) or the first stays (keep)")
@option("--limit-key", default=None, metavar="KEY",
        help="the key value of the per-key limits it is subject to, instead of the payload field they name")
@option("--strict", is_flag=True,
        help="refuse (exit 3) when no connected worker handles this task type (default: a warning)")
@log_options
@click.pass_obj
def enqueue(settings: Settings, type: str, payload: Any, queue: str | None, priority: int | None,
            delay: float | None, at: float | None, timeout: float | None, retries: int | None, key: str | None,
            retry_policy: Any, coalesce_key: str | None, coalesce: str | None, limit_key: str | None,
            strict: bool) -> int:
    """Enqueue one task of type TYPE and print its id (the same for people and scripts:
    id=$(runq enqueue ...))."""
    if delay is not None and at is not None:
        raise click.UsageError("--delay and --at cannot be given together")
    if coalesce is not None and coalesce_key is None:
        raise click.UsageError("--coalesce needs --coalesce-key")
    with client(settings) as c:
        served = {t["type"]: t["queues"] for t in c.task_types()}
        known = list(served)
        if type in served and queue is not None and queue not in served[type]:
            where = ", ".join(repr(q) for q in served[type])
            text = (f"the workers of task type {type!r} take tasks from {where}, not from {queue!r} (leave --queue "
                    "out: a task enqueued by type name goes where its definition says)")
            if strict:
                output.note(f"runq enqueue: {text}; nothing enqueued (--strict)")
                return EXIT_CANNOT_START
            output.note(f"runq enqueue: warning: {text}; the task waits until a worker takes that queue")
        if type not in known:
            hint = _type_hint(type, known)
            if strict:
                output.note(f"runq enqueue: no connected worker handles task type {type!r}{hint}; nothing enqueued "
                            "(--strict)")
                return EXIT_CANNOT_START
            output.note(f"runq enqueue: warning: no connected worker handles task type {type!r}{hint}; the task "
                        "waits until one does (--strict refuses instead)")
        tid = c.enqueue(type, payload, queue=queue, priority=priority, delay=delay, run_at=at, timeout=timeout,
                        retries=retries, key=key, retry_policy=retry_policy, coalesce_key=coalesce_key,
                        coalesce=coalesce, limit_key=limit_key)
    click.echo(tid)
    return 0


def _type_hint(name: str, known: list[str]) -> str:
    """`` (did you mean ...?)`` for a task type close to a known one, else the known ones (if few)."""
    import difflib

    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    if known and len(known) <= 10:
        return f" (connected workers handle: {', '.join(known)})"
    return " (no worker is connected)" if not known else ""


def _show_task(task: dict[str, Any], json: bool) -> None:
    if json:
        output.print_json(task)
    else:
        output.print_task(task)


@command("show a task: its state, times, payload, result or error")
@click.argument("id", type=int)
@server_options
@json_option
@log_options
@click.pass_obj
def status(settings: Settings, id: int, json: bool) -> int:
    """Show task ID: its state, attempts, local times and ages, payload, result or error (--json: the task
    map, times as Unix times)."""
    with client(settings) as c:
        task = c.get(id)
    _show_task(task, json)
    return 0


@command("wait for a task to finish and show it (exit 1 unless it succeeded)")
@click.argument("id", type=int)
@server_options
@option("--timeout", type=float, default=None, metavar="SECONDS", show_default="no limit",
        help="give up (exit 1) after this long")
@json_option
@log_options
@click.pass_obj
def wait(settings: Settings, id: int, timeout: float | None, json: bool) -> int:
    """Wait until task ID is finished, then show it as `status` does. Exit status 0 when it succeeded,
    else 1."""
    with client(settings) as c:
        task = c.wait(id, timeout)
    _show_task(task, json)
    return 0 if task["state"] == "succeeded" else 1


@command("cancel a task")
@click.argument("id", type=int)
@server_options
@json_option
@log_options
@click.pass_obj
def cancel(settings: Settings, id: int, json: bool) -> int:
    """Cancel task ID (queued, scheduled or running)."""
    with client(settings) as c:
        task = c.cancel(id)
    _done(task, json)
    return 0


@command("retry a dead or cancelled task now")
@click.argument("id", type=int)
@server_options
@json_option
@log_options
@click.pass_obj
def retry(settings: Settings, id: int, json: bool) -> int:
    """Bring task ID (dead, cancelled, or waiting for a retry) back to ready now."""
    with client(settings) as c:
        task = c.retry(id)
    _done(task, json)
    return 0


def _done(task: dict[str, Any], json: bool) -> None:
    if json:
        output.print_json(task)
    else:
        click.echo(f"task {task['id']} {task['state']}")


@command("show a task's timeline")
@click.argument("id", type=int)
@server_options
@json_option
@log_options
@click.pass_obj
def events(settings: Settings, id: int, json: bool) -> int:
    """Show the timeline of task ID: every event, oldest first, with its local time and the time since
    the first."""
    with client(settings) as c:
        timeline = c.events(id)
    if json:
        output.print_json(timeline)
    else:
        output.print_events(timeline)
    return 0


@command("list tasks, newest first")
@server_options
@option("--state", default=None, help="only tasks in this state (ready, running, succeeded, dead...)")
@option("--queue", default=None, help="only tasks of this queue")
@option("--type", default=None, help="only tasks of this type")
@option("--limit", type=click.IntRange(1, 1000), default=50, help="tasks per page")
@option("--cursor", type=int, default=None, help="the next page: the cursor the previous one printed")
@json_option
@log_options
@click.pass_obj
def tasks(settings: Settings, state: str | None, queue: str | None, type: str | None, limit: int,
          cursor: int | None, json: bool) -> int:
    """List tasks, newest first, a page at a time (--json: {"tasks": [...], "cursor": next page or null})."""
    import time

    with client(settings) as c:
        page, next_cursor = c.list_tasks(state=state, queue=queue, type=type, limit=limit, cursor=cursor)
    if json:
        output.print_json({"tasks": page, "cursor": next_cursor})
        return 0
    if not page:
        filters = " ".join(f"--{k} {v}" for k, v in (("state", state), ("queue", queue), ("type", type)) if v)
        more = "no more tasks" if cursor is not None else "no tasks"
        output.note(f"runq tasks: {more}" + (f" match {filters}" if filters else ""))
        return 0
    now = time.time()
    output.print_table(
        ["ID", "STATE", "QUEUE", "TYPE", "PRIORITY", "ATTEMPT", "CREATED"],
        [(t["id"], t["state"], t["queue"], t["type"], t["priority"], t["attempt"],
          output.ago(t["created_at"], now) if t.get("created_at") is not None else None) for t in page],
        styles={1: output.STATE_STYLES}, right=[0, 4, 5])
    if next_cursor is not None:
        output.note(f"runq tasks: more with --cursor {next_cursor}")
    return 0
