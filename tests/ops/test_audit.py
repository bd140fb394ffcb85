"""The audit log (issue 13, docs/security.md): every operator's action, every change of a user or token and
every failed login is an event of no task with its actor, read over TCP (``runq audit``) and HTTP
(``/api/server-events``); cancels and retries also name their actor in the task's timeline."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from test_ownership import Tcp, _principals

from runq.app.core import CoreConfig
from runq.app.server import Server, ServerConfig

pytestmark = [pytest.mark.trio]

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNQ_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "runq.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False, stdin=subprocess.DEVNULL)


async def test_every_operators_action_is_in_the_audit_log_with_its_actor(nursery: trio.Nursery,
                                                                         tmp_path: Path) -> None:
    db = str(tmp_path / "runq.db")
    tokens = await trio.to_thread.run_sync(_principals, db)
    srv = Server(ServerConfig(db=db, port=0, http_port=0, core=CoreConfig(lease_timeout=30.0)))
    await nursery.start(srv.serve)
    with trio.fail_after(60):
        admin = await Tcp.open(srv.port, tokens["admin"])
        actor = f"token:{tokens['admin'][3:11]}"
        alice = await Tcp.open(srv.port, tokens["alice"])
        w = await Tcp.open(srv.port, tokens["w1"], "worker", queues=["q1"])
        tid = (await alice.ask("enqueue", tasks=[{"type": "t"}]))["ids"][0]
        for op, fields in (("pause", {"queue": "q"}), ("resume", {"queue": "q"}),
                           ("drain", {"worker": srv.ops.workers(srv.ops.authenticate(tokens["admin"], "client"))[0]["id"]}),
                           ("set_limit", {"scope": "queue", "name": "q", "concurrency": 2}),
                           ("remove_limit", {"scope": "queue", "name": "q"}),
                           ("set_breaker", {"type": "t"}), ("open_breaker", {"type": "t"}),
                           ("close_breaker", {"type": "t"}), ("remove_breaker", {"type": "t"}),
                           ("schedule_add", {"schedule": {"name": "s", "type": "t", "every": 60.0}}),
                           ("schedule_pause", {"name": "s"}), ("schedule_resume", {"name": "s"}),
                           ("schedule_run", {"name": "s"}), ("schedule_remove", {"name": "s"}),
                           ("cancel", {"id": tid}), ("retry", {"id": tid})):
            r = await admin.ask(op, **fields)
            assert r["op"] != "error", (op, r)
        assert (await alice.ask("cancel", id=tid))["task"]["state"] == "cancelled"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.http_port}", timeout=20) as http:
            r = await http.post("/api/auth/login", json={"username": "bob", "password": "wrong"})
            assert r.status_code == 401
            r = await http.get("/api/server-events", headers={"Authorization": f"Bearer {tokens['viewer']}"})
            events = r.json()["events"]
        audited = [(e["kind"], e["scope"], e["actor"]) for e in events if e["actor"] is not None]
        assert audited == [
            ("queue_paused", "queue:q", actor), ("queue_resumed", "queue:q", actor),
            ("worker_drained", audited[2][1], actor),
            ("limit_set", "queue:q", actor), ("limit_removed", "queue:q", actor),
            ("breaker_set", "type:t", actor), ("breaker_open", "type:t", actor), ("breaker_closed", "type:t", actor),
            ("breaker_removed", "type:t", actor),
            ("schedule_added", "schedule:s", actor), ("schedule_paused", "schedule:s", actor),
            ("schedule_resumed", "schedule:s", actor), ("schedule_run", "schedule:s", actor),
            ("schedule_removed", "schedule:s", actor),
            ("task_cancelled", f"task:{tid}", actor), ("task_retried", f"task:{tid}", actor),
            ("task_cancelled", f"task:{tid}", "alice"),
            ("login_failed", "auth", "bob"),
        ]
        assert audited[2][1].startswith("worker:w")
        # the task's timeline names who cancelled and retried it
        timeline = (await alice.ask("events", id=tid))["events"]
        assert [(e["kind"], e["detail"]) for e in timeline if e["kind"] in ("cancelled", "retried")] == [
            ("cancelled", f"by {actor}"), ("retried", f"manual retry by {actor}"), ("cancelled", "by alice")]
        # runq audit (the CLI, over TCP): the same log; a user may not read it
        r = await trio.to_thread.run_sync(functools.partial(run_cli, "audit", "--json", "--server",
                                                            f"127.0.0.1:{srv.port}", "--token", tokens["viewer"]))
        assert r.returncode == 0, r.stderr
        assert [(e["kind"], e["actor"]) for e in json.loads(r.stdout)] == [(k, a) for k, _, a in audited]
        r = await trio.to_thread.run_sync(functools.partial(run_cli, "audit", "--server", f"127.0.0.1:{srv.port}",
                                                            "--token", tokens["alice"]))
        assert r.returncode == 1 and "forbidden" in r.stderr
        for c in (admin, alice, w):
            await c.close()
