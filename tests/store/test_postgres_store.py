"""What only the PostgreSQL store has (the contract suite, test_store_contract.py, runs on it too): its schema
beside SQLite's, its version row, the writer row's fencing, ``open_store``'s choice, and the error without
psycopg. Against the session's real PostgreSQL server (tests/pg_server.py)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pg_server
import psycopg
import pytest
from store_helpers import ROOT, T0, commit, event, row, task

from runq import SyncClient
from runq.app.store import (
    SCHEMA_VERSION,
    Batch,
    RequestRecord,
    SchemaTooNew,
    SQLiteStore,
    StoreError,
    describe_db,
    open_store,
)
from runq.app.store.pg_schema import PG_MIGRATIONS
from runq.app.store.postgres import PostgresStore
from runq.app.store.schema import MIGRATIONS


@pytest.fixture
def url() -> str:
    return pg_server.server().database("pg")


def test_the_schema_has_the_same_versions_tables_and_columns_as_sqlites(url: str, tmp_path: Path) -> None:
    assert len(PG_MIGRATIONS) == len(MIGRATIONS) == SCHEMA_VERSION
    PostgresStore(url).close()
    SQLiteStore(str(tmp_path / "s.db")).close()
    with psycopg.connect(url) as conn:
        pg = {(t, c) for t, c in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' "
            "AND table_name NOT IN ('runq_schema', 'runq_writer')")}
        assert conn.execute("SELECT version FROM runq_schema").fetchone() == (SCHEMA_VERSION,)
    lite = sqlite3.connect(tmp_path / "s.db")
    tables = [t for (t,) in lite.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert {(t, c[1]) for t in tables for c in lite.execute(f"PRAGMA table_info({t})")} == pg
    lite.close()
    again = PostgresStore(url)
    try:
        assert again.migrated_from == SCHEMA_VERSION  # (nothing to do the second time)
    finally:
        again.close()


def test_a_database_of_a_newer_runq_is_refused(url: str) -> None:
    PostgresStore(url).close()
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE runq_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaTooNew, match=f"version {SCHEMA_VERSION + 1} is newer"):
        PostgresStore(url)


def test_a_store_whose_term_moved_on_never_writes_again_and_stops_leading(url: str) -> None:
    s = PostgresStore(url)
    s.start()
    try:
        term = s.leadership().term
        assert commit(s, Batch(rows=[row(1)])) is None
        with psycopg.connect(url) as conn:  # another server took the database over (and stopped at once)
            conn.execute("UPDATE runq_writer SET term = term + 1, holder = 'another', expires_at = clock_timestamp()")
        err = commit(s, Batch(rows=[row(2)]))
        assert isinstance(err, StoreError) and "term" in str(err)
        assert s.get_task(2) is None and s.get_task(1) == row(1)
        lead = s.leadership()
        assert not lead.is_leader and lead.term == term
        with pytest.raises(StoreError, match="term"):
            s.check_writable()
    finally:
        s.close()
    nxt = PostgresStore(url)  # the next store takes a later term
    try:
        assert nxt.leadership().is_leader and nxt.leadership().term == term + 2
    finally:
        nxt.close()


def test_open_store_picks_postgresql_for_its_urls_and_logs_hide_the_password(url: str, tmp_path: Path) -> None:
    for u in (url, url.replace("postgresql://", "postgres://")):
        s = open_store(u)
        try:
            assert isinstance(s, PostgresStore) and s.leadership().is_leader
        finally:
            s.close()
    lite = open_store(str(tmp_path / "x.db"))
    assert isinstance(lite, SQLiteStore)
    lite.close()
    assert describe_db("postgresql://runq:s3cret@db:5432/runq") == "postgresql://runq:***@db:5432/runq"
    assert describe_db("postgres://runq@db/runq") == "postgres://runq@db/runq"
    assert describe_db("runq.db") == "runq.db"


def test_an_unreachable_database_is_a_clear_store_error() -> None:
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL"):
        open_store("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")


def test_without_psycopg_a_postgresql_url_says_what_to_install() -> None:
    src = ("import sys; sys.modules['psycopg'] = None\n"  # (psycopg not installed: its import fails)
           "from runq.app.store import open_store, StoreError\n"
           "try:\n    open_store('postgresql://x@127.0.0.1/db')\nexcept StoreError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "needs psycopg" in out and "pip install 'runq[postgres]'" in out


def test_a_refused_value_in_a_copied_batch_fails_the_whole_commit_and_the_writer_goes_on(url: str) -> None:
    """From 64 new tasks (or events) on, they go in with COPY: a value refused in its middle (an id given twice,
    a number too large for bigint) fails the commit, writes nothing of it, and the next commit writes."""
    s = PostgresStore(url)
    s.start()
    try:
        n = 200
        dup = [task(i).new_row() for i in range(1, n + 1)] + [task(100).new_row()]
        assert isinstance(commit(s, Batch(new_rows=dup, events=[event(i) for i in range(1, n + 1)])), StoreError)
        big = [task(i).new_row() for i in range(1, n + 1)]
        big[150] = task(151, priority=2**64).new_row()
        assert isinstance(commit(s, Batch(new_rows=big)), StoreError)
        assert s.list_tasks() == [] and s.events(1) == [] and s.stats.errors == 2
        ok = [task(i).new_row() for i in range(1, n + 1)]
        assert commit(s, Batch(new_rows=ok, events=[event(i, "started", "running") for i in range(1, n + 1)])) is None
        assert len(s.list_tasks(limit=1000)) == n and [e.kind for e in s.events(n)] == ["enqueued", "started"]
    finally:
        s.close()


def test_a_lost_connection_fails_one_commit_then_the_writer_reconnects_unless_another_server_took_over(
        url: str) -> None:
    def cut(s: PostgresStore) -> None:  # PostgreSQL ends the writer's connection (a restart, a network cut)
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT pg_terminate_backend(%s)", (s.conn.info.backend_pid,)).fetchone() == (True,)

    s = PostgresStore(url)
    s.start()
    try:
        cut(s)
        assert isinstance(commit(s, Batch(rows=[row(1)])), StoreError)  # (the commit that met the cut)
        assert commit(s, Batch(rows=[row(2)])) is None  # connected again, same term
        assert s.leadership().is_leader and s.get_task(2) == row(2)
        second = PostgresStore(url)  # the lease is held (renewed on a connection of its own): a standby
        try:
            lead = second.leadership()
            assert not lead.is_leader and s.holder in lead.holder and second.take_leadership() == second.leadership()
            assert not second.leadership().is_leader
        finally:
            second.close()
        cut(s)
        with psycopg.connect(url) as conn:  # meanwhile another server took over
            conn.execute("UPDATE runq_writer SET term = term + 1, holder = 'another', expires_at = clock_timestamp()")
        assert isinstance(commit(s, Batch(rows=[row(3)])), StoreError)
        err = commit(s, Batch(rows=[row(4)]))  # connected again, it is fenced
        assert isinstance(err, StoreError) and "term" in str(err) and not s.leadership().is_leader
        assert s.get_task(3) is None and s.get_task(4) is None
    finally:
        s.close()


def test_runq_serve_takes_its_postgresql_database_from_runq_db(url: str, tmp_path: Path) -> None:
    """``RUNQ_DB=postgresql://...`` (as a deployment sets it) reaches the store: the enqueued task is in
    PostgreSQL, and the start-up line names the database without its password."""
    port_file = tmp_path / "port"
    user, rest = url.removeprefix("postgresql://").split("@", 1)
    env = {**os.environ, "RUNQ_DB": f"postgresql://{user}:not-needed@{rest}", "PGPASSWORD": "",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "runq.cli", "serve", "--port", "0", "--http-port", "0",
                             "--port-file", str(port_file)], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with SyncClient(f"127.0.0.1:{port_file.read_text()}") as c:
            tid = c.enqueue("t", {"x": 1})
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert f"(database postgresql://{user}:***@{rest})" in err and "not-needed" not in err
    assert not (tmp_path / "runq.db").exists()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT type, state FROM tasks WHERE id = %s", (tid,)).fetchone() == ("t", "ready")


def test_a_server_of_another_role_waits_as_a_standby_too(url: str) -> None:
    """A server under another role reads the same lease row: it waits as a standby while the first one holds it."""
    first = PostgresStore(url)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP ROLE IF EXISTS runq_other")
            conn.execute("CREATE ROLE runq_other LOGIN")
            conn.execute("GRANT ALL ON SCHEMA public TO runq_other")
            conn.execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO runq_other")
        other_url = url.replace(f"//{pg_server.server().user}@", "//runq_other@")
        second = PostgresStore(other_url)
        try:
            assert not second.leadership().is_leader and first.holder in second.leadership().holder
        finally:
            second.close()
        assert first.leadership().is_leader
    finally:
        first.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("REASSIGN OWNED BY runq_other TO CURRENT_USER")
            conn.execute("DROP OWNED BY runq_other")
            conn.execute("DROP ROLE runq_other")


def _round_trips(s: PostgresStore, path: Path, batch: Batch) -> int:
    """How many times the writer connection waited for PostgreSQL during ``write_now(batch)``: the
    ReadyForQuery messages in libpq's own trace of the connection (one per Sync or simple query)."""
    from psycopg import pq

    with open(path, "w") as f:
        s.conn.pgconn.trace(f.fileno())
        s.conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            s.write_now(batch)
        finally:
            s.conn.pgconn.untrace()
    return sum("\tReadyForQuery" in line for line in path.read_text().splitlines())


