"""The plumbing every ``runq`` command shares: global options, environment variables, exit codes, errors.

Theory of operation
-------------------
Global options (``--log-level``, ``--log-format``, ``--log-config``, ``--server``, ``--token``, ``--tls``,
``--tls-ca``) are declared
on the group AND on every command that uses them, so that they work before or after the command name
(``runq --server h:7700 status 7`` and ``runq status 7 --server h:7700``). They are not passed to the
command functions: their callbacks write them into one ``Settings`` object (``ctx.obj``). The group's
copy writes whatever it resolved (command line, environment, default); a command's copy writes only a
value typed on the command line, which therefore wins over the group's (the later on the line wins).

Environment variables: every option reads one. The shared ones have fixed names (``RUNQ_SERVER``,
``RUNQ_TOKEN``, ``RUNQ_TLS``, ``RUNQ_TLS_CA``, ``RUNQ_TLS_CERT``, ``RUNQ_TLS_KEY``, ``RUNQ_DB``, ``RUNQ_HTTP_PORT``, ``RUNQ_LOG_LEVEL``, ``RUNQ_LOG_FORMAT``,
``RUNQ_LOG_CONFIG``); every other option follows click's rule ``RUNQ_<COMMAND>_<OPTION>``
(``RUNQ_WORKER_CONCURRENCY``) through ``auto_envvar_prefix``. ``--help`` shows each one.

Errors (``RunqCommand.invoke``): an error of the queue, of the network or of the database ends the
command with one line ``runq <command>: <what>`` on stderr and exit status 1 (an exception group with
one leaf, as trio's nurseries raise, is read as that leaf); ``CommandError`` carries its own status
(3: cannot start). Usage errors are click's (status 2). Ctrl-C is 130. A closed stdout (``runq tasks |
head -1``) ends the command quietly with 0.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click
from click.core import ParameterSource

__all__ = [
    "CONTEXT_SETTINGS",
    "DEFAULT_SERVER",
    "EXIT_CANNOT_START",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "CommandError",
    "RunqCommand",
    "RunqCommandGroup",
    "RunqGroup",
    "Settings",
    "client",
    "command",
    "command_group",
    "json_option",
    "log_options",
    "option",
    "server_options",
    "tls_options",
    "token_option",
]

DEFAULT_SERVER = "127.0.0.1:7700"

EXIT_ERROR = 1  # a runtime error: one line `runq <command>: ...`
EXIT_USAGE = 2  # a usage error (click's)
EXIT_CANNOT_START = 3  # the worker cannot start and starting it again would not help; enqueue --strict refused
EXIT_INTERRUPTED = 130  # Ctrl-C

CONTEXT_SETTINGS: dict[str, Any] = {
    "auto_envvar_prefix": "RUNQ",  # RUNQ_<COMMAND>_<OPTION> for every option without a name of its own
    "help_option_names": ["-h", "--help"],
    "show_default": True,
    "max_content_width": 110,
}

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Settings:
    """The global options, as resolved for this run (``ctx.obj``)."""

    log_level: str = "INFO"
    log_format: str = "text"
    log_config: str | None = None
    server: str = DEFAULT_SERVER
    token: str | None = None
    tls: bool = False
    tls_ca: str | None = None

    @property
    def tls_option(self) -> bool | str:
        """What the SDK's ``tls=`` gets from ``--tls`` and ``--tls-ca`` (a CA file turns TLS on)."""
        return self.tls_ca or self.tls


