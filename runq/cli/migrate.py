"""``runq migrate``: copy a runq database to another store (SQLite to PostgreSQL and back), counts verified."""

from __future__ import annotations

import click

from . import output
from .options import CommandError, Settings, command, json_option, log_options, option

__all__ = ["migrate"]


@command("copy a database to another store (SQLite <-> PostgreSQL), counts verified")
@option("--from", "source", envvar="RUNQ_MIGRATE_FROM", required=True, metavar="FILE|URL",
        help="the database to copy: a SQLite file or a postgresql://user@host/dbname URL (no server may run on it)")
@option("--to", "target", envvar="RUNQ_MIGRATE_TO", required=True, metavar="FILE|URL",
        help="where to copy it: a SQLite file (created if missing) or a postgresql:// URL (its tables are created)")
@option("--replace", is_flag=True, help="empty a target that holds rows first (without it, such a target is refused)")
@option("--batch", type=click.IntRange(1, 1_000_000), default=5000, show_default=True,
        help="rows read and written at a time")
@json_option
@log_options
@click.pass_obj
def migrate(settings: Settings, source: str, target: str, replace: bool, batch: int, json: bool) -> int:
    """Copy every table of the runq database --from into --to: tasks, events, idempotency records, queues,
    limits, breakers, server events, schedules.

    The copy is one transaction on the target: all of it or nothing. It refuses a database that a server
    holds, and a target that holds rows unless --replace. Every table's rows are counted on both ends; the
    counts are printed, and if any differ the copy is rolled back and the exit status is 1.
    """
    from ..app.store.transfer import CopyMismatch, CopyReport, copy_database

    def show(report: CopyReport) -> None:
        if json:
            output.print_json(report.as_dict())
            return
        output.print_table(["table", "source rows", "target rows", ""],
                           [(t.table, f"{t.source:,}", f"{t.target:,}", "ok" if t.ok else "DIFFERS")
                            for t in report.tables], right=(1, 2))

    try:
        report = copy_database(source, target, replace=replace, batch_rows=batch)
    except CopyMismatch as exc:
        show(exc.report)
        raise CommandError(str(exc)) from None
    show(report)
    if not json:
        replaced = f", {report.replaced:,} rows it held replaced" if report.replaced else ""
        click.echo(f"copied {report.source} -> {report.target}: {len(report.tables)} tables, {report.rows:,} rows "
                   f"in {report.seconds:.1f} s{replaced}; counts verified")
    return 0
