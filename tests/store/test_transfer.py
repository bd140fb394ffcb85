"""``runq migrate`` (runq/app/store/transfer.py, runq/cli/migrate.py): real SQLite files and the session's real
PostgreSQL server (tests/pg_server.py), both directions, every row compared."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pg_server
import psycopg
import pytest
from store_helpers import ROOT, T0, event, row

from runq.app.core.records import (
    BreakerRecord,
    LimitRecord,
    QueueRecord,
    RequestRecord,
    ScheduleRecord,
    ServerEventRecord,
)
from runq.app.store import Batch, SQLiteStore, StoreError, StoreInUse
from runq.app.store.postgres import PostgresStore
from runq.app.store.principals import RefreshRecord, TokenRecord, UserRecord
from runq.app.store.transfer import CopyMismatch, copy_database

#: every table of the schema, written out here (independent of the code that finds them)
TABLES = {"tasks", "events", "queues", "meta", "requests", "limits", "breakers", "server_events", "schedules",
          "users", "api_tokens", "refresh_tokens"}
N_TASKS = 1234
KEYS = {"tasks": "id", "events": "id", "queues": "name", "meta": "key", "requests": "id",
        "limits": "scope, name, key", "breakers": "type", "server_events": "id", "schedules": "name",
        "users": "name", "api_tokens": "id", "refresh_tokens": "id"}


@pytest.fixture
def url() -> str:
    return pg_server.server().database("mig")


def populate(path: Path) -> None:
    """A SQLite runq database with rows in every table, odd values included (NULLs, zero bytes, unicode)."""
    states = ["ready", "running", "succeeded", "dead", "cancelled", "scheduled", "failed"]
    rows = []
    for i in range(1, N_TASKS + 1):
        st = states[i % len(states)]
        rows.append(row(i, st, queue=("qé" if i % 3 else "default"), payload=bytes([0, i % 256, 255]) * (i % 5),
                        priority=(i % 7) - 3, attempt=i % 4, key=(f"k{i}" if i % 11 == 0 else None),
                        result=(b"\x00r" if st == "succeeded" else None), error=("boom ✗" if st == "dead" else None),
                        finished_at=(T0 + i / 7 if st in ("succeeded", "dead", "cancelled") else None),
                        requires=('{"gpu":"1"}' if i % 13 == 0 else None), run_at=T0 + 0.1 * i,
                        owner=("alice" if i % 4 == 0 else None)))
    events = [event(i, k) for i in range(1, N_TASKS + 1) for k in ("enqueued", "started")[: 1 + i % 2]]
    s = SQLiteStore(str(path))
    try:
        s.write_now(Batch(
            rows=rows, events=events, queue_ops=[QueueRecord("qé", True), QueueRecord("other", False)],
            requests=[RequestRecord(1, "client-a", 0, T0, "1+2", 2, b"\x01\x00\x02"),
                      RequestRecord(3, "client-b", 7, T0 + 1, "3", 1, None)],
            limits=[(("queue", "default", ""), LimitRecord("queue", "default", "", 10.0, 1.0, 5, None)),
                    (("type", "t", "k"), LimitRecord("type", "t", "k", None, 60.0, 1, 4))],
            breakers=[("t", BreakerRecord("t", 0.5, 60.0, 10, 30.0, 1, "open", T0 + 30, True)),
                      ("u", BreakerRecord("u", None, None, None, None, None, "closed", None, False))],
            server_events=[ServerEventRecord(None, T0, "limit", "set", "queue default", "alice"),
                           ServerEventRecord(None, T0 + 1, "breaker", "opened", "t", None)],
            schedule_rows=[("every5", ScheduleRecord("every5", "t", b"\x90", None, None, None, None, None, "UTC",
                                                     5.0, "skip", 10, False, T0 + 5, T0, T0)),
                           ("nightly", ScheduleRecord("nightly", "u", b"\x91\x01", "qé", 2, 30.0, 1, "0 3 * * *",
                                                      "Europe/Paris", None, "once", 3, True, None, None, T0))]))
        # the newest task, finished, pruned: ``meta`` keeps the next id
        s.write_now(Batch(rows=[row(N_TASKS + 1, "succeeded", finished_at=T0 - 1)]))
        s.write_now(Batch(prune_before=T0))
        ps = s.principals()  # users, API tokens and refresh tokens (docs/security.md), a disabled user included
        try:
            ps.add_user(UserRecord("alice", "user", "$argon2id$x", False, T0, T0))
            ps.add_user(UserRecord("bob é", "viewer", "$argon2id$y", True, T0, T0 + 1))
            ps.add_token(TokenRecord("abcd0123", "h" * 64, "w", "worker", None, "q1,q2", T0 + 60, None, T0))
            ps.add_token(TokenRecord("abcd0124", "i" * 64, "ci", "user", "alice", None, None, T0 + 2, T0))
            ps.add_refresh(RefreshRecord("00ff00ff", "r" * 64, "alice", T0 + 100, None, T0))
        finally:
            ps.close()
    finally:
        s.close()


def dump_sqlite(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY {KEYS[t]}").fetchall() for t in TABLES}
    finally:
        conn.close()


def dump_pg(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows, in SQLite's column order and values (booleans as 0/1)."""
    out = {}
    with psycopg.connect(url) as conn:
        for t in TABLES:
            cur = conn.execute(f"SELECT * FROM {t} ORDER BY {KEYS[t]}")
            out[t] = [tuple(int(v) if isinstance(v, bool) else v for v in r) for r in cur]
    return out


