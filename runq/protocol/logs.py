"""Logging of workers: logger names, the per-task line, a JSON formatter, and the CLI's configuration.

runq logs through the standard ``logging`` module only, so whatever configures an application's logging
(``logging.basicConfig``, ``dictConfig``, a framework's settings) configures runq's lines too.

Loggers:

* ``runq.worker``: a worker's life (joined, connection lost and retrying, stopping, blocked event loop).
* ``runq.worker.task``: one line per finished task at INFO (id, type, attempt, duration, outcome), at
  ERROR with the traceback for a failure or a timeout. Every record of it carries the fields
  ``task_id``, ``task_type``, ``attempt``, ``duration`` (seconds) and ``outcome`` (``succeeded``,
  ``failed``, ``retry``, ``timeout``, ``cancelled``, ``released``), which ``JsonFormatter`` writes as keys.
  Set it to WARNING to keep failures and drop the line per success.

``configure_logging`` is what ``runq --log-level/--log-format/--log-config`` do.
"""

from __future__ import annotations

import json
import logging
import logging.config
import sys
import time
from datetime import UTC, datetime
from typing import Any

__all__ = ["TASK_FIELDS", "JsonFormatter", "TextFormatter", "configure_logging"]

#: Fields of every ``runq.worker.task`` record (``extra=``), written as keys by ``JsonFormatter``.
TASK_FIELDS = ("task_id", "task_type", "attempt", "duration", "outcome")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"

#: Attributes every LogRecord has: what is not among them came from ``extra=`` and is written as a key.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message", "asctime", "taskName"}


class TextFormatter(logging.Formatter):
    """The default text lines: time, level, logger[pid], message (the pid tells ``--processes`` apart)."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt or TEXT_FORMAT, datefmt)
        self._stamp = (-1, "")  # (second, its text): one tuple, replaced whole (formatters may be shared by threads)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # a worker logs a line per task, many per second: localtime + strftime once per second, not per line
        if datefmt is not None or self.datefmt is not None or self.default_msec_format is None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        stamp = self._stamp
        if stamp[0] != second:
            stamp = self._stamp = (second, time.strftime(self.default_time_format, self.converter(second)))
        return self.default_msec_format % (stamp[1], record.msecs)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, ``pid``, the
    record's ``extra`` fields (a task's ``task_id``, ``task_type``... see the module doc) and, when the
    record has one, ``exc_info`` formatted as ``traceback``.

    Usable from a ``dictConfig`` file: ``{"formatters": {"json": {"()": "runq.protocol.logs.JsonFormatter"}}}``.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO", format: str = "text", config: str | None = None) -> None:
    """Configure the root logger as the ``runq`` command does.

    Args:
        level: a level name (``DEBUG``, ``INFO``, ``WARNING``...) or number, for the root logger.
        format: ``text`` (one line per record) or ``json`` (one JSON object per line), on standard error.
        config: a JSON file in ``logging.config.dictConfig`` form; when given, it alone configures logging
            (``level`` and ``format`` are not used). ``version`` defaults to 1 and
            ``disable_existing_loggers`` to false.

    Raises:
        ValueError: an unknown level or format, or a config file that is not valid JSON or dictConfig.
    """
    if config is not None:
        try:
            with open(config, encoding="utf-8") as f:
                conf = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"--log-config {config}: {exc}") from exc
        if not isinstance(conf, dict):
            raise ValueError(f"--log-config {config}: a JSON object in dictConfig form is expected")
        conf.setdefault("version", 1)
        conf.setdefault("disable_existing_loggers", False)  # (runq's loggers exist before the file is read)
        try:
            logging.config.dictConfig(conf)
        except (ValueError, TypeError, AttributeError, ImportError) as exc:
            raise ValueError(f"--log-config {config}: {exc}") from exc
        return
    numeric = _level(level)
    if format == "json":
        formatter: logging.Formatter = JsonFormatter()
    elif format == "text":
        formatter = TextFormatter()
    else:
        raise ValueError(f"unknown log format {format!r}: text or json")
    # Neither format shows the thread or the multiprocessing process name: do not look them up for every
    # record (the logging HOWTO's "Optimization"; a worker writes a record per task).
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    text = str(level).strip().upper()
    if text.isdigit():
        return int(text)
    value = logging.getLevelNamesMapping().get(text)
    if value is None:
        raise ValueError(f"unknown log level {level!r}: DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value
