"""``runq worker TARGET``: load a ``runq.Worker`` (or task definitions) and run it, in this process or in
several under a supervisor (``--processes``, ``--reload``). docs/workers.md is the user's guide."""

from __future__ import annotations

import os
import pkgutil
import sys
from typing import Any

import click

from .options import EXIT_CANNOT_START, CommandError, Settings, command, log_options, option, server_options

__all__ = ["load_worker", "worker"]

#: Options that make a supervisor: its children must not read them from the environment they inherit.
_SUPERVISOR_ENV = ("RUNQ_WORKER_PROCESSES", "RUNQ_WORKER_RELOAD", "RUNQ_WORKER_RELOAD_DIR")


def load_worker(target: str) -> Any:
    """The ``Worker`` that ``target`` names (the current folder is put on ``sys.path``).

    ``module:attr`` names a ``Worker``, a task definition or a list of them (``attr`` may be dotted); a
    bare ``module`` is its one ``Worker``, else a worker of every task definition it holds. The name is
    resolved by ``pkgutil.resolve_name``.

    Raises:
        CommandError: with one line saying what is wrong (exit status 3: starting again would not help).
        Exception: whatever the user's module raised while importing (its traceback says where).
    """
    from ..protocol.tasks import TaskDef, tasks_in
    from ..protocol.worker import Worker

    module_name, _, attr = target.partition(":")
    obj = _resolve(target, module_name, attr)
    if isinstance(obj, Worker):
        return obj
    if isinstance(obj, TaskDef):
        return Worker(tasks=[obj])
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(t, TaskDef) for t in obj):
        return Worker(tasks=obj)
    if attr:
        raise CommandError(f"{target} is a {type(obj).__name__}, not a runq.Worker or task definition",
                           EXIT_CANNOT_START)
    workers = {id(w): w for w in vars(obj).values() if isinstance(w, Worker)}
    if len(workers) == 1:
        return next(iter(workers.values()))
    if len(workers) > 1:
        raise CommandError(f"{module_name!r} holds {len(workers)} runq.Worker objects: name one ({module_name}:NAME)",
                           EXIT_CANNOT_START)
    tasks = tasks_in(obj)
    if not tasks:
        raise CommandError(f"{module_name!r} holds no runq.Worker and no task definition (@runq.task)",
                           EXIT_CANNOT_START)
    return Worker(tasks=tasks)