def sqlite_tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def test_sqlite_to_postgresql_to_sqlite_keeps_every_row_of_every_table(tmp_path: Path, url: str) -> None:
    src, back = tmp_path / "src.db", tmp_path / "back.db"
    populate(src)
    want = dump_sqlite(src)
    assert sqlite_tables(src) == TABLES  # (the schema has no table this test does not know)
    assert all(want[t] for t in TABLES), [t for t in TABLES if not want[t]]  # (every table has rows to copy)
    assert len(want["tasks"]) == N_TASKS and dict(want["meta"])["next_id"] == str(N_TASKS + 2)

    there = copy_database(str(src), url, batch_rows=100)
    assert there.ok and {c.table: c.target for c in there.tables} == {t: len(want[t]) for t in TABLES}
    assert dump_pg(url) == want

    again = copy_database(url, str(back), batch_rows=77)
    assert again.ok and {c.table: c.source for c in again.tables} == {t: len(want[t]) for t in TABLES}
    assert dump_sqlite(back) == want


def test_a_copy_on_postgresql_serves_what_the_sqlite_file_held(tmp_path: Path, url: str) -> None:
    src = tmp_path / "src.db"
    populate(src)
    copy_database(str(src), url)
    lite, pg = SQLiteStore(str(src)), PostgresStore(url)
    try:
        rows, paused, next_id = lite.load()
        pg_rows, pg_paused, pg_next = pg.load()
        assert list(pg_rows) == list(rows) and pg_paused == paused == ["qé"] and pg_next == next_id == N_TASKS + 2
        assert pg.load_requests() == lite.load_requests()
        assert pg.load_limits() == lite.load_limits()
        assert pg.load_schedules() == lite.load_schedules()
        assert pg.next_event_id() == lite.next_event_id()
        assert pg.server_events() == lite.server_events()
        # the identity column numbers on past the copied ids
        pg.write_now(Batch(server_events=[ServerEventRecord(None, T0 + 9, "limit", "removed", "x", None)]))
        assert [e.id for e in pg.server_events()] == [1, 2, 3]
    finally:
        lite.close()
        pg.close()


@pytest.mark.parametrize("to", ["postgresql", "sqlite"])
def test_a_target_that_holds_rows_is_refused_unless_replaced(tmp_path: Path, url: str, to: str) -> None:
    src = tmp_path / "src.db"
    populate(src)
    target = url if to == "postgresql" else str(tmp_path / "dst.db")
    dump = (lambda: dump_pg(url)) if to == "postgresql" else (lambda: dump_sqlite(tmp_path / "dst.db"))
    first = copy_database(str(src), target)
    with pytest.raises(StoreError, match=r"already holds rows \(tasks: 1234, .*--replace"):
        copy_database(str(src), target)
    assert dump() == dump_sqlite(src)  # (unchanged: not doubled)
    again = copy_database(str(src), target, replace=True)
    assert again.ok and again.replaced == first.rows
    assert dump() == dump_sqlite(src)


def test_a_database_a_server_holds_is_refused_on_either_end(tmp_path: Path, url: str) -> None:
    src = tmp_path / "src.db"
    populate(src)
    held = SQLiteStore(str(src))
    try:
        with pytest.raises(StoreInUse, match="in use by another runq server"):
            copy_database(str(src), url)
    finally:
        held.close()
    with psycopg.connect(url) as conn:  # (refused before the target was touched)
        assert conn.execute("SELECT to_regclass('tasks')").fetchone() == (None,)
    pg = PostgresStore(url)
    try:
        with pytest.raises(StoreInUse, match="in use by another runq server"):
            copy_database(str(src), url)
        with pytest.raises(StoreInUse, match="in use by another runq server"):
            copy_database(url, str(tmp_path / "back.db"))
    finally:
        pg.close()
    back = SQLiteStore(str(tmp_path / "back.db"))
    try:
        with pytest.raises(StoreInUse, match="in use by another runq server"):
            copy_database(str(src), str(tmp_path / "back.db"))
    finally:
        back.close()
    assert dump_sqlite(tmp_path / "back.db") == {t: [] for t in TABLES}


