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
