"""What only the SQLite store does: its schema and migrations, PRAGMAs, file lock, read-only reader.

Everything a store must do is in test_store_contract.py, which runs on ``SQLiteStore`` too (store_helpers.KITS).
"""

from __future__ import annotations

import collections
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from store_helpers import FINAL, LIVE, Done, OpenStore, SQLiteKit, commit, event, opened, row, task

from runq.app.core import Task
from runq.app.store import SCHEMA_VERSION, Batch, SchemaTooNew, SQLiteStore, StoreInUse, migrate
from runq.app.store import schema as schema_mod


@pytest.fixture(params=["NORMAL", "FULL"])
def synchronous(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_store(synchronous: str) -> OpenStore:
    return SQLiteKit(synchronous).open


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def store(synchronous: str, path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(str(path), synchronous=synchronous)
    s.start()
    yield s
    s.close()


class TestSQLiteStore:
    def test_it_always_leads_with_term_1_and_commits_inline_only_with_normal(self, store: SQLiteStore,
                                                                              synchronous: str) -> None:
        lead = store.leadership()
        assert (lead.is_leader, lead.term) == (True, 1) and f"{store.path}-lock" in lead.holder
        assert store.can_commit_inline is (synchronous == "NORMAL")

    @pytest.fixture
    def population(self, store: SQLiteStore) -> dict[int, Task]:
        rng = random.Random(11)
        tasks = {i: task(i, rng.choice(LIVE + FINAL), queue=rng.choice("ab"), type_=rng.choice(["x", "y", "z"]))
                 for i in range(1, 121)}
        for lo in range(1, 121, 40):
            assert commit(store, Batch(rows=[tasks[i].row() for i in range(lo, lo + 40)])) is None
        return tasks

    def test_count_by_state(self, store: SQLiteStore, population: dict[int, Task]) -> None:
        want = collections.Counter((t.queue, t.state.value) for t in population.values())
        assert store.count_by_state() == dict(want)

    def test_fresh_file_gets_the_current_schema(self, store: SQLiteStore, synchronous: str) -> None:
        assert store.migrated_from == 0
        conn = sqlite3.connect(store.path)
        try:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            assert {"tasks", "events", "queues", "meta"} <= tables
        finally:
            conn.close()
        assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == {"NORMAL": 1, "FULL": 2}[synchronous]
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    def test_the_wal_file_stays_bounded_under_large_payloads_with_a_reader_open(self, open_store: OpenStore,
                                                                                path: Path) -> None:
        """Tasks of 256 KB, ten times ``wal_limit`` in all, committed by the writer thread and by
        ``commit_here`` in turn, a read-only reader (as ``runq tui --db``) querying between them: the -wal
        file stays under twice the limit (the page estimate alone would checkpoint after ~330 commits)."""
        s = open_store(path)
        assert isinstance(s, SQLiteStore)
        s.wal_limit = 2 * 1024 * 1024
        s.start()
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        wal = Path(f"{path}-wal")
        payload = random.Random(7).randbytes(256 * 1024)
        sizes = []
        try:
            for i in range(1, 81):
                batch = Batch(new_rows=[task(i, payload=payload).new_row()])
                if i % 2 == 0 and s.commit_here([batch]):
                    pass  # (its checkpoint, when one is due, goes to the writer thread)
                else:
                    assert commit(s, batch) is None
                assert reader.execute("SELECT count(*) FROM tasks").fetchone() == (i,)
                sizes.append(wal.stat().st_size)
            assert s.conn.execute("PRAGMA journal_size_limit").fetchone() == (s.wal_limit,)
        finally:
            reader.close()
            s.close()
        assert max(sizes) < 2 * s.wal_limit, [size // 1024 for size in sizes]
        assert sizes[-1] >= s.wal_limit // 2  # (it did fill up: the bound is not met by writing nothing)
        conn = sqlite3.connect(str(path))
        try:
            assert conn.execute("SELECT count(*), sum(length(payload)) FROM tasks").fetchone() == (80, 80 * len(payload))
        finally:
            conn.close()

    def test_migrate_on_an_up_to_date_file_is_a_no_op(self, open_store: OpenStore, path: Path) -> None:
        s = open_store(path)
        s.write_now(Batch(rows=[row(1)]))
        s.close()
        conn = sqlite3.connect(str(path), isolation_level=None)
        schema = conn.execute("SELECT * FROM sqlite_master ORDER BY name").fetchall()
        other = sqlite3.connect(str(path), isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # a no-op migration needs no write lock
        try:
            conn.execute("PRAGMA busy_timeout=0")
            assert migrate(conn) == SCHEMA_VERSION
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert conn.execute("SELECT * FROM sqlite_master ORDER BY name").fetchall() == schema
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.close()
        s = open_store(path)
        try:
            assert s.migrated_from == SCHEMA_VERSION and s.get_task(1) == row(1)
        finally:
            s.close()

    def test_migration_steps_run_each_in_one_transaction(self, open_store: OpenStore, path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
        open_store(path).close()
        conn = sqlite3.connect(str(path), isolation_level=None)
        monkeypatch.setattr(schema_mod, "MIGRATIONS", [*schema_mod.MIGRATIONS,
                                                       "ALTER TABLE tasks ADD COLUMN extra TEXT; NOT SQL AT ALL"])
        monkeypatch.setattr(schema_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
        with pytest.raises(sqlite3.OperationalError):
            schema_mod.migrate(conn)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert "extra" not in [r[1] for r in conn.execute("PRAGMA table_info(tasks)")]  # rolled back
        monkeypatch.setattr(schema_mod, "MIGRATIONS", [*schema_mod.MIGRATIONS[:-1],
                                                       "ALTER TABLE tasks ADD COLUMN extra TEXT"])
        assert schema_mod.migrate(conn) == SCHEMA_VERSION
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert "extra" in [r[1] for r in conn.execute("PRAGMA table_info(tasks)")]
        conn.close()

    def test_a_version_2_file_keeps_its_answers_by_token_each_for_one_request(self, path: Path,
                                                                               open_store: OpenStore) -> None:
        conn = sqlite3.connect(str(path), isolation_level=None)
        for step in schema_mod.MIGRATIONS[:2]:  # (a file written by the runq of schema version 2)
            conn.executescript(step)
        conn.execute("INSERT INTO requests (id, client_id, seq, at, answer) VALUES (7, 'c1', 3, 1.5, '5+2')")
        conn.execute("PRAGMA user_version = 2")
        conn.close()
        with opened(open_store, path) as store:
            assert store.migrated_from == 2
            assert store.load_requests() == ([(7, "c1", 3, 1.5, "5+2", 1, None)], 8)

    def test_a_newer_schema_is_refused_and_left_alone(self, path: Path, open_store: OpenStore) -> None:
        conn = sqlite3.connect(str(path))
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.close()
        with pytest.raises(SchemaTooNew):
            open_store(path)
        conn = sqlite3.connect(str(path))
        try:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
            assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        finally:
            conn.close()

    def test_a_second_store_on_the_same_file_is_refused_and_harms_nothing(self, store: SQLiteStore, path: Path,
                                                                           open_store: OpenStore) -> None:
        """Two writers (two servers) on one file would each recover the other's running tasks and hand out
        the same ids: the second is refused before it reads or writes, and the first goes on."""
        assert commit(store, Batch(rows=[row(1, "running")])) is None
        with pytest.raises(StoreInUse, match="in use by another runq server"):
            open_store(path)
        link = path.with_name("link.db")
        link.symlink_to(path)
        with pytest.raises(StoreInUse):  # the same file by another name
            open_store(link)
        assert commit(store, Batch(rows=[row(2)])) is None  # the first one still writes
        assert store.get_task(1) == row(1, "running")
        store.close()
        again = open_store(path)  # once closed, the next one may open it
        try:
            assert again.get_task(2) == row(2)
        finally:
            again.close()

    def test_synchronous_must_be_normal_or_full(self, path: Path) -> None:
        with pytest.raises(ValueError):
            SQLiteStore(str(path), synchronous="OFF")
        assert not path.exists()

    def test_the_reader_is_read_only_and_reads_while_a_write_is_open(self, store: SQLiteStore) -> None:
        assert commit(store, Batch(rows=[row(1)])) is None
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.reader.execute("DELETE FROM tasks")
        other = sqlite3.connect(store.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute("DELETE FROM tasks")
        try:
            assert store.get_task(1) == row(1)  # the snapshot before the open write
            assert [r.id for r in store.list_tasks()] == [1]
        finally:
            other.execute("ROLLBACK")
            other.close()

    def test_reads_go_on_while_the_writer_commits(self, store: SQLiteStore) -> None:
        stop = threading.Event()
        done = Done()

        def write() -> None:
            i = 0
            while not stop.is_set() and i < 5000:
                i += 1
                store.submit(Batch(rows=[row(i)], events=[event(i)], on_done=done.cb(i)))
                if i % 10 == 0:
                    time.sleep(0.001)

        t = threading.Thread(target=write)
        t.start()
        counts = []
        try:
            for _ in range(60):
                n = len(store.list_tasks(limit=10_000))
                counts.append(n)
                if n:
                    assert store.get_task(n) == row(n)  # rows commit in id order: every id <= n is there
                time.sleep(0.002)
        finally:
            stop.set()
            t.join()
        assert counts == sorted(counts) and counts[-1] > 0 and len(set(counts)) > 2