def test_counts_that_differ_roll_the_copy_back_postgresql(tmp_path: Path, url: str) -> None:
    src = tmp_path / "src.db"
    populate(src)
    PostgresStore(url).close()
    one = dump_sqlite(src)["events"][1][0]
    with psycopg.connect(url) as conn:  # a real trigger that silently drops one event
        conn.execute("CREATE FUNCTION drop_two() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                     f"IF NEW.id = {one} THEN RETURN NULL; END IF; RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER drop_two BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION drop_two()")
    n_events = len(dump_sqlite(src)["events"])
    with pytest.raises(CopyMismatch, match=f"events: {n_events} in the source, {n_events - 1} in the target") as exc:
        copy_database(str(src), url)
    assert [(c.table, c.source - c.target) for c in exc.value.report.tables if not c.ok] == [("events", 1)]
    assert dump_pg(url) == {t: [] for t in TABLES}  # rolled back: nothing written


def test_counts_that_differ_roll_the_copy_back_sqlite(tmp_path: Path, url: str) -> None:
    src, back = tmp_path / "src.db", tmp_path / "back.db"
    populate(src)
    copy_database(str(src), url)
    SQLiteStore(str(back)).close()
    conn = sqlite3.connect(back)
    conn.execute("CREATE TRIGGER drop_q BEFORE INSERT ON queues WHEN NEW.name = 'other' BEGIN SELECT RAISE(IGNORE); END")
    conn.commit()
    conn.close()
    with pytest.raises(CopyMismatch, match="queues: 2 in the source, 1 in the target"):
        copy_database(url, str(back))
    assert dump_sqlite(back) == {t: [] for t in TABLES}


def test_a_source_that_is_not_a_runq_database_is_refused_untouched(tmp_path: Path, url: str) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(StoreError, match="no database file"):
        copy_database(str(missing), url)
    assert not missing.exists()
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE mine (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a runq database"):
        copy_database(str(other), url)
    assert sqlite_tables(other) == {"mine"}
    with pytest.raises(StoreError, match="not a runq database"):
        copy_database(url, str(tmp_path / "x.db"))
    with psycopg.connect(url) as c:
        assert c.execute("SELECT to_regclass('runq_schema')").fetchone() == (None,)
    with pytest.raises(StoreError, match="same database"):
        copy_database(str(other), str(tmp_path / "." / "other.db"))


# ---------------------------------------------------------------------- the command
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNQ_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "runq.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False, stdin=subprocess.DEVNULL)


def test_runq_migrate_prints_the_counts_and_fails_when_they_differ(tmp_path: Path, url: str) -> None:
    src = tmp_path / "src.db"
    populate(src)
    want = {t: len(v) for t, v in dump_sqlite(src).items()}
    ok = _cli("migrate", "--from", str(src), "--to", url)
    assert ok.returncode == 0, ok.stderr
    lines = {ln.split()[0]: ln.split()[1:] for ln in ok.stdout.splitlines()[1:-1] if ln.strip()}
    assert lines == {t: [f"{n:,}", f"{n:,}", "ok"] for t, n in want.items()}
    assert "counts verified" in ok.stdout.splitlines()[-1]
    again = _cli("migrate", "--from", str(src), "--to", url)
    assert again.returncode == 1 and "already holds rows" in again.stderr
    out = _cli("migrate", "--from", url, "--to", str(tmp_path / "back.db"), "--json")
    assert out.returncode == 0, out.stderr
    assert {t["table"]: (t["source"], t["target"]) for t in json.loads(out.stdout)["tables"]} == \
        {t: (n, n) for t, n in want.items()}
    conn = sqlite3.connect(tmp_path / "back.db")
    conn.execute("CREATE TRIGGER drop_q BEFORE INSERT ON queues WHEN NEW.name = 'other' BEGIN SELECT RAISE(IGNORE); END")
    conn.execute("DELETE FROM tasks")  # (empty, so --replace has rows to replace: all but queues' come back)
    conn.commit()
    conn.close()
    bad = _cli("migrate", "--from", url, "--to", str(tmp_path / "back.db"), "--replace")
    assert bad.returncode == 1
    assert "queues: 2 in the source, 1 in the target" in bad.stderr and "DIFFERS" in bad.stdout


def test_runq_migrate_refuses_a_database_a_running_server_holds(tmp_path: Path, url: str) -> None:
    src = tmp_path / "src.db"
    populate(src)
    port_file = tmp_path / "port"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNQ_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "runq.cli", "serve", "--db", str(src), "--port", "0",
                             "--http-port", "0", "--port-file", str(port_file)], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "runq serve did not start"
            time.sleep(0.05)
        out = _cli("migrate", "--from", str(src), "--to", url)
        assert out.returncode == 1
        assert "in use by another runq server" in out.stderr
    finally:
        proc.terminate()
        proc.wait(30)
    assert _cli("migrate", "--from", str(src), "--to", url).returncode == 0  # (once it stopped)


def test_without_psycopg_a_postgresql_end_says_what_to_install(tmp_path: Path) -> None:
    src = tmp_path / "src.db"
    SQLiteStore(str(src)).close()
    code = ("import sys; sys.modules['psycopg'] = None\n"  # (psycopg not installed: its import fails)
            "from runq.cli import main\n"
            f"sys.exit(main(['migrate', '--from', {str(src)!r}, '--to', 'postgresql://x@127.0.0.1/db']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert out.returncode == 1
    assert "needs psycopg" in out.stderr and "pip install 'runq[postgres]'" in out.stderr
