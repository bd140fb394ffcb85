"""A client object made before ``fork()`` (gunicorn ``--preload``, a ``multiprocessing`` pool): the child is
another client (calls.py rule 6, docs/clients.md). The fork happens in a process of its own (a script run
with ``subprocess``), single-threaded, not in pytest's process (which runs the server in a thread)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

from threaded_server import ThreadedServer

from runq import SyncClient

_SYNC = """
import json, os, sys
from runq import SyncClient

c = SyncClient(sys.argv[1])
before = c.enqueue("t", "before")
first_client = c._calls.client_id
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    try:
        out = {"id": c.enqueue("t", "child"), "again": c.enqueue("t", "child again"),
               "client_id": c._calls.client_id, "connections": c.connections}
    except BaseException as exc:
        out = {"error": repr(exc)}
    os.write(w, json.dumps(out).encode())
    os._exit(0)
os.close(w)
parent = c.enqueue("t", "parent")  # (while the child runs)
with os.fdopen(r) as f:
    child = json.loads(f.read())
os.waitpid(pid, 0)
after = c.enqueue("t", "after")  # the child has exited: its copy of the socket is closed, not shut down
print(json.dumps({"before": before, "parent": parent, "after": after, "child": child,
                  "client_id": c._calls.client_id, "first_client": first_client, "connections": c.connections}))
"""

_ASYNC = """
import asyncio, json, os, sys
from runq import Client
from runq.protocol.errors import ConnectionClosed

async def in_child(c):
    try:
        return {"id": await asyncio.wait_for(c.enqueue("t", "child"), 5)}
    except ConnectionClosed as exc:
        return {"error": type(exc).__name__, "message": str(exc)}

async def main():
    async with Client(sys.argv[1]) as c:
        before = await c.enqueue("t", "before")
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:  # (the child runs a loop of its own: the parent's is not running in it)
                out = asyncio.run(in_child(c))
            except BaseException as exc:
                out = {"error": repr(exc)}
            os.write(w, json.dumps(out).encode())
            os._exit(0)
        os.close(w)
        parent = await c.enqueue("t", "parent")
        with os.fdopen(r) as f:
            child = json.loads(await asyncio.to_thread(f.read))
        await asyncio.to_thread(os.waitpid, pid, 0)
        after = await c.enqueue("t", "after")
        print(json.dumps({"before": before, "parent": parent, "after": after, "child": child,
                          "connections": c.connections}))

asyncio.run(main())
"""


def _run(script: str, address: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), address], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_a_sync_client_made_before_fork_works_in_both_processes(threaded_server: ThreadedServer) -> None:
    out = _run(_SYNC, threaded_server.address)
    child = out["child"]
    assert "error" not in child, child["error"]
    ids = [out["before"], out["parent"], out["after"], child["id"], child["again"]]
    assert len(set(ids)) == 5  # every enqueue is a task of its own
    assert child["client_id"] not in (out["first_client"], out["client_id"])  # another client...
    assert child["connections"] == 2  # ...on a connection of its own (the constructor's one counted)
    assert out["client_id"] == out["first_client"] and out["connections"] == 1  # the parent's went on
    with SyncClient(threaded_server.address) as c:
        assert [c.get(tid)["payload"] for tid in ids] == ["before", "parent", "after", "child", "child again"]
        assert c.stats()["enqueued"] == 5


def test_a_client_made_before_fork_refuses_calls_in_the_child(threaded_server: ThreadedServer) -> None:
    out = _run(_ASYNC, threaded_server.address)
    child = out["child"]
    assert child.get("error") == "ConnectionClosed", child
    assert "made before fork()" in child["message"] and "make a new Client in the child" in child["message"]
    assert out["connections"] == 1  # the parent's connection went on
    ids = [out["before"], out["parent"], out["after"]]
    with SyncClient(threaded_server.address) as c:
        assert [c.get(tid)["payload"] for tid in ids] == ["before", "parent", "after"]
        assert c.stats()["enqueued"] == 3
