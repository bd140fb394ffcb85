"""The ``runq`` command: ``main(argv)`` and the click group, with its commands by area.

Layout: ``options.py`` (global options, environment variables, exit codes, errors), ``output.py`` (tables,
views, human times, JSON), and one module per area: ``serve.py`` (serve, demo), ``worker.py`` (worker),
``tasks.py`` (enqueue, status, wait, cancel, retry, events, tasks), ``queues.py`` (pause, resume, queues,
workers, types, drain), ``schedules.py`` (schedules and its subcommands), ``dead.py`` (the dead-letter queue),
``tui.py`` (tui), ``migrate.py`` (migrate). docs/cli.md is the user's reference.
"""

from __future__ import annotations

import click

from .. import __version__
from .dead import dead
from .limits import breakers, limits, why
from .login import login, logout
from .migrate import migrate
from .options import (
    CONTEXT_SETTINGS,
    EXIT_INTERRUPTED,
    RunqGroup,
    Settings,
    log_options,
    server_options,
)
from .queues import drain, pause, queues, resume, types, workers
from .schedules import schedules
from .serve import demo, serve
from .tasks import cancel, enqueue, events, retry, status, tasks, wait
from .tui import tui
from .users import audit, tokens, users
from .worker import load_worker, worker

__all__ = ["cli", "load_worker", "main"]


@click.group(cls=RunqGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", "-V", prog_name="runq", message="%(prog)s %(version)s",
                      allow_from_autoenv=False)
@server_options
@log_options
def cli() -> None:
    """runq: a durable task queue in one process.

    Options work before or after the command name, and every option also reads an environment variable
    (shown with each option; the rule: RUNQ_<COMMAND>_<OPTION>, e.g. RUNQ_WORKER_CONCURRENCY). Commands that
    print data print it for people, or as JSON with --json. docs/cli.md has the details.
    """


for _command in (serve, worker, enqueue, status, wait, cancel, retry, events, tasks, pause, resume, queues, workers,
                 types, drain, tui, demo):
    cli.add_command(_command)
for _command in (limits, breakers, why):  # (limits and breakers: docs/limits.md)
    cli.add_command(_command)
cli.add_command(schedules)  # (periodic tasks: docs/schedules.md)
cli.add_command(migrate)  # (copy a database to another store: docs/postgres.md)
cli.add_command(dead)  # (the dead-letter queue: docs/dead-letters.md)
for _command in (users, tokens, audit, login, logout):  # (users, roles, API tokens, the audit log: docs/security.md)
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Run the ``runq`` command with ``argv`` (default ``sys.argv[1:]``); return its exit status.

    0 ok, 1 a runtime error (one line ``runq <command>: ...``), 2 a usage error, 3 cannot start (worker) or
    refused (``enqueue --strict``), 130 interrupted.
    """
    try:
        rc = cli.main(args=argv, prog_name="runq", standalone_mode=False, obj=Settings())
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        return EXIT_INTERRUPTED
    return int(rc or 0)