def test_a_small_commit_takes_two_round_trips_in_pipeline_mode(url: str, tmp_path: Path) -> None:
    s = PostgresStore(url)
    try:
        # a lone enqueue: BEGIN, the term check and the insert in one round trip, COMMIT in the second
        assert _round_trips(s, tmp_path / "t1", Batch(new_rows=[task(1).new_row()])) == 2
        assert _round_trips(s, tmp_path / "t2", Batch(rows=[row(1, "running")], events=[event(1, "started")],
                                                     requests=[RequestRecord(1, "c", 0, T0, "1", 1, None)])) == 2
        assert s.get_task(1) == row(1, "running")
        # a large one goes through COPY (which pipeline mode cannot carry): the plain transaction
        big = [task(i).new_row() for i in range(2, 202)]
        assert _round_trips(s, tmp_path / "t3", Batch(new_rows=big)) >= 4
        assert [r.id for r in s.list_tasks(limit=1000)] == list(range(201, 0, -1))
    finally:
        s.close()


def test_a_prune_deletes_in_slices_oldest_first_and_finishes_between_commits(url: str) -> None:
    s = PostgresStore(url)
    try:
        s.prune_slice = 3
        done = [row(i, "succeeded", finished_at=T0 + 10 - i) for i in range(1, 11)]  # (task 10 finished first)
        s.write_now(Batch(rows=[*done, row(11, "ready"), row(12, "dead", finished_at=T0 + 50)],
                          events=[event(i) for i in range(1, 13)]))
        first = Batch(prune_before=T0 + 20)
        s.write_now(first)  # (no writer thread yet: only the commit's own slice)
        assert first.pruned == 3
        assert [r.id for r in s.list_tasks(limit=100)] == [12, 11, 7, 6, 5, 4, 3, 2, 1]  # the oldest three went
        assert s.events(10) == [] and [e.kind for e in s.events(7)] == ["enqueued"]
        s.start()
        assert commit(s, Batch(rows=[row(13, "ready")])) is None  # the writer goes on between commits
        deadline = time.monotonic() + 30
        while [r.id for r in s.list_tasks(limit=100)] != [13, 12, 11]:
            assert time.monotonic() < deadline, [r.id for r in s.list_tasks(limit=100)]
            time.sleep(0.02)
        assert all(s.events(i) == [] for i in range(1, 11)) and s.events(12) != []
    finally:
        s.close()