def _resolve(target: str, module_name: str, attr: str) -> Any:
    """``module_name``, or its attribute ``attr``, through ``pkgutil.resolve_name``.

    A bare name is always a module (``resolve_name("a.b")`` would try ``a.b`` as an attribute of ``a`` when
    ``a.b`` fails to import, hiding why it failed): it is resolved as ``"a.b:"``.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return pkgutil.resolve_name(target if attr else module_name + ":")
    except ValueError:
        if module_name.endswith(".py") or "/" in module_name:  # a file path: say which module it is
            dotted = module_name.removesuffix(".py").strip("./").replace("/", ".")
            raise CommandError(f"{target!r} is a file path; give its module: runq worker {dotted}",
                               EXIT_CANNOT_START) from None
        raise CommandError(f"{target!r} is not module:attr or module (for example myapp.tasks:worker, "
                           "or myapp.tasks)", EXIT_CANNOT_START) from None
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise  # a module that the target's module imports is missing: its traceback says where
        raise CommandError(f"no module named {exc.name!r} (from {target!r}; {_module_hint(exc.name)})",
                           EXIT_CANNOT_START) from None
    except AttributeError:
        if module_name not in sys.modules:
            raise  # (raised while the module was imported: the user's code, with its traceback)
        raise CommandError(f"{module_name!r} has no attribute {attr!r} (from {target!r}){_tasks_hint(module_name)}",
                           EXIT_CANNOT_START) from None


def _module_hint(name: str) -> str:
    """``did you mean 'myapp.tasks'?`` for a module beside the missing one with a close name, else where to run."""
    import difflib
    import importlib.util

    parent, _, leaf = name.rpartition(".")
    try:
        spec = importlib.util.find_spec(parent) if parent else None
    except (ImportError, ValueError):
        spec = None
    paths = list(spec.submodule_search_locations or []) if spec is not None else [os.getcwd()]
    siblings = [m.name for m in pkgutil.iter_modules(paths)]
    close = difflib.get_close_matches(leaf, siblings, n=1)
    if close:
        return f"did you mean {'.'.join(filter(None, [parent, close[0]]))!r}?"
    return "run it from the folder that holds it, or set PYTHONPATH"


def _tasks_hint(module_name: str) -> str:
    """``; it holds the task definitions a, b: runq worker MODULE runs them`` when it does."""
    from ..protocol.tasks import tasks_in

    names = [t.type for t in tasks_in(sys.modules[module_name])]
    if not names:
        return ""
    return f"; it holds the task definitions {', '.join(names[:8])}: `runq worker {module_name}` runs them"


def _labels(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, str] | None:
    if not value:
        return None
    from ..protocol.errors import ProtocolError
    from ..protocol.messages import check_labels

    pairs = [v.partition("=") for v in value]
    if not all(sep for _, sep, _ in pairs):
        raise click.BadParameter(f"each label is NAME=VALUE (region=eu), got {list(value)!r}", ctx, param)
    try:
        return check_labels({k: v for k, _, v in pairs}, "labels")
    except ProtocolError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _queue_names(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    queues = [q.strip() for q in value.split(",") if q.strip()]
    if not queues:
        raise click.BadParameter(f"needs at least one queue name, got {value!r}", ctx, param)
    return queues


@command("run a worker: runq worker module[:attr] (docs/workers.md)")
@click.argument("target")
@server_options
@option("--concurrency", "-c", type=click.IntRange(min=1), default=None, show_default="the Worker's",
        help="tasks run at once, per process (as many more are prefetched)")
@option("--queues", "-q", default=None, callback=_queue_names, metavar="NAMES", show_default="the Worker's",
        help="comma-separated queue names")
@option("--label", "labels", envvar="RUNQ_WORKER_LABEL", multiple=True, callback=_labels, metavar="NAME=VALUE",
        show_default="the Worker's",
        help="a label it offers for routing (repeatable; from the environment: separated by spaces): a task "
             "that requires labels goes only to a worker that has them all (docs/routing.md)")
@option("--grace", type=float, default=None, metavar="SECONDS", show_default="the Worker's",
        help="seconds running tasks get to finish on SIGTERM")
@option("--backend", type=click.Choice(["asyncio", "trio"]), default="asyncio",
        help="event loop of async handlers (trio for handlers written with trio)")
@option("--processes", "-p", type=click.IntRange(min=1), default=1,
        help="worker processes run by one supervisor that restarts them")
@option("--reload", is_flag=True, help="restart the worker(s) when a .py file changes (development)")
@option("--reload-dir", multiple=True, metavar="DIR", show_default="the current folder",
        help="folder watched by --reload (repeatable; from the environment: separated by spaces)")
@log_options
@click.pass_obj
def worker(settings: Settings, target: str, concurrency: int | None, queues: list[str] | None,
           labels: dict[str, str] | None, grace: float | None, backend: str, processes: int, reload: bool,
           reload_dir: tuple[str, ...]) -> int:
    """Run a worker: TARGET is module:attr naming a runq.Worker or task definitions (myapp.tasks:worker), or
    a module: its Worker, else all its task definitions (myapp.tasks). Run it from the folder that holds
    the module (it is put on sys.path).

    Exit status 3: it cannot start and starting it again would not help (its module does not import, the
    target is not a Worker, the server refused it or is not a runq server).
    """
    from ..protocol.errors import NotRunqServer, TLSError, Unauthorized
    from ..protocol.supervisor import EXIT_DRAINED, stop_with_parent
    from ..protocol.worker import HelloRefused

    if processes > 1 or reload:
        return _supervise(settings, target, concurrency, queues, grace, backend, processes, reload, reload_dir,
                          labels)
    # Exit EXIT_CANNOT_START when starting again cannot help, so that a supervisor stops (or, with --reload,
    # waits for the next change) instead of restarting it in a loop.
    try:
        w = load_worker(target)
    except CommandError:
        raise
    except Exception:  # noqa: BLE001 - the user's module raised while importing (a syntax error after an edit...)
        import traceback

        traceback.print_exc()
        return EXIT_CANNOT_START
    if concurrency is not None:
        w.concurrency = concurrency
        w.prefetch = concurrency
    if queues is not None:
        w.queues = queues
    if grace is not None:
        w.grace = grace
    if labels is not None:
        w.labels = {**w.labels, **labels}
    stop_with_parent(w.stop)  # (under --processes/--reload: stop when the supervisor is gone)
    try:
        w.run_sync(settings.server, token=settings.token, backend=backend, tls=settings.tls_option)
    except (Unauthorized, HelloRefused, NotRunqServer, TLSError) as exc:
        raise CommandError(str(exc), EXIT_CANNOT_START) from None
    return EXIT_DRAINED if w.drained else 0


def _supervise(settings: Settings, target: str, concurrency: int | None, queues: list[str] | None,
               grace: float | None, backend: str, processes: int, reload: bool, reload_dir: tuple[str, ...],
               labels: dict[str, str] | None = None) -> int:
    """``--processes N`` / ``--reload``: run the same ``runq worker`` command in N child processes."""
    import trio

    from ..protocol.supervisor import Supervisor

    child = ["--log-level", settings.log_level, "--log-format", settings.log_format]
    if settings.log_config:
        child += ["--log-config", settings.log_config]
    child += ["worker", target, "--server", settings.server, "--backend", backend]
    env = {k: v for k, v in os.environ.items() if k not in _SUPERVISOR_ENV}  # (a child is one worker)
    if settings.token is not None:
        env["RUNQ_TOKEN"] = settings.token  # (not on the command line, which `ps` shows)
    env["RUNQ_TLS"] = "1" if settings.tls else "0"
    if settings.tls_ca is not None:
        env["RUNQ_TLS_CA"] = settings.tls_ca
    else:
        env.pop("RUNQ_TLS_CA", None)
    for flag, value in (("--concurrency", concurrency), ("--queues", ",".join(queues) if queues else None),
                        ("--grace", grace)):
        if value is not None:
            child += [flag, str(value)]
    for k, v in (labels or {}).items():
        child += ["--label", f"{k}={v}"]
    # without --reload-dir the supervisor watches the current folder (which `runq worker` puts on sys.path:
    # where the module is found), and says so in its first log line
    sup = Supervisor(child, processes, reload=reload, watch=list(reload_dir), grace=grace, env=env)
    return trio.run(sup.run)
