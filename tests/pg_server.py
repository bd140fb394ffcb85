"""A throwaway PostgreSQL server for the tests: started once per session (on first use), stopped at its end.

Theory of operation
-------------------
``server()`` starts it the first time a test needs it (the PostgreSQL store kit, the end-to-end test): the
binaries of Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``: ``initdb``, ``pg_ctl``),
a data directory under a fresh temporary folder, listening ONLY on 127.0.0.1 on a free port and on a unix
socket in that folder, with ``trust`` authentication for local connections (nobody else can reach it: the
socket's folder is private, and TCP is 127.0.0.1 only). PostgreSQL refuses to run as root: when the tests
run as root (CI), ``initdb`` and ``pg_ctl`` run as the ``postgres`` user (``runuser``), and the folder is
made theirs. ``stop()`` (the session fixture of tests/conftest.py) stops it with ``pg_ctl stop -m immediate``
and deletes the folder.

Each test gets a fresh database (``database(name)``: CREATE DATABASE), so tests never see each other's rows.

No binaries: the tests that need PostgreSQL FAIL (not skip) with how to install them.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

INSTALL = ("PostgreSQL's server binaries (initdb, pg_ctl) were not found under /usr/lib/postgresql/*/bin: "
           "install them with `apt-get install postgresql` (Debian/Ubuntu; .ci/run does it), or put a folder "
           "holding initdb and pg_ctl in RUNQ_PG_BIN")


def _bindir() -> str:
    """The folder of ``initdb`` and ``pg_ctl`` (the newest version's), or fail the test with how to install."""
    env = os.environ.get("RUNQ_PG_BIN")
    found = [env] if env else sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                     key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0)
    for d in reversed(found):
        if os.path.exists(os.path.join(d, "initdb")) and os.path.exists(os.path.join(d, "pg_ctl")):
            return d
    pytest.fail(INSTALL, pytrace=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PgServer:
    """One running PostgreSQL server (``start`` made it)."""

    def __init__(self) -> None:
        bindir = _bindir()
        self.root = Path(tempfile.mkdtemp(prefix="runq-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self._as: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: as the postgres user, in a folder it owns
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("running as root, and there is no `postgres` user to run PostgreSQL as: "
                            "`apt-get install postgresql` creates it", pytrace=False)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        os.chmod(self.root, 0o700)
        self._run([f"{bindir}/initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8",
                   "--no-sync", "--no-instructions"])
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
                "-c fsync=on -c max_connections=200 -c shared_buffers=64MB")
        self._run([f"{bindir}/pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", opts, "-w",
                   "-t", "60", "start"])
        self._pg_ctl = f"{bindir}/pg_ctl"
        self._count = 0
        self._lock = threading.Lock()

    def _run(self, cmd: list[str]) -> None:
        proc = subprocess.run([*self._as, *cmd], capture_output=True, text=True, cwd=self.root,
                              check=False)
        if proc.returncode != 0:
            log = (self.root / "log").read_text() if (self.root / "log").exists() else ""
            raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stdout}{proc.stderr}{log}")

    def dsn(self, dbname: str = "postgres") -> str:
        """A ``postgresql://`` URL of database ``dbname`` (TCP on 127.0.0.1)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def database(self, prefix: str = "t") -> str:
        """Create a fresh database; return its URL."""
        import psycopg

        with self._lock:
            self._count += 1
            name = f"{prefix}_{os.getpid()}_{self._count}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        subprocess.run([*self._as, self._pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, cwd=self.root, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


_server: PgServer | None = None


def server() -> PgServer:
    """The session's server, started on first use."""
    global _server
    if _server is None:
        _server = PgServer()
    return _server


def stop() -> None:
    """Stop the session's server if it was started (tests/conftest.py, at the end of the session)."""
    global _server
    if _server is not None:
        _server.stop()
        _server = None
