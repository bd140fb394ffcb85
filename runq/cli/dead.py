"""The dead-letter queue from the command line: ``runq dead`` (list), ``runq dead retry`` and ``runq dead delete``
(docs/dead-letters.md, docs/cli.md)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click

from . import output
from .options import RunqCommand, Settings, client, command_group, json_option, log_options, option, server_options

__all__ = ["dead", "parse_when"]

_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_when(text: str, now: float | None = None) -> float:
    """A time given on the command line, as a unix time: a duration ago (``90s``, ``30m``, ``2h``, ``7d``), an ISO
    date or date-time (local time unless it names its zone), or unix seconds.

    Raises:
        ValueError: none of those.
    """
    m = _AGO.fullmatch(text.strip())
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ValueError(f"{text!r} is not a time: give a duration ago (30m, 2h, 7d), an ISO date-time "
                         "(2026-11-30T09:00) or unix seconds") from None


class _When(click.ParamType[float]):
    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_when(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


WHEN = _When()


def _filters(f: Callable[..., Any]) -> Callable[..., Any]:
    for deco in reversed((
        option("--queue", default=None, help="only dead tasks of this queue"),
        option("--type", default=None, help="only dead tasks of this type"),
        option("--error", default=None, help="only dead tasks whose error contains this text (letters without case)"),
        option("--since", type=WHEN, default=None, help="only tasks dead since then: 2h (ago), 2026-11-30T09:00, or unix"
                                                        " seconds"),
        option("--until", type=WHEN, default=None, help="only tasks dead before then (as --since)"),
    )):
        f = deco(f)
    return f


def _print_dead(page: list[dict[str, Any]]) -> None:
    now = time.time()
    output.print_table(
        ["ID", "QUEUE", "TYPE", "ATTEMPT", "DEAD", "ERROR"],
        [(t["id"], t["queue"], t["type"], t["attempt"],
          output.ago(t["finished_at"], now) if t.get("finished_at") is not None else None,
          _last_line(t.get("error"))) for t in page], right=[0, 3])


def _last_line(error: str | None) -> str:
    lines = [ln for ln in (error or "").strip().splitlines() if ln.strip()]
    text = lines[-1].strip() if lines else "-"
    return text if len(text) <= 80 else text[:79] + "…"


@command_group("list, retry and delete dead tasks (the dead-letter queue)")
@_filters
@option("--limit", type=click.IntRange(1, 1000), default=50, help="tasks per page")
@option("--cursor", type=int, default=None, help="the next page: the cursor the previous one printed")
@server_options
@json_option
@log_options
@click.pass_context
def dead(ctx: click.Context, queue: str | None, type: str | None, error: str | None, since: float | None,
         until: float | None, limit: int, cursor: int | None, json: bool) -> int:
    """List the dead tasks, newest first, a page at a time, filtered by queue, type, error text and the time they
    died (--json: {"tasks": [...], "cursor": next page or null}). `runq dead retry` and `runq dead delete` act on
    the tasks the same filters select."""
    if ctx.invoked_subcommand is not None:
        return 0
    with client(ctx.ensure_object(Settings)) as c:
        page, next_cursor = c.dead_list(queue=queue, type=type, error=error, since=since, until=until, limit=limit,
                                        cursor=cursor)
    if json:
        output.print_json({"tasks": page, "cursor": next_cursor})
        return 0
    if not page:
        output.note("runq dead: no more dead tasks" if cursor is not None else "runq dead: no dead task matches")
        return 0
    _print_dead(page)
    if next_cursor is not None:
        output.note(f"runq dead: more with --cursor {next_cursor}")
    return 0


def _bulk(settings: Settings, verb: str, filters: dict[str, Any], limit: int, every: bool, json: bool) -> int:
    """Call ``dead_<verb>`` once, or (``every``) until no more match or a call changes nothing new. With ``every``,
    only tasks dead before the first call are taken (``until``): a retried task that dies again is not retried again
    by the same command, which would go on as long as it fails."""
    ids: list[int] = []
    skipped: list[int] = []
    more = False
    if every:
        now = time.time()
        filters = {**filters, "until": now if filters["until"] is None else min(filters["until"], now)}
    with client(settings) as c:
        call = c.dead_retry if verb == "retry" else c.dead_delete
        while True:
            out = call(limit=limit, **filters)
            new = [i for i in out["ids"] if i not in ids]
            ids += new
            skipped = out["skipped"]
            more = out["more"]
            if not (every and more and new):
                break
    if json:
        output.print_json({"ids": ids, "skipped": skipped, "more": more})
        return 0
    done = "retried" if verb == "retry" else "deleted"
    click.echo(f"{len(ids)} dead task(s) {done}" + (f": {', '.join(map(str, ids[:20]))}" if ids else "")
               + (" ..." if len(ids) > 20 else ""))
    if skipped:
        output.note(f"runq dead {verb}: skipped {', '.join(map(str, skipped))} (retried meanwhile, or a unique key "
                    "held by a live task)")
    if more:
        output.note(f"runq dead {verb}: more dead tasks match: run it again (or with --all)")
    return 0


@dead.command("retry", cls=RunqCommand, short_help="retry the dead tasks the filters select")
@_filters
@option("--limit", type=click.IntRange(1, 1000), default=100, help="at most this many per call (the oldest first)")
@option("--all", "every", is_flag=True, default=False, help="call again until no more dead task matches")
@server_options
@json_option
@log_options
@click.pass_obj
def dead_retry(settings: Settings, queue: str | None, type: str | None, error: str | None, since: float | None,
               until: float | None, limit: int, every: bool, json: bool) -> int:
    """Retry the dead tasks the filters select (every dead task without one), at most --limit of them, the
    oldest first: each goes back to ready with a fresh set of retries. One commit per call, and a server event
    naming who did it."""
    return _bulk(settings, "retry", {"queue": queue, "type": type, "error": error, "since": since, "until": until},
                 limit, every, json)


@dead.command("delete", cls=RunqCommand, short_help="delete the dead tasks the filters select")
@_filters
@option("--limit", type=click.IntRange(1, 1000), default=100, help="at most this many per call (the oldest first)")
@option("--all", "every", is_flag=True, default=False, help="call again until no more dead task matches")
@option("--yes", "-y", is_flag=True, default=False, help="do not ask first when no filter is given")
@server_options
@json_option
@log_options
@click.pass_obj
def dead_delete(settings: Settings, queue: str | None, type: str | None, error: str | None, since: float | None,
                until: float | None, limit: int, every: bool, yes: bool, json: bool) -> int:
    """Delete the dead tasks the filters select, at most --limit of them, the oldest first: each becomes
    cancelled (its timeline kept; pruned later with the other finished tasks). Without a filter it asks first
    (--yes does not)."""
    filters = {"queue": queue, "type": type, "error": error, "since": since, "until": until}
    if not yes and all(v is None for v in filters.values()):
        click.confirm("no filter given: delete dead tasks of every queue and type?", abort=True, err=True)
    return _bulk(settings, "delete", filters, limit, every, json)
