"""Commands about rate limits, concurrency caps and circuit breakers: ``limits`` (list, ``set``, ``rm``),
``breakers`` (list, ``set``, ``open``, ``close``, ``rm``) and ``why`` (docs/limits.md, docs/cli.md)."""

from __future__ import annotations

import time
from typing import Any

import click

from ..protocol.limits import parse_rate
from . import output
from .options import (
    RunqCommand,
    Settings,
    client,
    command,
    command_group,
    json_option,
    log_options,
    option,
    server_options,
)

__all__ = ["breakers", "limits", "why"]

_SCOPE = click.Choice(["queue", "type"])


def _limit_rows(found: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    rows = []
    for lim in found:
        rate = "-" if lim["rate"] is None else f"{lim['rate']:g}/{lim['period']:g}s"
        running = sum(s["running"] for s in lim["status"])
        waiting = sum(s["waiting"] for s in lim["status"])
        rows.append((lim["scope"], lim["name"], lim["key"] or "-", rate, lim["burst"] if lim["rate"] else "-",
                     lim["concurrency"] or "-", running, waiting))
    return rows


def _print_limits(found: list[dict[str, Any]]) -> None:
    output.print_table(["SCOPE", "NAME", "KEY", "RATE", "BURST", "CONCURRENCY", "RUNNING", "WAITING"],
                       _limit_rows(found), right=[4, 5, 6, 7])


@command_group("show, set and remove rate limits and concurrency caps")
@server_options
@json_option
@log_options
@click.pass_context
def limits(ctx: click.Context, json: bool) -> int:
    """Show the rate limits and concurrency caps, with their running and waiting tasks (a per-key limit's
    values summed). `runq limits set` and `runq limits rm` change them."""
    if ctx.invoked_subcommand is not None:
        return 0
    with client(ctx.ensure_object(Settings)) as c:
        found = c.limits()
    output.show(found, json, "runq limits: no limit is set (runq limits set queue NAME --rate 10/s)", _print_limits)
    return 0


@limits.command("set", cls=RunqCommand, short_help="set (or replace) the limit of a queue or a task type")
@click.argument("scope", type=_SCOPE)
@click.argument("name")
@option("--rate", default=None, metavar="N/UNIT", help="at most N tasks per unit: 10/s, 600/m, 5/2s, 100/h, 1000/d")
@option("--burst", type=int, default=None, help="tasks that may go at once after a quiet stretch (default 1)")
@option("--concurrency", type=int, default=None, help="at most this many of its tasks running at once")
@option("--key", default="", help="a payload field: one limit per value of it (a dotted path for nested maps)")
@server_options
@json_option
@log_options
@click.pass_obj
def limits_set(settings: Settings, scope: str, name: str, rate: str | None, burst: int | None,
               concurrency: int | None, key: str, json: bool) -> int:
    """Set the limit of SCOPE (queue or type) NAME: a rate (--rate, --burst), a cap (--concurrency) or both.
    It applies at once, to the tasks already ready too, and replaces the scope's limit."""
    if rate is None and concurrency is None:
        raise click.UsageError("give --rate, --concurrency, or both")
    parsed: tuple[float, float] | None = None
    if rate is not None:
        try:
            parsed = parse_rate(rate)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--rate") from None
    with client(settings) as c:
        lim = c.set_limit(scope, name, rate=None if parsed is None else parsed[0],
                          period=None if parsed is None else parsed[1], burst=burst, concurrency=concurrency, key=key)
    if json:
        output.print_json(lim)
    else:
        _print_limits([lim])
    return 0


@limits.command("rm", cls=RunqCommand, short_help="remove the limit of a queue or a task type")
@click.argument("scope", type=_SCOPE)
@click.argument("name")
@option("--key", default="", help="the payload field of a per-key limit")
@server_options
@log_options
@click.pass_obj
def limits_rm(settings: Settings, scope: str, name: str, key: str) -> int:
    """Remove the limit of SCOPE (queue or type) NAME; its held tasks go again at once."""
    with client(settings) as c:
        removed = c.remove_limit(scope, name, key=key)
    what = f"{scope} {name}" + (f" [{key}]" if key else "")
    click.echo(f"limit on {what} removed" if removed else f"no limit on {what}")
    return 0


def _print_breakers(found: list[dict[str, Any]]) -> None:
    now = time.time()
    output.print_table(
        ["TYPE", "STATE", "UNTIL", "THRESHOLD", "WINDOW", "MIN_CALLS", "COOLDOWN", "FAILED", "WAITING"],
        [(b["type"], b["state"] + (" (by hand)" if b["manual"] else ""),
          "-" if b["until"] is None else output.human_time(b["until"], now),
          "-" if b["threshold"] is None else f"{b['threshold']:g}",
          "-" if b["window"] is None else f"{b['window']:g}s", b["min_calls"] or "-",
          "-" if b["cooldown"] is None else f"{b['cooldown']:g}s",
          f"{b['window_failures']}/{b['window_calls']}", b["waiting"]) for b in found],
        styles={1: {"open": "red", "half_open": "yellow", "open (by hand)": "red"}}, right=[3, 4, 5, 6, 7, 8])


@command_group("show and steer the circuit breakers of task types")
@server_options
@json_option
@log_options
@click.pass_context
def breakers(ctx: click.Context, json: bool) -> int:
    """Show the circuit breakers: state, settings, failures in the window, waiting tasks. `runq breakers set`,
    `open`, `close` and `rm` change them."""
    if ctx.invoked_subcommand is not None:
        return 0
    with client(ctx.ensure_object(Settings)) as c:
        found = c.breakers()
    output.show(found, json, "runq breakers: no breaker is set (runq breakers set TYPE)", _print_breakers)
    return 0


@breakers.command("set", cls=RunqCommand, short_help="set (or replace) the circuit breaker of a task type")
@click.argument("type_", metavar="TYPE")
@option("--threshold", type=float, default=None, help="the failure rate in (0, 1] that opens it (default 0.5)")
@option("--window", type=float, default=None, help="seconds of outcomes the rate is taken over (default 60)")
@option("--min-calls", type=int, default=None, help="the fewest outcomes in the window to open it (default 10)")
@option("--cooldown", type=float, default=None, help="seconds it stays open before it tries again (default 30)")
@option("--probes", type=int, default=None, help="tasks let through to try again; that many successes close it")
@server_options
@json_option
@log_options
@click.pass_obj
def breakers_set(settings: Settings, type_: str, threshold: float | None, window: float | None,
                 min_calls: int | None, cooldown: float | None, probes: int | None, json: bool) -> int:
    """Set the circuit breaker of task type TYPE (its state is kept)."""
    with client(settings) as c:
        br = c.set_breaker(type_, threshold=threshold, window=window, min_calls=min_calls, cooldown=cooldown,
                           probes=probes)
    if json:
        output.print_json(br)
    else:
        _print_breakers([br])
    return 0


def _by_hand(settings: Settings, type_: str, reason: str, json: bool, open_: bool) -> int:
    with client(settings) as c:
        br = c.open_breaker(type_, reason) if open_ else c.close_breaker(type_, reason)
    if json:
        output.print_json(br)
    else:
        click.echo(f"breaker of {type_} {'open (until closed by hand)' if open_ else 'closed'}"
                   + (f", {br['waiting']} task(s) waiting" if br["waiting"] else ""))
    return 0


@breakers.command("open", cls=RunqCommand, short_help="open a task type's breaker by hand: its tasks wait")
@click.argument("type_", metavar="TYPE")
@option("--reason", default="", help="why (kept in the server events)")
@server_options
@json_option
@log_options
@click.pass_obj
def breakers_open(settings: Settings, type_: str, reason: str, json: bool) -> int:
    """Open the breaker of task type TYPE by hand: its ready tasks wait until `runq breakers close TYPE`."""
    return _by_hand(settings, type_, reason, json, True)


@breakers.command("close", cls=RunqCommand, short_help="close a task type's breaker by hand: its tasks go")
@click.argument("type_", metavar="TYPE")
@option("--reason", default="", help="why (kept in the server events)")
@server_options
@json_option
@log_options
@click.pass_obj
def breakers_close(settings: Settings, type_: str, reason: str, json: bool) -> int:
    """Close the breaker of task type TYPE by hand: its tasks go again at once."""
    return _by_hand(settings, type_, reason, json, False)


@breakers.command("rm", cls=RunqCommand, short_help="remove a task type's circuit breaker")
@click.argument("type_", metavar="TYPE")
@server_options
@log_options
@click.pass_obj
def breakers_rm(settings: Settings, type_: str) -> int:
    """Remove the circuit breaker of task type TYPE; its held tasks go again at once."""
    with client(settings) as c:
        removed = c.remove_breaker(type_)
    click.echo(f"breaker of {type_} removed" if removed else f"no breaker for {type_}")
    return 0


@command("say why a ready task does not run yet")
@click.argument("task_id", type=int)
@server_options
@json_option
@log_options
@click.pass_obj
def why(settings: Settings, task_id: int, json: bool) -> int:
    """Say what holds task TASK_ID back: a rate limit, a concurrency cap, an open breaker, its paused queue,
    no worker for its type, or its start time ahead; or that nothing does."""
    with client(settings) as c:
        w = c.why(task_id)
    if json:
        output.print_json(w)
    elif w is None:
        click.echo(f"task {task_id}: nothing holds it back (it waits for its turn and a worker, or is not waiting)")
    else:
        when = "" if w["until"] is None else f" (until {output.human_time(w['until'], time.time())})"
        click.echo(f"task {task_id}: {w['reason']}: {w['detail']}{when}")
    return 0