def test_a_store_cut_off_from_postgresql_stops_leading_by_its_own_clock_and_a_standby_takes_over(url: str) -> None:
    """The network to PostgreSQL stops answering (tests/tcp_proxy.py): nothing fails, calls hang. The store gives
    its lease up by its own clock (lease 1 s: 0.75 s after its last renewal started), refuses every commit
    without waiting for the database, closes without hanging; a standby takes the lease once it expired."""
    from tcp_proxy import TcpProxy

    pg = pg_server.server()
    proxy = TcpProxy(pg.port)
    try:
        s = PostgresStore(url.replace(f":{pg.port}/", f":{proxy.port}/"), lease=1.0)
        s.start()
        assert commit(s, Batch(rows=[row(1)])) is None and s.leadership().is_leader
        standby = PostgresStore(url, lease=1.0)
        assert not standby.leadership().is_leader and s.holder in standby.leadership().holder
        proxy.cut()
        deadline = time.monotonic() + 20
        while s.leadership().is_leader:
            assert time.monotonic() < deadline, "the cut-off store kept leading"
            time.sleep(0.01)
        assert "no renewal of the lease succeeded for 0.75s" in s.leadership().holder
        err = commit(s, Batch(rows=[row(2)]))
        assert isinstance(err, StoreError) and "no longer writes the database" in str(err)
        while not standby.take_leadership().is_leader:
            assert time.monotonic() < deadline, "the standby did not take over"
            time.sleep(standby.leadership().check_in or 0.05)
        assert standby.leadership().term == s.term + 1 and standby.get_task(1) == row(1)
        assert standby.get_task(2) is None
        closing = threading.Thread(target=s.close, daemon=True)  # (its threads hang on the dead connections:
        closing.start()  # close does not wait for them)
        closing.join(30)
        assert not closing.is_alive()
        with psycopg.connect(url) as conn:  # the lost store cleared nothing: the lease is the standby's
            assert conn.execute("SELECT term, holder FROM runq_writer").fetchone() == (standby.term, standby.holder)
        standby.close()
    finally:
        proxy.close()


