"""README.md's examples, run as written: its task module, `runq serve` and `runq worker` as real processes,
its async and blocking producers as scripts, its shell lines in bash, and its curl lines (when curl is
installed). Only the ports differ: the test binds free ones and points RUNQ_SERVER at them."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e_cluster import free_port

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()

pytestmark = pytest.mark.e2e


def blocks(lang: str) -> list[str]:
    return [m.group(1) for m in re.finditer(rf"```{lang}\n(.*?)```", README, re.DOTALL)]


def python_files() -> dict[str, str]:
    """The README's Python blocks that name their file on their first line (``# myapp/tasks.py``)."""
    out = {}
    for text in blocks("python"):
        first = text.splitlines()[0]
        m = re.fullmatch(r"# ([\w/]+\.py)", first.strip())
        if m:
            out[m.group(1)] = text
    return out


def shell_block(containing: str) -> str:
    (text,) = [b for b in blocks("sh") if containing in b]
    return text


def command(text: str, program: str) -> list[str]:
    """The README's ``runq <program> ...`` line, as arguments (its comment dropped)."""
    (line,) = [ln for ln in text.splitlines() if ln.startswith(f"runq {program} ")]
    return shlex.split(line, comments=True)[1:]


def test_the_readme_examples_run_as_written(tmp_path: Path, runq_env: dict[str, str]) -> None:
    files = python_files()
    assert set(files) == {"myapp/tasks.py", "enqueue.py", "report.py"}, files
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    bin_dir = tmp_path / "bin"  # `runq` on PATH, as after `pip install`
    bin_dir.mkdir()
    (bin_dir / "runq").write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m runq.cli \"$@\"\n")
    (bin_dir / "runq").chmod(0o755)
    env = dict(runq_env, PATH=f"{bin_dir}{os.pathsep}{runq_env.get('PATH', '')}")

    start = shell_block("runq serve")
    serve = command(start, "serve")
    port_file = tmp_path / "port"
    procs: list[subprocess.Popen[str]] = []
    try:
        http_port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "runq.cli", *serve, "--port", "0", "--http-port",
                                       str(http_port), "--port-file", str(port_file)], cwd=tmp_path, env=env, text=True,
                                      stdin=subprocess.DEVNULL, stderr=subprocess.PIPE))
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert time.monotonic() < deadline and procs[0].poll() is None, "runq serve did not start"
            time.sleep(0.05)
        env["RUNQ_SERVER"] = f"127.0.0.1:{port_file.read_text().split()[0]}"
        procs.append(subprocess.Popen([sys.executable, "-m", "runq.cli", *command(start, "worker")], cwd=tmp_path,
                                      env=env, text=True, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE))

        def run(*args: str, timeout: float = 60) -> str:
            r = subprocess.run(list(args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL, check=False)
            assert r.returncode == 0, f"{args} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
            return r.stdout

        out = run(sys.executable, "enqueue.py").splitlines()
        assert out == ["sent 'Welcome' to a@example.com (attempt 1)", "[{'pixels': 10000}, {'pixels': 20000}]"]
        assert run(sys.executable, "report.py").splitlines() == ["{'pixels': 307200}"]

        shell = shell_block("runq enqueue")
        out = run("bash", "-euo", "pipefail", "-c", shell, timeout=120)
        # `runq wait $id`: the human view of the task, a field per line
        views = [dict(line.split(None, 1) for line in view.splitlines() if line[:1].isalpha() and " " in line)
                 for view in re.split(r"(?m)^(?=id  )", out)]
        waited = [v for v in views if v.get("state") == "succeeded" and v.get("type") == "send_email"]
        assert waited and waited[-1]["result"] == '"sent \'Welcome\' to b@example.com (attempt 1)"', out
        # `runq status $id --json`: the task map
        (task,) = [json.loads(m) for m in re.findall(r"^\{\n.*?^\}$", out, re.DOTALL | re.MULTILINE)]
        assert task["state"] == "succeeded" and task["result"] == "sent 'Welcome' to b@example.com (attempt 1)"

        if shutil.which("curl"):
            for line in shell_block("curl").splitlines():
                for part in line.split(";"):
                    args = shlex.split(part.replace("localhost:7701", f"127.0.0.1:{http_port}"))
                    if not args:
                        continue
                    if "-sN" in args:  # the endless event stream: it must start, then it is stopped
                        p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
                        time.sleep(0.5)
                        assert p.poll() is None, "the event stream ended at once"
                        p.kill()
                        p.communicate()
                        continue
                    body = json.loads(run(*args))
                    assert not isinstance(body.get("error"), dict), body  # (a task has "error": null)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                _, err = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
            assert "Traceback" not in (err or ""), err
