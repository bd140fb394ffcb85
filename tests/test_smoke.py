import pytest

from runq import Client


@pytest.mark.trio
async def test_smoke(server):
    async with Client(f"127.0.0.1:{server.port}") as c:
        tid = await c.enqueue("x", {"a": 1})
        t = await c.get(tid)
        assert t["state"] == "ready" and t["payload"] == {"a": 1}


def test_the_readme_demo_runs_to_its_end_without_a_terminal(tmp_path, runq_env):
    """README's first command, `runq demo`, in a pipe: every task ends as expected, no escape codes."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "runq.cli", "demo", "--db", str(tmp_path / "demo.db"), "--http-port", "0"],
                       env=runq_env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "demo finished: every task ended as expected" in r.stdout
    assert "states: {'succeeded': 42, 'dead': 2}" in r.stdout
    assert "\x1b[" not in r.stdout


def _children(pid):
    import os

    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(d))
    return kids


@pytest.mark.parametrize("signals", [1, 2])
def test_sigterm_stops_the_demo_with_its_server_and_workers(tmp_path, runq_env, signals):
    """`kill` of the demo (not of its process group, as Ctrl-C is) used to leave its server and two workers
    running, orphaned; a second SIGTERM while it stops them must not cut that short."""
    import os
    import signal
    import subprocess
    import sys
    import time

    p = subprocess.Popen([sys.executable, "-m", "runq.cli", "demo", "--no-tui", "--keep", "--db",
                          str(tmp_path / "demo.db"), "--http-port", "0"],
                         env=runq_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         stdin=subprocess.DEVNULL)
    kids = []
    try:
        assert p.stdout is not None
        deadline = time.monotonic() + 60
        for line in p.stdout:
            if line.startswith("started 2 worker processes") or time.monotonic() > deadline:
                break
        kids = _children(p.pid)
        assert len(kids) == 3, kids  # the server and two workers
        p.send_signal(signal.SIGTERM)
        if signals == 2:
            time.sleep(0.05)
            p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 130
        for pid in kids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue  # gone
            with open(f"/proc/{pid}/cmdline") as f:
                cmd = f.read().replace("\0", " ")
            raise AssertionError(f"process {pid} outlived the demo: {cmd} {stat.split()[2]}")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        for pid in kids:  # (a failed run leaves no orphan behind)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def test_the_demo_on_a_port_in_use_says_so_in_one_line(tmp_path, runq_env):
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "runq.cli", "demo", "--no-tui", "--port", str(port), "--http-port",
                            "0", "--db", str(tmp_path / "demo.db")], env=runq_env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert r.returncode == 1, r
    assert "Traceback" not in r.stderr and "runq demo: its server (runq serve --port" in r.stderr, r.stderr