def test_a_frozen_holder_that_keeps_the_row_locked_is_ended_by_the_standby_that_takes_its_expired_lease(
        url: str) -> None:
    """A holder frozen (SIGSTOP: a VM pause) in the middle of a commit renews nothing and keeps its lock on the
    lease row. Once the lease expired, the standby ends that holder's connections (found by application_name)
    and takes the lease."""
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, psycopg\n"
        "from runq.app.store.postgres import PostgresStore\n"
        f"s = PostgresStore({url!r}, lease=1.0)\n"
        "c = psycopg.connect(s.url, application_name=f'runq {s.holder}')\n"  # (a commit under way: its lock)
        "c.execute('SELECT term FROM runq_writer WHERE id = 1 FOR KEY SHARE')\n"
        "print(s.holder, flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert child.stdout is not None
        holder = child.stdout.readline().strip()
        child.send_signal(signal.SIGSTOP)
        standby = PostgresStore(url, lease=1.0)
        try:
            assert not standby.leadership().is_leader and holder in standby.leadership().holder
            deadline = time.monotonic() + 30
            while not standby.take_leadership().is_leader:
                assert time.monotonic() < deadline, "the standby did not take over"
                time.sleep(standby.leadership().check_in or 0.05)
            with psycopg.connect(url) as conn:
                assert conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                    (f"runq {holder}",)).fetchone() == (0,)
                assert conn.execute("SELECT term, holder FROM runq_writer").fetchone() == (2, standby.holder)
            assert commit_started(standby, Batch(rows=[row(1)])) is None
        finally:
            standby.close()
    finally:
        child.kill()
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()


def commit_started(store: PostgresStore, batch: Batch) -> BaseException | None:
    store.start()
    return commit(store, batch)


def test_renewals_do_not_wait_for_a_commit_under_way(url: str) -> None:
    """A long commit holds the fence's lock on the lease row (its ``_TERM_SQL``) for longer than the lease: the
    renewals, on their own connection, go on meanwhile, and the store keeps leading."""
    from runq.app.store import postgres

    s = PostgresStore(url, lease=1.0)
    try:
        with psycopg.connect(url) as other:  # (a commit of 2 s: the fence read first, in its transaction)
            assert other.execute(postgres._TERM_SQL).fetchone() == (s.term,)
            time.sleep(2.0)
            assert s.leadership().is_leader
            other.rollback()
        with psycopg.connect(url) as conn:  # renewed meanwhile: the expiry is still ahead
            assert conn.execute("SELECT expires_at > clock_timestamp() FROM runq_writer").fetchone() == (True,)
    finally:
        s.close()


def test_the_prune_walks_the_index_of_finished_tasks_and_autovacuum_is_set_per_table(url: str) -> None:
    from runq.app.store.pg_prune import _SLICE_SQL

    PostgresStore(url).close()
    with psycopg.connect(url) as conn:
        conn.execute("SET enable_seqscan = off")  # (a tiny table: else the planner may scan it whole anyway)
        plan = str(conn.execute("EXPLAIN " + _SLICE_SQL, (T0, 100)).fetchall())
        assert "tasks_finished" in plan, plan
        opts = dict(conn.execute("SELECT relname, reloptions FROM pg_class WHERE relname IN "
                                 "('tasks', 'events', 'requests')").fetchall())
    want = ["autovacuum_vacuum_scale_factor=0.01", "autovacuum_vacuum_threshold=1000",
            "autovacuum_vacuum_insert_scale_factor=0.05", "autovacuum_analyze_scale_factor=0.02"]
    assert opts == {"tasks": want, "events": want, "requests": want}