class CommandError(click.ClickException):
    """A command cannot go on: ``runq <command>: <message>`` on stderr, exit ``status``."""

    def __init__(self, message: str, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.status = status


def option(*decls: str, **kwargs: Any) -> Callable[[F], F]:
    """``click.option`` that shows its environment variable in ``--help``."""
    kwargs.setdefault("show_envvar", True)
    return click.option(*decls, **kwargs)


def _store(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """Write a global option into the run's ``Settings`` (see the module doc)."""
    assert param.name is not None
    if ctx.parent is None or ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
        setattr(ctx.ensure_object(Settings), param.name, value)


def _global(*decls: str, **kwargs: Any) -> Callable[[F], F]:
    kwargs.setdefault("callback", _store)
    return option(*decls, expose_value=False, **kwargs)


def log_options(f: F) -> F:
    """``--log-level``, ``--log-format``, ``--log-config`` (global: before or after the command)."""
    for decorate in reversed([
        _global("--log-level", envvar="RUNQ_LOG_LEVEL", default="INFO", metavar="LEVEL",
                help="DEBUG, INFO, WARNING, ERROR: the root logger's level"),
        _global("--log-format", envvar="RUNQ_LOG_FORMAT", default="text", type=click.Choice(["text", "json"]),
                help="text lines or one JSON object per line, on stderr"),
        _global("--log-config", envvar="RUNQ_LOG_CONFIG", default=None, metavar="FILE",
                help="a JSON file in logging.config.dictConfig form, replacing --log-level and --log-format"),
    ]):
        f = decorate(f)
    return f


def token_option(help: str = "the server's shared secret") -> Callable[[F], F]:
    """``--token`` (global)."""
    return _global("--token", envvar="RUNQ_TOKEN", default=None, help=help, show_default=False)


def tls_options(f: F) -> F:
    """``--tls`` and ``--tls-ca`` (global): how a client connects to a server with TLS (docs/tls.md)."""
    f = _global("--tls-ca", envvar="RUNQ_TLS_CA", default=None, metavar="FILE",
                type=click.Path(exists=True, dir_okay=False),
                help="connect with TLS, verifying the server's certificate against this CA file (PEM)")(f)
    return _global("--tls", envvar="RUNQ_TLS", is_flag=True, default=False,
                   help="connect with TLS, verifying the server's certificate against the system's CAs")(f)


def server_options(f: F) -> F:
    """``--server``/``-s``, ``--token``, ``--tls`` and ``--tls-ca`` (global: before or after the command)."""
    f = tls_options(f)
    f = token_option()(f)
    return _global("--server", "-s", envvar="RUNQ_SERVER", default=DEFAULT_SERVER, metavar="HOST:PORT",
                   help="the runq server's TCP address; several comma-separated are tried in order")(f)


def json_option(f: F) -> F:
    """``--json``: print the data as JSON (for scripts) instead of the human view."""
    return option("--json", is_flag=True, help="print JSON (for scripts) instead of the human view")(f)


def command(short_help: str) -> Callable[[Callable[..., Any]], RunqCommand]:
    """``click.command`` for a ``RunqCommand`` (``short_help``: its line in ``runq --help``)."""
    return click.command(cls=RunqCommand, short_help=short_help)


def client(settings: Settings) -> Any:
    """A ``SyncClient`` on ``--server`` with ``--token``, or the token of a ``runq login`` (login.py)."""
    from ..protocol.sync_client import SyncClient
    from .login import resolve_token

    return SyncClient(settings.server, token=resolve_token(settings), tls=settings.tls_option)


class RunqGroup(click.Group):
    """The ``runq`` group: commands listed in the order they were added (by area), not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


class RunqCommand(click.Command):
    """A ``runq`` command: configures logging once its options are parsed, and turns errors into one line
    and an exit status (see the module doc)."""

    def invoke(self, ctx: click.Context) -> Any:
        from ..protocol.logs import configure_logging

        settings = ctx.ensure_object(Settings)
        try:
            configure_logging(settings.log_level, settings.log_format, settings.log_config)
        except ValueError as exc:
            raise click.UsageError(str(exc), ctx) from None
        server = next((p for p in self.params if p.name == "server"), None)
        if server is not None:  # (checked once resolved: the group's value may be replaced by the command's)
            from ..protocol.address import server_addresses

            try:
                server_addresses(settings.server)
            except ValueError as exc:
                raise click.BadParameter(str(exc), ctx, server) from None
        try:
            rc = super().invoke(ctx)
            sys.stdout.flush()  # (here, where a closed pipe is handled below, not at exit)
            return int(rc or 0)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except click.exceptions.Exit:
            raise
        except CommandError as exc:
            _flush_quietly()
            click.echo(f"runq {self.name}: {exc.message}", err=True)
            return exc.status
        except click.ClickException:
            raise
        except Exception as exc:
            leaf: BaseException = exc
            while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
                leaf = leaf.exceptions[0]  # (trio's nurseries wrap what a task raised in a group)
            if isinstance(leaf, BrokenPipeError):  # `runq tasks | head`: the reader has what it wanted
                _stdout_to_devnull()
                return 0
            if isinstance(leaf, KeyboardInterrupt):
                return EXIT_INTERRUPTED
            if isinstance(leaf, (OSError, sqlite3.Error)) or _is_runq_error(leaf):
                _flush_quietly()
                click.echo(f"runq {self.name}: {leaf}", err=True)
                return EXIT_ERROR
            raise


class RunqCommandGroup(RunqCommand, RunqGroup):
    """A ``runq`` command with subcommands that does something itself when given none (``runq limits`` and
    ``runq schedules`` list); its errors become one line and an exit status, as a ``RunqCommand``'s."""


def command_group(short_help: str) -> Callable[[Callable[..., Any]], RunqCommandGroup]:
    """``@click.group`` for a ``RunqCommandGroup`` (it runs with no subcommand too)."""
    return click.group(cls=RunqCommandGroup, short_help=short_help, invoke_without_command=True)


def _is_runq_error(exc: BaseException) -> bool:
    from ..protocol.errors import RunqError

    return isinstance(exc, RunqError)  # (the store's errors too: runq.app.errors)


def _stdout_to_devnull() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # (else Python complains again when it flushes stdout at exit)
    os.close(devnull)


def _flush_quietly() -> None:
    """Flush what a command printed before its error line (so the two come out in order)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_to_devnull()
