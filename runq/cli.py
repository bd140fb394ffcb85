"""The ``runq`` command: serve, worker, client commands and the demo."""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import os
import signal
import sqlite3
import sys
from datetime import datetime
from typing import Any

__all__ = ["build_parser", "main"]

DEFAULT_SERVER = "127.0.0.1:7700"
DEFAULT_HTTP_PORT = 7701


def _server_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", "-s", default=os.environ.get("RUNQ_SERVER", DEFAULT_SERVER),
                   help="HOST:PORT of the runq server (default %(default)s, or RUNQ_SERVER)")
    p.add_argument("--token", default=None, help="shared secret (default: RUNQ_TOKEN)")


def _log_args(p: argparse.ArgumentParser, defaults: bool) -> None:
    """The logging options; on a subcommand too (``runq worker app:w --log-level DEBUG``), where they default
    to nothing so that the top-level value (or its environment variable) stands unless given again."""

    def default(value: str | None) -> str | None:
        return value if defaults else argparse.SUPPRESS

    p.add_argument("--log-level", default=default(os.environ.get("RUNQ_LOG_LEVEL", "INFO")),
                   help="DEBUG, INFO, WARNING, ERROR (default INFO, or RUNQ_LOG_LEVEL)")
    p.add_argument("--log-format", choices=["text", "json"], default=default(os.environ.get("RUNQ_LOG_FORMAT", "text")),
                   help="text lines or one JSON object per line, on stderr (default text, or RUNQ_LOG_FORMAT)")
    p.add_argument("--log-config", metavar="FILE", default=default(os.environ.get("RUNQ_LOG_CONFIG")),
                   help="a JSON file in logging.config.dictConfig form, replacing --log-level and --log-format (or RUNQ_LOG_CONFIG)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runq", description="runq: a durable task queue in one process")
    _log_args(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the server (TCP protocol + SQLite database)")
    p.add_argument("--db", default=os.environ.get("RUNQ_DB", "runq.db"), help="SQLite file (default %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=7700, help="TCP port (default %(default)s; 0 picks one)")
    p.add_argument("--http-port", type=int, default=None,
                   help="HTTP API port (default 7701 or RUNQ_HTTP_PORT; a free one when --port is 0; 0 disables it)")
    p.add_argument("--token", default=None, help="shared secret; required to listen beyond loopback (or RUNQ_TOKEN)")
    p.add_argument("--synchronous", choices=["NORMAL", "FULL"], default="NORMAL",
                   help="NORMAL survives a process crash, FULL survives power loss (default %(default)s)")
    p.add_argument("--lease-timeout", type=float, default=10.0, help="seconds of worker silence before its tasks return")
    p.add_argument("--retention", type=float, default=7 * 86400, help="seconds finished tasks are kept (default 7 days)")
    p.add_argument("--max-subscribers", type=int, default=256,
                   help="live event streams (TCP subscribe and HTTP) served at once (default %(default)s)")
    p.add_argument("--port-file", default=None, help="write the bound port to this file once serving")

    p = sub.add_parser("worker", help="run a worker: runq worker module[:attr] (see docs/workers.md)")
    p.add_argument("target", help="module:attr naming a runq.Worker or task definitions (myapp.tasks:worker), or a "
                                  "module: its Worker, else all its task definitions (myapp.tasks)")
    _server_arg(p)
    p.add_argument("--concurrency", "-c", type=int, default=None, help="tasks run at once (per process)")
    p.add_argument("--queues", "-q", default=None, help="comma-separated queue names")
    p.add_argument("--grace", type=float, default=None, help="seconds running tasks get to finish on SIGTERM")
    p.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio",
                   help="event loop of async handlers (default %(default)s; trio for handlers written with trio)")
    p.add_argument("--processes", "-p", type=int, default=1,
                   help="worker processes run by one supervisor that restarts them (default %(default)s)")
    p.add_argument("--reload", action="store_true",
                   help="restart the worker(s) when a .py file changes (development)")
    p.add_argument("--reload-dir", action="append", default=None, metavar="DIR",
                   help="folder watched by --reload (repeatable; default the current folder)")
    _log_args(p, defaults=False)

    p = sub.add_parser("enqueue", help="enqueue one task and print its id")
    p.add_argument("type")
    _server_arg(p)
    p.add_argument("--payload", default="null", help="JSON payload (default null)")
    p.add_argument("--queue", default=None)
    p.add_argument("--priority", type=int, default=None)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--delay", type=float, default=None, help="seconds before it may run")
    g.add_argument("--at", default=None, help="ISO time before which it may not run (naive = local time)")
    p.add_argument("--timeout", type=float, default=None)
    p.add_argument("--retries", type=int, default=None)
    p.add_argument("--key", default=None, help="unique key")
    p.add_argument("--strict", action="store_true",
                   help="refuse (exit 3) when no connected worker handles this task type (default: a warning)")

    for name, text in (("status", "print a task as JSON"), ("cancel", "cancel a task"),
                       ("retry", "retry a dead or cancelled task"), ("events", "print a task's timeline"),
                       ("wait", "wait for a task to finish and print it")):
        p = sub.add_parser(name, help=text)
        p.add_argument("id", type=int)
        _server_arg(p)
        if name == "wait":
            p.add_argument("--timeout", type=float, default=None)

    p = sub.add_parser("tasks", help="list tasks, newest first")
    _server_arg(p)
    p.add_argument("--state", default=None)
    p.add_argument("--queue", default=None)
    p.add_argument("--type", default=None)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--cursor", type=int, default=None)

    for name in ("pause", "resume"):
        p = sub.add_parser(name, help=f"{name} a queue")
        p.add_argument("queue")
        _server_arg(p)

    p = sub.add_parser("queues", help="print queue counts")
    _server_arg(p)
    p = sub.add_parser("workers", help="print connected workers")
    _server_arg(p)
    p = sub.add_parser("types", help="print the task types the connected workers handle")
    _server_arg(p)
    p = sub.add_parser("drain", help="ask a worker to finish its running tasks, hand back the rest and leave")
    p.add_argument("worker_id", help="the worker's id (see `runq workers`)")
    _server_arg(p)

    p = sub.add_parser("demo", help="start a server, local workers and sample tasks, and show them flowing")
    p.add_argument("--db", default=None, help="database file (default: a new temporary file)")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tasks", type=int, default=40, help="how many word_count/calculate_statistics tasks")
    p.add_argument("--keep", action="store_true", help="keep running after the demo tasks finished (Ctrl-C stops)")
    p.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT,
                   help="HTTP API port of the demo server (default %(default)s, a free one if taken; 0 disables)")
    p.add_argument("--no-tui", action="store_true",
                   help="print the events instead of opening the dashboard (the default when stdout is not a terminal)")

    p = sub.add_parser("tui", help="the terminal dashboard: follow a server live, or open a database file offline")
    _server_arg(p)
    p.add_argument("--http", default=None, help="base URL of the server's HTTP API, e.g. http://127.0.0.1:7701: "
                   "per-queue totals since the server started are read from it (see docs/tui.md)")
    p.add_argument("--db", default=None, help="open this database file read-only instead (offline mode, no server)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .protocol.logs import configure_logging

    args = build_parser().parse_args(argv)
    try:
        configure_logging(args.log_level, args.log_format, args.log_config)
    except ValueError as exc:
        print(f"runq: {exc}", file=sys.stderr)
        return 2
    try:
        rc = int(_COMMANDS[args.command](args) or 0)
        sys.stdout.flush()  # (here, where a closed pipe is handled below, not at exit)
        return rc
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `runq tasks | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # (else Python complains again when it flushes stdout at exit)
        return 0
    except Exception as exc:
        from .app.store import StoreError
        from .protocol.errors import RunqError

        leaf: BaseException = exc
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]  # (trio's nurseries wrap what a task raised in a group)
        if isinstance(leaf, (RunqError, OSError, StoreError, sqlite3.Error)):
            print(f"runq {args.command}: {leaf}", file=sys.stderr)
            return 1
        raise


# ---------------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    import trio

    from .app.core import CoreConfig
    from .app.server import Server, ServerConfig

    cfg = ServerConfig(db=args.db, host=args.host, port=args.port, http_port=_http_port(args),
                       token=args.token or os.environ.get("RUNQ_TOKEN"), synchronous=args.synchronous,
                       retention=args.retention, max_subscribers=args.max_subscribers,
                       core=CoreConfig(lease_timeout=args.lease_timeout))
    server = Server(cfg)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as sigs:
                port = await nursery.start(server.serve)
                # Everything alive now (imports, the recovered tasks) lives as long as the process: keep it out
                # of the cyclic GC's full collections, which otherwise walk it again and again.
                gc.freeze()
                # The SQLite writer thread releases the GIL inside each statement; with the default 5 ms switch
                # interval it then waits up to 5 ms for the busy loop thread to hand it back. 1 ms lets the two
                # threads overlap (bench.throughput enqueue_batch: server CPU 91% -> 100%, ~150k -> ~161k/s).
                sys.setswitchinterval(0.001)
                if args.port_file:
                    tmp = args.port_file + ".tmp"
                    await trio.Path(tmp).write_text(str(port))
                    os.replace(tmp, args.port_file)
                http = f", HTTP API on {_http_url(cfg.host, server.http_port)}" if server.http_port is not None else ""
                print(f"runq serving on {cfg.host}:{port}{http} (database {cfg.db})", file=sys.stderr, flush=True)
                async for sig in sigs:
                    logging.getLogger("runq.server").info("signal %d: stopping", sig)
                    server.stopping.set()
                    break

    trio.run(run)
    return 0


def _http_port(args: argparse.Namespace) -> int | None:
    """The HTTP port to ask the server for (``ServerConfig.http_port``: 0 picks a free one, None is off)."""
    if args.http_port is not None:
        port = int(args.http_port)
    elif os.environ.get("RUNQ_HTTP_PORT"):
        port = int(os.environ["RUNQ_HTTP_PORT"])
    elif args.port == 0:
        return 0  # a throwaway TCP port (tests, benchmarks, the demo): a throwaway HTTP port too, no clash
    else:
        port = DEFAULT_HTTP_PORT
    return port or None


def _http_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# ---------------------------------------------------------------------- worker
def load_worker(target: str) -> Any:
    """The ``Worker`` that ``target`` names (cwd on sys.path).

    ``module:attr`` names a ``Worker``, a task definition or a list of them; a bare ``module`` is its one
    ``Worker``, else a worker of every task definition it holds.

    Raises:
        SystemExit: with one line saying what is wrong.
    """
    from .protocol.tasks import TaskDef, tasks_in
    from .protocol.worker import Worker

    module_name, _, attr = target.partition(":")
    obj = _import_target(target, module_name, attr)
    if isinstance(obj, Worker):
        return obj
    if isinstance(obj, TaskDef):
        return Worker(tasks=[obj])
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(t, TaskDef) for t in obj):
        return Worker(tasks=obj)
    if attr:
        raise SystemExit(f"runq worker: {target} is a {type(obj).__name__}, not a runq.Worker or task definition")
    workers = {id(w): w for w in vars(obj).values() if isinstance(w, Worker)}
    if len(workers) == 1:
        return next(iter(workers.values()))
    if len(workers) > 1:
        raise SystemExit(f"runq worker: {module_name!r} holds {len(workers)} runq.Worker objects: name one "
                         f"({module_name}:NAME)")
    tasks = tasks_in(obj)
    if not tasks:
        raise SystemExit(f"runq worker: {module_name!r} holds no runq.Worker and no task definition (@runq.task)")
    return Worker(tasks=tasks)


def _import_target(target: str, module_name: str, attr: str) -> Any:
    """Import ``module_name`` and return it, or its attribute ``attr`` (dotted) when given."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise  # a module that the target's module imports is missing: its traceback says where
        raise SystemExit(f"runq worker: no module named {exc.name!r} (from {target!r}; "
                         f"run it from the folder that holds it, or set PYTHONPATH)") from None
    for part in attr.split(".") if attr else ():
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SystemExit(f"runq worker: {module_name!r} has no attribute {attr!r} (from {target!r})") from None
    return obj


def cmd_worker(args: argparse.Namespace) -> int:
    from .protocol.errors import Unauthorized
    from .protocol.supervisor import EXIT_CANNOT_START, EXIT_DRAINED, stop_with_parent
    from .protocol.worker import HelloRefused

    if args.processes < 1:
        raise SystemExit(f"runq worker: --processes must be 1 or more, not {args.processes}")
    if args.concurrency is not None and args.concurrency < 1:
        raise SystemExit(f"runq worker: --concurrency must be 1 or more, not {args.concurrency}")
    if args.processes > 1 or args.reload:
        return _supervise(args)
    # Exit EXIT_CANNOT_START when starting again cannot help, so that a supervisor stops (or, with --reload,
    # waits for the next change) instead of restarting it in a loop.
    try:
        worker = load_worker(args.target)
    except SystemExit as exc:
        print(exc.code, file=sys.stderr)
        return EXIT_CANNOT_START
    except Exception:  # noqa: BLE001 - the user's module raised while importing (a syntax error after an edit...)
        import traceback

        traceback.print_exc()
        return EXIT_CANNOT_START
    if args.concurrency is not None:
        worker.concurrency = args.concurrency
        worker.prefetch = args.concurrency
    if args.queues is not None:
        queues = [q.strip() for q in args.queues.split(",") if q.strip()]
        if not queues:
            raise SystemExit(f"runq worker: --queues needs at least one queue name, got {args.queues!r}")
        worker.queues = queues
    if args.grace is not None:
        worker.grace = args.grace
    stop_with_parent(worker.stop)  # (under --processes/--reload: stop when the supervisor is gone)
    try:
        worker.run_sync(args.server, token=args.token, backend=args.backend)
    except (Unauthorized, HelloRefused) as exc:
        print(f"runq worker: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    return EXIT_DRAINED if worker.drained else 0


def _supervise(args: argparse.Namespace) -> int:
    """``--processes N`` / ``--reload``: run the same ``runq worker`` command in N child processes."""
    import trio

    from .protocol.supervisor import Supervisor

    child = ["--log-level", str(args.log_level), "--log-format", str(args.log_format)]
    if args.log_config:
        child += ["--log-config", str(args.log_config)]
    child += ["worker", args.target, "--server", args.server, "--backend", args.backend]
    env = dict(os.environ)
    if args.token is not None:
        env["RUNQ_TOKEN"] = args.token  # (not on the command line, which `ps` shows)
    for flag, value in (("--concurrency", args.concurrency), ("--queues", args.queues), ("--grace", args.grace)):
        if value is not None:
            child += [flag, str(value)]
    if args.reload and args.reload_dir is None:
        # the module's own folder is where its code changes (the current folder, which `runq worker` puts on
        # sys.path, is where it is found)
        args.reload_dir = [os.getcwd()]
    sup = Supervisor(child, args.processes, reload=args.reload, watch=args.reload_dir or (), grace=args.grace,
                     env=env)
    return trio.run(sup.run)


# ---------------------------------------------------------------------- client commands
def _client(args: argparse.Namespace) -> Any:
    from .protocol.sync_client import SyncClient

    return SyncClient(args.server, token=args.token)


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=_json_default, ensure_ascii=False))


def _json_default(o: Any) -> Any:
    if isinstance(o, bytes):
        return o.hex()
    return str(o)


def cmd_enqueue(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        print(f"runq enqueue: --payload is not JSON: {exc}", file=sys.stderr)
        return 2
    run_at = None
    if args.at:
        try:
            run_at = datetime.fromisoformat(args.at).timestamp()
        except ValueError as exc:
            print(f"runq enqueue: --at is not an ISO time: {exc}", file=sys.stderr)
            return 2
    with _client(args) as c:
        known = [t["type"] for t in c.task_types()]
        if args.type not in known:
            hint = _type_hint(args.type, known)
            if args.strict:
                print(f"runq enqueue: no connected worker handles task type {args.type!r}{hint}; nothing enqueued "
                      "(--strict)", file=sys.stderr)
                return 3
            print(f"runq enqueue: warning: no connected worker handles task type {args.type!r}{hint}; the task "
                  "waits until one does (--strict refuses instead)", file=sys.stderr)
        tid = c.enqueue(args.type, payload, queue=args.queue, priority=args.priority, delay=args.delay,
                        run_at=run_at, timeout=args.timeout, retries=args.retries, key=args.key)
    print(tid)
    return 0


def _type_hint(name: str, known: list[str]) -> str:
    """``; did you mean ...?`` for a task type close to a known one, else the known ones (if few)."""
    import difflib

    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    if known and len(known) <= 10:
        return f" (connected workers handle: {', '.join(known)})"
    return " (no worker is connected)" if not known else ""


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as c:
        _print(c.get(args.id))
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    with _client(args) as c:
        task = c.wait(args.id, args.timeout)
    _print(task)
    return 0 if task["state"] == "succeeded" else 1


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as c:
        t = c.cancel(args.id)
    print(f"task {t['id']} {t['state']}")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    with _client(args) as c:
        t = c.retry(args.id)
    print(f"task {t['id']} {t['state']}")
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    with _client(args) as c:
        events = c.events(args.id)
    for e in events:
        at = datetime.fromtimestamp(e["at"]).isoformat(timespec="milliseconds")
        who = f" worker={e['worker']}" if e.get("worker") else ""
        detail = f"  {e['detail']}" if e.get("detail") else ""
        print(f"{at}  {e['kind']:<16} -> {e['state']:<10} attempt={e['attempt']}{who}{detail}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    with _client(args) as c:
        tasks, cursor = c.list_tasks(state=args.state, queue=args.queue, type=args.type, limit=args.limit,
                                     cursor=args.cursor)
    for t in tasks:
        print(f"{t['id']:>8}  {t['state']:<10} {t['queue']:<12} {t['type']:<24} attempt={t['attempt']}")
    if cursor is not None:
        print(f"(more: --cursor {cursor})")
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    with _client(args) as c:
        c.pause(args.queue)
    print(f"queue {args.queue} paused")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    with _client(args) as c:
        c.resume(args.queue)
    print(f"queue {args.queue} resumed")
    return 0


def cmd_queues(args: argparse.Namespace) -> int:
    with _client(args) as c:
        _print(c.queues())
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    with _client(args) as c:
        _print(c.workers())
    return 0


def cmd_types(args: argparse.Namespace) -> int:
    with _client(args) as c:
        _print(c.task_types())
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    with _client(args) as c:
        w = c.drain(args.worker_id)
    print(f"worker {w['id']} {w['state']} ({w['in_flight']} task(s) running)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.http_port:
        port = args.http_port if _port_free(args.http_port) else _port_free(0)
        os.environ["RUNQ_HTTP_PORT"] = str(port)  # read by the demo's `runq serve`
        print(f"runq demo: HTTP API on http://127.0.0.1:{port}/api/stats, docs on http://127.0.0.1:{port}/docs",
              flush=True)
    else:
        os.environ["RUNQ_HTTP_PORT"] = "0"

    tui = not args.no_tui and sys.stdout.isatty() and sys.stdin.isatty()
    return run_demo(db=args.db, port=args.port, workers=args.workers, tasks=args.tasks, keep=args.keep, tui=tui)


def _port_free(port: int) -> int:
    """Bind 127.0.0.1:``port`` for a moment; return the port bound (0 when ``port`` is taken)."""
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return 0
        return int(s.getsockname()[1])


def cmd_tui(args: argparse.Namespace) -> int:
    from .tui import run_tui

    return run_tui(server=args.server, token=args.token or os.environ.get("RUNQ_TOKEN"), http=args.http, db=args.db)


_COMMANDS = {
    "serve": cmd_serve, "worker": cmd_worker, "enqueue": cmd_enqueue, "status": cmd_status, "wait": cmd_wait,
    "cancel": cmd_cancel, "retry": cmd_retry, "events": cmd_events, "tasks": cmd_tasks, "pause": cmd_pause,
    "resume": cmd_resume, "queues": cmd_queues, "workers": cmd_workers, "types": cmd_types, "drain": cmd_drain,
    "demo": cmd_demo, "tui": cmd_tui,
}

if __name__ == "__main__":
    sys.exit(main())