def test_a_standby_that_loses_postgresql_keeps_waiting(url: str) -> None:
    from tcp_proxy import TcpProxy

    pg = pg_server.server()
    leader = PostgresStore(url)
    proxy = TcpProxy(pg.port)
    try:
        standby = PostgresStore(url.replace(f":{pg.port}/", f":{proxy.port}/"))
        assert not standby.take_leadership().is_leader
        proxy.close()  # (its connection broken, and nothing listens there any more)
        for _ in range(2):  # the broken connection, then a connection refused: no error, still a standby
            lead = standby.take_leadership()
            assert not lead.is_leader and lead.check_in is not None
        standby.close()
    finally:
        proxy.close()
        leader.close()


@pytest.mark.parametrize("way", ["pipelined", "plain", "prune slice"])
def test_each_way_of_writing_is_fenced_by_the_term_and_loses_the_lease_as_a_renewal_would(url: str, way: str) -> None:
    """The pipelined transaction of a small commit, the plain one (COPY) and a prune slice between commits each
    read the term first: moved on, nothing is written, and the lease is lost for good with the reason a renewal
    that finds the term moved gives. (A lease of an hour: no renewal comes first to find it.)"""
    s = PostgresStore(url, lease=3600.0)
    try:
        s.prune_slice = 2
        s.write_now(Batch(rows=[row(i, "succeeded", finished_at=T0 + i) for i in range(1, 6)]))
        if way == "prune slice":
            first = Batch(prune_before=T0 + 100)
            s.write_now(first)  # (its own slice: 2 tasks; the rest is left to the slices between commits)
            assert first.pruned == 2
        with psycopg.connect(url) as conn:  # another server took the database over
            conn.execute("UPDATE runq_writer SET term = term + 1, holder = 'another', "
                         "expires_at = clock_timestamp() + interval '1 hour'")
        if way == "prune slice":
            s._after_commits(False)  # (what the writer thread runs after a round of commits)
            assert sorted(r.id for r in s.list_tasks()) == [3, 4, 5]
        else:
            small = way == "pipelined"
            batch = Batch(rows=[row(10)]) if small else Batch(new_rows=[task(i).new_row() for i in range(100, 200)])
            with pytest.raises(StoreError, match="term"):
                s.write_now(batch)
            assert s.get_task(10) is None and s.get_task(100) is None
        lead = s.leadership()
        assert not lead.is_leader and "the lease row moved on from term" in lead.holder
        assert not s.take_leadership().is_leader
    finally:
        s.close()
    with psycopg.connect(url) as conn:  # the fenced store cleared nothing at its close
        assert conn.execute("SELECT holder FROM runq_writer").fetchone() == ("another",)


def test_past_its_local_deadline_a_store_sends_nothing_to_postgresql(url: str, tmp_path: Path) -> None:
    """Once the lease's local deadline passed (no renewal in time: here the renewals are stopped, as when
    PostgreSQL stops answering them), a commit of either way and a prune slice stop before they send anything:
    libpq's trace of the writer connection stays empty, although PostgreSQL would still take them (the term in
    the row is still this store's)."""
    s = PostgresStore(url, lease=1.0)
    try:
        s.prune_slice = 2
        s.write_now(Batch(rows=[row(i, "succeeded", finished_at=T0 + i) for i in range(1, 6)]))
        first = Batch(prune_before=T0 + 100)
        s.write_now(first)
        assert first.pruned == 2  # (the rest is left to the slices between commits)
        assert s._renewer is not None
        s._renew_stop.set()
        s._renew_wake.set()
        s._renewer.join(10)
        assert not s._renewer.is_alive()
        deadline = time.monotonic() + 20
        while s.leadership().is_leader:
            assert time.monotonic() < deadline, "the store kept leading without renewals"
            time.sleep(0.02)
        assert "no renewal of the lease succeeded" in s.leadership().holder
        trace = tmp_path / "trace"
        with open(trace, "w") as f:
            s.conn.pgconn.trace(f.fileno())
            try:
                for batch in (Batch(rows=[row(10)]), Batch(new_rows=[task(i).new_row() for i in range(100, 200)])):
                    with pytest.raises(StoreError, match="no longer writes the database"):
                        s.write_now(batch)
                s._after_commits(False)
            finally:
                s.conn.pgconn.untrace()
        assert trace.read_text() == ""
        assert sorted(r.id for r in s.list_tasks()) == [3, 4, 5] and s.get_task(10) is None
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT term, holder FROM runq_writer").fetchone() == (s.term, s.holder)
    finally:
        s.close()
    with psycopg.connect(url) as conn:  # the lost store wrote nothing at its close either: the lease just expires
        assert conn.execute("SELECT holder FROM runq_writer").fetchone() == (s.holder,)
