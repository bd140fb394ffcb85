"""Tracebacks of failed handlers as their authors need them: starting at their own code.

A handler's exception travels up through the worker SDK (runq.protocol), anyio, the event loop (trio or
asyncio, with outcome and sniffio) and, for a plain-function handler, the thread hand-off. Printed as is,
its traceback opened with nine such frames and the user's frame came last. ``format_failure`` drops
the frames of those packages from every exception of the chain (``raise ... from`` and the implicit
``During handling ...`` context are kept, and so are the members of an exception group), so what is
stored as the task's ``error`` and logged is the user's code and the libraries it called.

``loop_hint`` recognises an async handler written for the other event loop (an asyncio library under
``--backend trio``, trio code under asyncio) and says which flag fixes it: the bare errors
(``RuntimeError: no running event loop``, ``must be called from async context``) do not.
"""

from __future__ import annotations

import importlib.util
import os
import traceback

__all__ = ["format_failure", "internal_dirs", "loop_hint"]


def _package_dir(name: str) -> str | None:
    # find_spec, not import: a worker on asyncio never imports trio, and should not for this
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(os.path.realpath(next(iter(spec.submodule_search_locations))), "")


def internal_dirs() -> tuple[str, ...]:
    """Folders whose frames ``format_failure`` cuts: the worker SDK, anyio, trio, outcome, sniffio, asyncio
    and concurrent.futures (runq's own task modules, e.g. ``runq.demo_tasks``, are user code and stay)."""
    here = os.path.join(os.path.dirname(os.path.realpath(__file__)), "")
    dirs = [here]
    for name in ("anyio", "trio", "outcome", "sniffio", "asyncio", "concurrent"):
        d = _package_dir(name)
        if d is not None:
            dirs.append(d)
    return tuple(dirs)


_INTERNAL = internal_dirs()


def _is_internal(filename: str) -> bool:
    return filename.startswith(_INTERNAL) or os.path.realpath(filename).startswith(_INTERNAL)


def _trim(te: traceback.TracebackException, seen: set[int]) -> None:
    if id(te) in seen:
        return
    seen.add(id(te))
    kept = [frame for frame in te.stack if not _is_internal(frame.filename)]
    if kept:  # (an exception raised by the SDK itself, with no user frame, keeps its whole stack: it is ours)
        te.stack = traceback.StackSummary.from_list(kept)
    for nested in (te.__cause__, te.__context__):
        if nested is not None:
            _trim(nested, seen)
    for member in getattr(te, "exceptions", None) or ():
        _trim(member, seen)


def format_failure(exc: BaseException) -> str:
    """The traceback of ``exc`` (and of its causes) without the frames of the SDK and the event loop.

    Args:
        exc: what a handler raised.

    Returns:
        The text ``traceback.format_exception`` would give, with those frames cut.
    """
    te = traceback.TracebackException.from_exception(exc)
    _trim(te, set())
    return "".join(te.format())


#: Messages of the errors that asyncio code gives under trio, and trio code under asyncio.
_ASYNCIO_UNDER_TRIO = ("no running event loop", "there is no current event loop",
                       "received unrecognized yield message")  # (trio's words for a bare asyncio future)
_TRIO_UNDER_ASYNCIO = ("must be called from async context", "task got bad yield")


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop()
        if any(e is seen for seen in out):
            continue
        out.append(e)
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
    return out


def loop_hint(exc: BaseException, backend: str) -> str:
    """A line naming the flag that fixes ``exc`` when it is the other event loop's error, else ``""``.

    Args:
        exc: what an async handler raised.
        backend: the event loop the worker runs (``"trio"`` or ``"asyncio"``).
    """
    for e in _chain(exc):
        text = str(e).lower()
        if backend == "trio" and (any(m in text for m in _ASYNCIO_UNDER_TRIO)
                                  or type(e).__name__ == "AsyncLibraryNotFoundError"):
            return ("hint: this async handler uses asyncio, but the worker runs its handlers on trio "
                    "(--backend trio): run it with `runq worker --backend asyncio` (the default) or "
                    "`Worker.run_sync(backend=\"asyncio\")`; see docs/workers.md")
        if backend == "asyncio" and any(m in text for m in _TRIO_UNDER_ASYNCIO):
            return ("hint: this async handler uses trio, but the worker runs its handlers on asyncio (the "
                    "default): run it with `runq worker --backend trio` or `Worker.run_sync(backend=\"trio\")`; "
                    "see docs/workers.md")
    return ""
