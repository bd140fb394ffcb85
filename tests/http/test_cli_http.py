"""End to end: ``runq serve --http-port`` and a ``runq worker`` process, followed through the HTTP API."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from http_helpers import IGNORE_HTTPX_STREAM_GENERATORS

pytestmark = [pytest.mark.http, pytest.mark.trio, IGNORE_HTTPX_STREAM_GENERATORS]

HERE = Path(__file__).resolve().parent


async def _serve(tmp_path: Path, env: dict[str, str], *extra: str) -> tuple[trio.Process, str]:
    """Start ``runq serve``; return the process and its 'runq serving on ...' line."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "runq.cli", "serve", "--db", str(tmp_path / "runq.db"), "--port", "0", *extra],
        stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    buf = b""
    with trio.fail_after(20):
        while b"runq serving on" not in buf:
            chunk = await proc.stderr.receive_some()
            assert chunk, buf.decode()
            buf += chunk
    line = next(ln for ln in buf.decode().splitlines() if "runq serving on" in ln)
    return proc, line


async def _stop(proc: trio.Process) -> None:
    proc.terminate()
    with trio.fail_after(15):
        assert await proc.wait() == 0


async def test_serve_with_http_and_a_worker_process(tmp_path: Path, runq_env: dict[str, str]) -> None:
    server, line = await _serve(tmp_path, runq_env)
    m = re.search(r"runq serving on 127\.0\.0\.1:(\d+), HTTP API on (http://127\.0\.0\.1:\d+)", line)
    assert m, line
    tcp, url = m.group(1), m.group(2)
    env = dict(runq_env, PYTHONPATH=f"{HERE}:{runq_env['PYTHONPATH']}")
    worker = await trio.lowlevel.open_process(
        [sys.executable, "-m", "runq.cli", "worker", "http_tasks:worker", "--server", f"127.0.0.1:{tcp}"],
        env=env, cwd=HERE)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=20) as c, \
                c.stream("GET", "/api/events", params={"type": "square"}) as events:
            lines = events.aiter_lines()
            with trio.fail_after(20):
                assert json.loads((await lines.__anext__())[6:])["op"] == "subscribed"
                ids = (await c.post("/api/tasks/batch", json={"tasks": [{"type": "square", "data": n}
                                                                         for n in range(5)]})).json()["task_ids"]
                results = {}
                async for ln in lines:
                    if ln.startswith("data: "):
                        ev = json.loads(ln[6:])
                        if ev.get("status") == "succeeded":
                            results[ev["id"]] = ev["result"]
                            if len(results) == 5:
                                break
            assert results == {tid: n * n for n, tid in enumerate(ids)}
            t = (await c.get(f"/api/tasks/{ids[3]}")).json()
            assert t["status"] == "succeeded" and t["result"] == 9 and t["progress"] == 0.5
            [w] = (await c.get("/api/workers")).json()["workers"]
            assert w["pid"] == worker.pid and w["concurrency"] == 2
            await lines.aclose()
    finally:
        worker.terminate()
        with trio.fail_after(15):
            await worker.wait()
        await _stop(server)


async def test_http_port_zero_disables_the_api(tmp_path: Path, runq_env: dict[str, str]) -> None:
    server, line = await _serve(tmp_path, runq_env, "--http-port", "0")
    try:
        assert "HTTP" not in line, line
    finally:
        await _stop(server)


async def test_http_port_from_the_environment(tmp_path: Path, runq_env: dict[str, str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server, line = await _serve(tmp_path, dict(runq_env, RUNQ_HTTP_PORT=str(port)))
    try:
        assert f"HTTP API on http://127.0.0.1:{port}" in line, line
        async with httpx.AsyncClient() as c:
            assert (await c.get(f"http://127.0.0.1:{port}/healthz")).json() == {"status": "ok"}
    finally:
        await _stop(server)


async def test_a_keep_alive_connection_goes_on_after_an_answer_given_before_the_body_was_read(
        tmp_path: Path, runq_env: dict[str, str]) -> None:
    """Answers given without reading the request's body (401, 404, 405, a bad query parameter, /healthz)
    left the keep-alive connection hanging now and then (seen with the server in its own process)."""
    server, line = await _serve(tmp_path, dict(runq_env, RUNQ_TOKEN="tok"))
    url = line.split("HTTP API on ")[1].split()[0]
    auth = {"Authorization": "Bearer tok"}
    try:
        async with httpx.AsyncClient(base_url=url, timeout=2) as c:
            with trio.fail_after(60):
                for method, path, headers, status in [
                        ("POST", "/api/tasks", {}, 401), ("POST", "/api/nothing", auth, 404),
                        ("PATCH", "/metrics", auth, 405), ("POST", "/api/tasks?colour=red", auth, 400),
                        ("GET", "/healthz", {}, 200)]:
                    for _ in range(40):
                        r = await c.request(method, path, content=b"x" * 500, headers=headers)
                        assert r.status_code == status, (method, path, r.text)
                        assert (await c.get("/healthz")).status_code == 200, (method, path)
    finally:
        await _stop(server)
