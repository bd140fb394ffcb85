"""docs/recipes.md's FastAPI and Flask apps, run as written under a real ASGI/WSGI server (Hypercorn, which
runq already depends on), against a real `runq serve` and a real `runq worker shop.tasks`; requests go
over HTTP with httpx."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "recipes.md").read_text()

pytestmark = pytest.mark.e2e


def recipe_files() -> dict[str, str]:
    out = {}
    for m in re.finditer(r"```python\n# ([\w/]+\.py)\n(.*?)```", DOC, re.DOTALL):
        out[m.group(1)] = f"# {m.group(1)}\n{m.group(2)}"
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The recipes' files in a folder on sys.path, a real server and a real worker of shop.tasks."""
    folder = tmp_path_factory.mktemp("recipes")
    files = recipe_files()
    assert set(files) == {"shop/tasks.py", "fastapi_app.py", "flask_app.py"}, files
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               RUNQ_LOG_LEVEL="WARNING")
    env.pop("RUNQ_TOKEN", None)
    port_file = folder / "port"
    procs = [subprocess.Popen([sys.executable, "-m", "runq.cli", "serve", "--db", str(folder / "runq.db"), "--port",
                               "0", "--http-port", "0", "--port-file", str(port_file)], env=env, cwd=folder,
                              stdin=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert time.monotonic() < deadline and procs[0].poll() is None, "runq serve did not start"
            time.sleep(0.05)
        env["RUNQ_SERVER"] = f"127.0.0.1:{port_file.read_text().strip()}"
        procs.append(subprocess.Popen([sys.executable, "-m", "runq.cli", "worker", "shop.tasks"], env=env,
                                      cwd=folder, stdin=subprocess.DEVNULL))
        with pytest.MonkeyPatch.context() as mp:  # (the apps read RUNQ_SERVER from the environment)
            mp.setenv("RUNQ_SERVER", env["RUNQ_SERVER"])
            mp.delenv("RUNQ_TOKEN", raising=False)
            yield folder
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(30)


def _wait_done(http: httpx.Client, task_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        status = http.get(f"/tasks/{task_id}").json()
        if status["state"] in ("succeeded", "dead", "cancelled"):
            return dict(status)
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


@contextlib.contextmanager
def served(stack: Path, app: str) -> Iterator[httpx.Client]:
    """``hypercorn APP`` on a free port of 127.0.0.1, with the recipes' environment; an httpx client to it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(stack), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", app], env=env,
                            cwd=stack, stdin=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    http.get("/tasks/0")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline and proc.poll() is None, f"{app} did not start"
                    time.sleep(0.1)
            yield http
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_fastapi_recipe(stack: Path) -> None:
    with served(stack, "fastapi_app:app") as http:
        r = http.post("/orders/7", params={"email": "a@example.com"})
        assert r.status_code == 200, r.text
        task_id = r.json()["task_id"]
        assert _wait_done(http, task_id) == {"id": task_id, "state": "succeeded",
                                             "result": "receipt for order 7 sent to a@example.com (attempt 1)"}
        assert http.post("/invoices", json=[10.0, 5.0]).json() == {"total": 18.0}


def test_the_flask_recipe(stack: Path) -> None:
    with served(stack, "flask_app:app") as http:
        r = http.post("/orders/8", params={"email": "b@example.com"})
        assert r.status_code == 200, r.text
        task_id = r.json()["task_id"]
        done = _wait_done(http, task_id)
        assert done["state"] == "succeeded" and done["result"].startswith("receipt for order 8 sent to b@example.com")
        assert http.post("/invoices", json=[1.0, 2.0]).json() == {"total": 3.6}
