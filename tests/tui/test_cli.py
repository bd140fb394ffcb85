"""``runq tui`` and ``runq demo`` from the command line, in a real pseudo-terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from tui_helpers import ROOT, Procs

pytestmark = pytest.mark.tui


def _env() -> dict[str, str]:
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="140", LINES="40")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RUNQ_TOKEN", None)
    return env


class Terminal:
    """A command running in a pseudo-terminal of 140x40; ``output`` collects what it printed."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            os.chdir(cwd)
            os.execve(sys.executable, [sys.executable, "-m", "runq.cli", *args], _env())
        import fcntl

        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
        self.output = b""
        self.status: int | None = None

    def read_until(self, pattern: bytes, timeout: float = 30.0) -> bytes:
        deadline = time.monotonic() + timeout
        while pattern not in self.output:
            assert time.monotonic() < deadline, f"{pattern!r} not seen; output so far:\n{self.output[-3000:]!r}"
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                try:
                    self.output += os.read(self.fd, 65536)
                except OSError:  # the child closed the terminal
                    break
        return self.output

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
            assert time.monotonic() < deadline, f"still running; output:\n{self.output[-3000:]!r}"
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                try:
                    self.output += os.read(self.fd, 65536)
                except OSError:
                    pass

    def close(self) -> None:
        if self.status is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def test_demo_opens_the_dashboard_on_a_terminal(tmp_path: Path) -> None:
    term = Terminal(["demo", "--db", str(tmp_path / "demo.db"), "--http-port", "0"], tmp_path)
    try:
        out = term.read_until(b"runq demo: server on")
        term.read_until(b"Pause/resume", timeout=40)  # the Queues screen's footer
        term.read_until(b"default")
        port = int(re.search(rb"server on 127\.0\.0\.1:(\d+)", out).group(1))  # type: ignore[union-attr]
        term.send(b"2")
        term.read_until(b"Drain")  # the Workers screen's footer
        term.send(b"q")
        assert term.wait(40) == 0
        assert b"runq demo: stopped" in term.output
    finally:
        term.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # the demo's server is gone


@pytest.mark.slow
def test_demo_no_tui_prints_the_events_on_a_terminal(tmp_path: Path) -> None:
    term = Terminal(["demo", "--no-tui", "--db", str(tmp_path / "demo.db")], tmp_path)
    try:
        assert term.wait(90) == 0
        assert b"demo finished: every task ended as expected" in term.output
        assert b"Pause/resume" not in term.output
    finally:
        term.close()


def test_tui_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_text("hello")
    for path in (junk, tmp_path / "missing.db"):
        r = subprocess.run([sys.executable, "-m", "runq.cli", "tui", "--db", str(path)], env=_env(), cwd=tmp_path,
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=False)
        assert r.returncode == 1
        assert r.stderr.startswith("runq tui: ") and str(path) in r.stderr


def test_tui_offline_on_a_terminal(procs: Procs, tmp_path: Path) -> None:
    """``runq tui --db FILE`` in a terminal shows the file's queues, marked offline; ``q`` quits."""
    procs.start_server()
    subprocess.run([sys.executable, "-m", "runq.cli", "enqueue", "noop", "--queue", "nightly", "--server",
                    procs.address], env=_env(), check=True, timeout=30, capture_output=True)
    procs.stop_server()
    term = Terminal(["tui", "--db", procs.db], tmp_path)
    try:
        term.read_until(b"OFFLINE")
        term.read_until(b"nightly")
        term.send(b"q")
        assert term.wait(20) == 0
    finally:
        term.close()
