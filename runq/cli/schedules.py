"""``runq schedules``: list the periodic tasks (``runq schedules``), ``add``, ``pause``, ``resume``, ``rm``, ``run``.

Each subcommand is one call of the ``SyncClient`` (docs/schedules.md has the rules); the list shows each
schedule's next fire time in local time and from now.
"""

from __future__ import annotations

import json as jsonlib
import re
import time
from typing import Any

import click

from . import output
from .options import RunqCommand, Settings, client, command_group, json_option, log_options, option, server_options

__all__ = ["parse_every", "schedules"]

_UNITS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_EVERY_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(s|m|min|h|d)?\s*\Z")


def parse_every(text: str) -> float:
    """``90`` or ``90s``, ``5m`` (or ``5min``), ``2h``, ``1d``: seconds.

    Raises:
        ValueError: not a number with one of those units.
    """
    m = _EVERY_RE.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not an interval: a number of seconds, or with a unit (90s, 5m, 2h, 1d)")
    return float(m.group(1)) * _UNITS[m.group(2) or ""]


def _every(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_every(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _payload(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return jsonlib.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", ctx, param) from None


def when(s: dict[str, Any]) -> str:
    """``0 9 * * MON-FRI Europe/Berlin`` or ``every 1 min``."""
    if s.get("cron") is not None:
        return f"{s['cron']} {s['tz']}"
    return f"every {output.duration(float(s['every']))}"


@command_group("list and manage periodic tasks (schedules)")
@server_options
@json_option
@log_options
@click.pass_context
def schedules(ctx: click.Context, json: bool) -> int:
    """List the schedules (periodic tasks): when each fires, its next fire time, its last one. Subcommands add,
    pause, resume, remove (rm) and run one now (docs/schedules.md)."""
    if ctx.invoked_subcommand is not None:
        return 0
    settings: Settings = ctx.obj
    with client(settings) as c:
        found = c.schedules()
    output.show(found, json, "runq schedules: no schedules (runq schedules add, or schedule= on a task)",
                _print_schedules)
    return 0


def _print_schedules(found: list[dict[str, Any]]) -> None:
    now = time.time()
    output.print_table(
        ["NAME", "TYPE", "WHEN", "NEXT FIRE", "LAST FIRE", "MISSED"],
        [(s["name"], s["type"], when(s),
          "paused" if s["paused"] else ("never" if s["next_fire"] is None else output.human_time(s["next_fire"], now)),
          "-" if s["last_fire"] is None else output.ago(s["last_fire"], now), s["missed"]) for s in found],
        styles={3: {"paused": "yellow"}})


@schedules.command(cls=RunqCommand, short_help="add a schedule (or replace the one of that name)")
@click.argument("name")
@click.argument("type")
@option("--cron", default=None, metavar="EXPR", help="a cron expression: 5 fields (or 6 with seconds first)")
@option("--tz", default="UTC", metavar="ZONE", help="the IANA time zone of --cron (Europe/Berlin)")
@option("--every", default=None, callback=_every, metavar="INTERVAL", help="instead of --cron: 90s, 5m, 2h, 1d")
@option("--payload", default=None, callback=_payload, metavar="JSON", help="the tasks' argument, as JSON")
@option("--missed", type=click.Choice(["skip", "once", "all"]), default="skip",
        help="what fire times missed while the server was down get")
@option("--max-missed", type=int, default=10, help="with --missed all, at most this many")
@option("--queue", "-q", default=None, help="the tasks' queue (default: the type's, else default)")
@option("--priority", type=int, default=None, help="the tasks' priority")
@option("--timeout", type=float, default=None, help="seconds an attempt may run")
@option("--retries", type=int, default=None, help="retries after a failed attempt")
@option("--paused", is_flag=True, help="add it paused")
@server_options
@json_option
@log_options
@click.pass_obj
def add(settings: Settings, name: str, type: str, cron: str | None, tz: str, every: float | None, payload: Any,
        missed: str, max_missed: int, queue: str | None, priority: int | None, timeout: float | None,
        retries: int | None, paused: bool, json: bool) -> int:
    """Add schedule NAME, enqueuing a task of TYPE at each fire time: --cron "0 9 * * MON-FRI" --tz
    Europe/Berlin, or --every 60s. Adding a name again replaces it (the same timing keeps its next fire time)."""
    if (cron is None) == (every is None):
        raise click.UsageError("give exactly one of --cron and --every")
    with client(settings) as c:
        s = c.add_schedule(name, type, payload, cron=cron, tz=tz, every=every, missed=missed, max_missed=max_missed,
                           queue=queue, priority=priority, timeout=timeout, retries=retries, paused=paused)
    if json:
        output.print_json(s)
    else:
        nxt = "paused" if s["next_fire"] is None else f"next fire {output.human_time(s['next_fire'], time.time())}"
        click.echo(f"schedule {s['name']} added ({when(s)}): {nxt}")
    return 0


def _one(verb: str, short_help: str) -> Any:
    @schedules.command(verb, cls=RunqCommand, short_help=short_help)
    @click.argument("name")
    @server_options
    @json_option
    @log_options
    @click.pass_obj
    def cmd(settings: Settings, name: str, json: bool) -> int:
        with client(settings) as c:
            if verb == "rm":
                c.remove_schedule(name)
                result: Any = {"name": name, "removed": True}
                text = f"schedule {name} removed"
            elif verb == "run":
                tid = c.run_schedule_now(name)
                result = {"name": name, "task_id": tid}
                text = f"schedule {name} ran: task {tid} enqueued"
            else:
                result = c.pause_schedule(name) if verb == "pause" else c.resume_schedule(name)
                nxt = result["next_fire"]
                text = f"schedule {name} {verb}d" + (
                    f": next fire {output.human_time(nxt, time.time())}" if nxt is not None else "")
        if json:
            output.print_json(result)
        else:
            click.echo(text)
        return 0

    cmd.help = f"{short_help[0].upper()}{short_help[1:]}: schedule NAME (see `runq schedules`)."
    return cmd


pause = _one("pause", "stop a schedule firing")
resume = _one("resume", "fire a paused schedule again, from the next fire time after now")
rm = _one("rm", "remove a schedule (the tasks it enqueued stay)")
run = _one("run", "enqueue a schedule's task now, once (its fire times do not move)")

