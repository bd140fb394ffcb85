"""Bad input on the wire: an error frame, that connection closed, every other connection unharmed.

Raw trio sockets play the misbehaving peer; a ``runq.Client`` opened before it plays the bystander that
must not notice anything. docs/protocol.md sections 3, 4 and 9 are what these tests hold the server to.
"""

from __future__ import annotations

import math
import sqlite3
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from server_helpers import VirtualClock

from runq import Client, RemoteError, Unauthorized
from runq.app.server import Server, ServerConfig
from runq.protocol.frames import Connection, encode_frame
from runq.protocol.values import encode_value


def hello(role: str = "client", **fields: Any) -> bytes:
    return encode_frame({"op": "hello", "version": 1, "role": role, **fields})


HELLO = hello()
WORKER_HELLO = hello("worker")


@asynccontextmanager
async def running(tmp_path: Path, **cfg: Any) -> AsyncIterator[Server]:
    """A server of our own (for settings the shared fixture does not have); stopped on exit."""
    srv = Server(ServerConfig(db=str(tmp_path / "own.db"), port=0, **cfg))
    async with trio.open_nursery() as nursery:
        await nursery.start(srv.serve)
        try:
            yield srv
        finally:
            srv.stopping.set()
            nursery.cancel_scope.deadline = trio.current_time() + 2  # a graceful stop, or else a cancel


class Raw:
    """One hand-driven connection: send bytes, read messages."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = Connection()
        self.closed = False

    @classmethod
    async def open(cls, port: int | None) -> Raw:
        assert port is not None
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def recv(self) -> dict[str, Any]:
        while True:
            msg = self.conn.next_message()
            if msg is not None:
                return msg
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("server closed the connection")
            self.conn.receive_data(data)

    async def until_closed(self) -> list[dict[str, Any]]:
        """Every message the server sends until it closes the connection."""
        out = []
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:  # reset: the server closed with our bytes unread
                data = b""
            self.conn.receive_data(data)
            out.extend(self.conn.messages())
            if not data:
                self.closed = True
                return out


async def leased_worker(port: int | None) -> tuple[Raw, dict[str, Any]]:
    """A raw worker holding the lease of the one ready task."""
    raw = await Raw.open(port)
    await raw.stream.send_all(WORKER_HELLO + encode_frame({"op": "credit", "n": 1}))
    assert (await raw.recv())["op"] == "welcome"
    (task,) = (await raw.recv())["tasks"]
    return raw, task


def blamed_rid(data: bytes, code: str) -> Any:
    """The ``rid`` the error that closes the connection must name (docs/protocol.md section 4): the rid of the
    message that broke the rules, the last of ``data``, when the server could read it (a map, section 1)
    after the hello; none for a frame it could not read, nor at hello (the connection never started)."""
    if code in ("bad_frame", "frame_too_large"):
        return None
    conn = Connection(1 << 30)
    conn.receive_data(data)
    msgs = conn.messages()
    return msgs[-1].get("rid") if len(msgs) > 1 else None


async def closed_with(port: int | None, data: bytes, code: str, *, eof: bool = False,
                      rid: Any = None) -> list[dict[str, Any]]:
    """Send ``data`` on a new connection; it must end with an error frame ``code`` (naming the request
    ``rid``, if given) and a close."""
    raw = await Raw.open(port)
    async with raw.stream:
        await raw.stream.send_all(data)
        if eof:
            await raw.stream.send_eof()
        msgs = await raw.until_closed()
    assert msgs, f"connection closed without an error frame (expected {code})"
    err = msgs[-1]
    assert err["op"] == "error" and err["code"] == code, msgs
    assert isinstance(err["message"], str) and err["message"]
    assert err.get("rid") == rid  # (it names the request to blame, when there is one: absent otherwise)
    assert rid is not None or "rid" not in err
    assert all(m["op"] != "error" for m in msgs[:-1]), msgs
    return msgs


async def still_works(client: Client, before: int) -> None:
    """The bystander's connection works as if nothing happened."""
    after = await client.enqueue("t", {"after": True})
    assert after > before
    assert (await client.get(before))["payload"] == "before"
    assert (await client.get(after))["payload"] == {"after": True}


# ---------------------------------------------------------------- bad input closes only that connection

def msg(m: dict[str, Any]) -> bytes:
    return encode_frame(m)


BAD_INPUT = [
    # framing
    pytest.param(HELLO + struct.pack(">I", 2) + b"\xc1\xc1", "bad_frame", id="not-msgpack"),
    pytest.param(HELLO + struct.pack(">I", 3) + msgpack.packb([1, 2]), "bad_frame", id="not-a-map"),
    pytest.param(HELLO + msg({"rid": 1, "id": 1}), "bad_frame", id="no-op"),
    pytest.param(HELLO + struct.pack(">I", 0), "bad_frame", id="empty-body"),
    pytest.param(struct.pack(">I", 1) + b"\xc1", "bad_frame", id="bad-first-frame"),
    pytest.param(HELLO + struct.pack(">I", 64 << 20), "frame_too_large", id="oversized-header-only"),
    pytest.param(struct.pack(">I", (16 << 20) + 1), "frame_too_large", id="oversized-hello"),
    # ops
    pytest.param(HELLO + msg({"op": "launch_missiles", "rid": 1}), "unknown_op", id="unknown-op"),
    pytest.param(HELLO + msg({"op": "credit", "n": 1}), "unknown_op", id="worker-op-from-client"),
    pytest.param(HELLO + HELLO, "unknown_op", id="hello-again"),
    pytest.param(hello("watcher") + msg({"op": "enqueue", "rid": 1, "tasks": [{"type": "t"}]}), "unknown_op",
                 id="watcher-enqueue"),
    pytest.param(hello("watcher") + msg({"op": "cancel", "rid": 1, "id": 1}), "unknown_op", id="watcher-cancel"),
    pytest.param(WORKER_HELLO + msg({"op": "enqueue", "tasks": [{"type": "t"}]}), "unknown_op",
                 id="client-op-from-worker"),
    # fields
    pytest.param(HELLO + msg({"op": "enqueue", "rid": 1, "tasks": "nope"}), "bad_message", id="enqueue-tasks-str"),
    pytest.param(HELLO + msg({"op": "enqueue", "rid": 1, "tasks": [{"type": "t", "payload": "str"}]}),
                 "bad_message", id="enqueue-payload-str"),
    pytest.param(HELLO + msg({"op": "enqueue", "rid": 1, "tasks": [{"type": "t", "priority": True}]}),
                 "bad_message", id="enqueue-priority-bool"),
    pytest.param(HELLO + msg({"op": "get", "rid": 1}), "bad_message", id="get-without-id"),
    pytest.param(HELLO + msg({"op": "get", "rid": 1, "id": True}), "bad_message", id="get-id-bool"),
    pytest.param(HELLO + msg({"op": "list", "rid": 1, "limit": "10"}), "bad_message", id="list-limit-str"),
    pytest.param(WORKER_HELLO + msg({"op": "credit"}), "bad_message", id="credit-without-n"),
    pytest.param(WORKER_HELLO + msg({"op": "done", "results": [[1, 1]]}), "bad_message", id="done-result-pair"),
    pytest.param(WORKER_HELLO + msg({"op": "fail", "id": 1, "lease": 1}), "bad_message", id="fail-without-error"),
    pytest.param(WORKER_HELLO + msg({"op": "fail", "id": 1, "attempt": 1, "error": "x"}), "bad_message",
                 id="fail-without-lease"),
    pytest.param(WORKER_HELLO + msg({"op": "progress", "id": 1, "lease": 1, "value": "str"}), "bad_message",
                 id="progress-value-str"),
    # integers beyond 64 bits are a wrong type (section 0), wherever they are
    pytest.param(HELLO + msg({"op": "cancel", "rid": 1, "id": 2**64 - 1}), "bad_message", id="cancel-id-2**64-1"),
    pytest.param(WORKER_HELLO + msg({"op": "done", "results": [[2**63, 1, b""]]}), "bad_message",
                 id="done-id-2**63"),
    pytest.param(WORKER_HELLO + msg({"op": "done", "results": [[1, 1, 2**64 - 1]]}), "bad_message",
                 id="done-result-int"),
    pytest.param(WORKER_HELLO + msg({"op": "fail", "id": 1, "lease": 1, "error": "x", "retries": 2**63}),
                 "bad_message", id="fail-retries-2**63"),
    pytest.param(hello("worker", pid=2**64 - 1), "bad_message", id="hello-pid-2**64-1"),
    # hello
    pytest.param(msg({"op": "enqueue", "tasks": []}), "hello_required", id="first-frame-enqueue"),
    pytest.param(msg({"op": "ping", "rid": 1}), "hello_required", id="first-frame-ping"),
    pytest.param(msg({"op": "hello", "version": 99, "role": "client"}), "version", id="version-99"),
    pytest.param(msg({"op": "hello", "versions": [2, 3], "role": "client"}), "version", id="versions-2-3"),
    pytest.param(msg({"op": "hello", "role": "client"}), "bad_message", id="hello-without-version"),
    pytest.param(msg({"op": "hello", "version": 1, "role": "root"}), "bad_message", id="hello-role-root"),
    pytest.param(msg({"op": "hello", "version": 1, "role": "worker", "concurrency": 0}), "bad_message",
                 id="hello-concurrency-0"),
]


@pytest.mark.parametrize(("frames", "code"), BAD_INPUT)
@pytest.mark.trio
async def test_bad_input_closes_only_that_connection(server: Server, frames: bytes, code: str) -> None:
    with trio.fail_after(10):
        async with Client(f"127.0.0.1:{server.port}") as bystander:
            before = await bystander.enqueue("t", "before")
            msgs = await closed_with(server.port, frames, code, rid=blamed_rid(frames, code))
            if frames.startswith((HELLO, WORKER_HELLO, hello("watcher"))):
                assert msgs[0]["op"] == "welcome"  # the hello was fine: welcome came first
            else:
                assert len(msgs) == 1  # refused at hello: nothing but the error
            assert server.stats.protocol_errors == 1
            await still_works(bystander, before)
            assert server.stats.protocol_errors == 1


@pytest.mark.trio
async def test_eof_inside_a_frame_is_a_bad_frame(server: Server) -> None:
    with trio.fail_after(10):
        async with Client(f"127.0.0.1:{server.port}") as bystander:
            before = await bystander.enqueue("t", "before")
            frame = encode_frame({"op": "get", "rid": 1, "id": before})
            msgs = await closed_with(server.port, HELLO + frame[:-3], "bad_frame", eof=True)
            assert [m["op"] for m in msgs] == ["welcome", "error"]
            await still_works(bystander, before)
            assert server.stats.protocol_errors == 1


@pytest.mark.trio
async def test_clean_eof_closes_without_error(server: Server) -> None:
    with trio.fail_after(10):
        raw = await Raw.open(server.port)  # closes before saying anything
        async with raw.stream:
            await raw.stream.send_eof()
            assert await raw.until_closed() == []
        raw = await Raw.open(server.port)  # a hello, a request, then EOF between frames
        async with raw.stream:
            await raw.stream.send_all(HELLO + encode_frame({"op": "ping", "rid": 5}))
            await raw.stream.send_eof()
            msgs = await raw.until_closed()
        assert [(m["op"], m.get("rid")) for m in msgs] == [("welcome", None), ("pong", 5)]
        assert server.stats.protocol_errors == 0


@pytest.mark.trio
async def test_a_worker_closed_for_bad_input_loses_its_lease(server: Server) -> None:
    with trio.fail_after(10):
        async with Client(f"127.0.0.1:{server.port}") as client:
            tid = await client.enqueue("t", "before")
            raw, task = await leased_worker(server.port)
            async with raw.stream:
                assert task["id"] == tid and task["attempt"] == 1
                await raw.stream.send_all(struct.pack(">I", 1) + b"\xc1")
                assert (await raw.until_closed())[-1]["code"] == "bad_frame"
            with trio.fail_after(5):
                while (t := await client.get(tid))["state"] != "ready":
                    await trio.sleep(0.01)
            assert t["attempt"] == 1 and t["worker"] is None
            kinds = [(e["kind"], e["detail"]) for e in await client.events(tid)]
            assert kinds == [("enqueued", None), ("started", None), ("lost", "connection closed")]


@pytest.mark.trio
async def test_what_came_before_a_broken_message_is_committed_and_answered_before_the_error(server: Server) -> None:
    """The messages of one read before the one that closes the connection are carried out, and answered once
    committed, before the error frame (that names the broken request); those after it are not read."""
    with trio.fail_after(10):
        raw = await Raw.open(server.port)
        async with raw.stream:
            await raw.stream.send_all(HELLO + msg({"op": "enqueue", "rid": 1, "tasks": [{"type": "t"}]})
                                      + msg({"op": "pause", "rid": 2, "queue": "q"})
                                      + msg({"op": "enqueue", "rid": 3, "tasks": [{"type": "t", "priority": "5"}]})
                                      + msg({"op": "enqueue", "rid": 4, "tasks": [{"type": "t"}]}))
            msgs = await raw.until_closed()
        assert [(m["op"], m.get("rid")) for m in msgs] == [
            ("welcome", None), ("enqueued", 1), ("ok", 2), ("error", 3)]
        assert msgs[-1]["code"] == "bad_message" and "priority" in msgs[-1]["message"]
        conn = sqlite3.connect(server.config.db)
        try:
            assert conn.execute("SELECT id FROM tasks").fetchall() == [(msgs[1]["ids"][0],)]
            assert conn.execute("SELECT paused FROM queues WHERE name = 'q'").fetchall() == [(1,)]
        finally:
            conn.close()


# ---------------------------------------------------------------- limits and settings

@pytest.mark.trio
async def test_a_small_frame_limit_is_enforced(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with running(tmp_path, max_frame=1024) as srv:
            port = srv.port
            assert port is not None
            async with Client(f"127.0.0.1:{port}") as bystander:
                before = await bystander.enqueue("t", "before")
                assert bystander.welcome["max_frame"] == 1024
                # a body of exactly max_frame bytes is accepted
                ping: dict[str, Any] = {"op": "ping", "rid": 1, "pad": b""}
                ping["pad"] = b"x" * (1024 - len(msgpack.packb(ping)) - 1)  # bin8 -> bin16 header grows by 1
                body = msgpack.packb(ping)
                assert len(body) == 1024
                raw = await Raw.open(port)
                async with raw.stream:
                    await raw.stream.send_all(HELLO + struct.pack(">I", len(body)) + body)
                    assert (await raw.recv())["op"] == "welcome"
                    assert await raw.recv() == {"op": "pong", "rid": 1}
                    # one more byte: refused on the header alone, no body sent
                    await raw.stream.send_all(struct.pack(">I", 1025))
                    msgs = await raw.until_closed()
                assert [m["code"] for m in msgs] == ["frame_too_large"]
                assert "1025" in msgs[0]["message"] and "rid" not in msgs[0]
                # a real request over the limit: same answer
                big = msgpack.packb({"op": "enqueue", "tasks": [{"type": "t", "payload": b"x" * 2000}]})
                await closed_with(port, HELLO + struct.pack(">I", len(big)) + big, "frame_too_large")
                # one whose first bytes show its rid: the error names it (docs/protocol.md section 4)
                big = msgpack.packb({"op": "enqueue", "rid": 9, "tasks": [{"type": "t", "payload": b"x" * 2000}]})
                await closed_with(port, HELLO + struct.pack(">I", len(big)) + big, "frame_too_large", rid=9)
                assert srv.stats.protocol_errors == 3
                await still_works(bystander, before)


@pytest.mark.trio
async def test_hello_deadline(tmp_path: Path, nursery: trio.Nursery, virtual_clock: VirtualClock) -> None:
    deadline = 5.0
    with trio.fail_after(60):
        async with running(tmp_path, hello_timeout=deadline) as srv:
            virtual_clock.follow(nursery, srv)
            port = srv.port
            assert port is not None
            async with Client(f"127.0.0.1:{port}") as bystander:  # said hello in time
                before = await bystander.enqueue("t", "before")
                t0 = trio.current_time()
                results: dict[str, list[dict[str, Any]]] = {}
                closed_after: dict[str, float] = {}

                async def silent() -> None:
                    results["silent"] = await closed_with(port, b"", "hello_timeout")
                    closed_after["silent"] = trio.current_time() - t0

                async def half_a_hello() -> None:  # a hello must arrive whole in time
                    results["half"] = await closed_with(port, HELLO[:20], "hello_timeout")
                    closed_after["half"] = trio.current_time() - t0

                async with trio.open_nursery() as n:
                    n.start_soon(silent)
                    n.start_soon(half_a_hello)
                assert closed_after == {"silent": pytest.approx(deadline), "half": pytest.approx(deadline)}
                assert [len(m) for m in results.values()] == [1, 1]
                assert srv.stats.protocol_errors == 2
                # the bystander outlived the deadline many times over: it only applies to hello
                await trio.sleep(5 * deadline)
                await still_works(bystander, before)


@pytest.mark.trio
async def test_token(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with running(tmp_path, token="s3cret") as srv:
            port = srv.port
            assert port is not None
            async with Client(f"127.0.0.1:{port}", token="s3cret") as bystander:
                before = await bystander.enqueue("t", "before")
                await closed_with(port, HELLO, "unauthorized")                          # missing
                await closed_with(port, hello(token="wrong"), "unauthorized")           # wrong
                await closed_with(port, hello(token="s3cret "), "unauthorized")         # near miss
                await closed_with(port, hello("worker", token="S3CRET"), "unauthorized")
                # the version is checked before the token
                await closed_with(port, encode_frame({"op": "hello", "version": 2, "role": "client"}), "version")
                with pytest.raises(Unauthorized):
                    async with Client(f"127.0.0.1:{port}", token="wrong"):
                        pass
                assert srv.stats.protocol_errors == 6
                await still_works(bystander, before)
                raw = await Raw.open(port)
                async with raw.stream:
                    await raw.stream.send_all(hello("watcher", token="s3cret"))
                    assert (await raw.recv())["op"] == "welcome"


@pytest.mark.trio
async def test_a_token_is_ignored_by_a_server_without_one(server: Server) -> None:
    with trio.fail_after(10):
        raw = await Raw.open(server.port)
        async with raw.stream:
            await raw.stream.send_all(hello(token="anything"))
            assert (await raw.recv())["op"] == "welcome"


@pytest.mark.trio
async def test_open_connections_hear_that_the_server_stops(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with running(tmp_path) as srv:
            assert srv.port is not None
            raw = await Raw.open(srv.port)
            await raw.stream.send_all(HELLO)
            assert (await raw.recv())["op"] == "welcome"
            await srv.wait_committed()  # nothing left to commit: the stop goes straight to closing
            srv.stopping.set()
            msgs = await raw.until_closed()
            await raw.stream.aclose()
        assert [(m["op"], m["code"]) for m in msgs] == [("error", "shutting_down")]
        assert srv.stats.protocol_errors == 0


# ---------------------------------------------------------------- requests: errors, rids, pipelining

@pytest.mark.trio
async def test_welcome(server: Server) -> None:
    with trio.fail_after(10):
        for role in ("client", "watcher", "worker"):
            raw = await Raw.open(server.port)
            async with raw.stream:
                await raw.stream.send_all(encode_frame({"op": "hello", "versions": [0, 1, 5], "role": role}))
                w = await raw.recv()
            assert w["op"] == "welcome" and w["version"] == 1 and w["server"].startswith("runq/")
            assert w["max_frame"] == 16 << 20 and w["lease_timeout"] == server.config.core.lease_timeout
            assert math.isclose(w["heartbeat"], w["lease_timeout"] / 3)
            assert ("worker_id" in w) == (role == "worker")


@pytest.mark.trio
async def test_pipelined_requests_after_hello_and_rid_echo(server: Server) -> None:
    with trio.fail_after(10):
        raw = await Raw.open(server.port)
        async with raw.stream:
            # everything in one write, without waiting for welcome
            await raw.stream.send_all(
                HELLO
                + encode_frame({"op": "ping"})
                + encode_frame({"op": "ping", "rid": "x"})
                + encode_frame({"op": "enqueue", "rid": [7, {"k": b"v"}], "tasks": [
                    {"type": "t", "payload": encode_value({"n": 1})}, {"type": "t", "key": "k"},
                    {"type": "t", "key": "k"}]})
                + encode_frame({"op": "enqueue", "rid": 8, "tasks": []})
                + encode_frame({"op": "get", "rid": -1, "id": 1})
            )
            msgs = [await raw.recv() for _ in range(6)]
        assert msgs[0]["op"] == "welcome"
        assert msgs[1] == {"op": "pong", "rid": None} and msgs[2] == {"op": "pong", "rid": "x"}
        by_rid = {repr(m["rid"]): m for m in msgs[3:]}
        enq = by_rid[repr([7, {"k": b"v"}])]
        assert enq == {"op": "enqueued", "rid": [7, {"k": b"v"}], "ids": [1, 2, 2], "created": [True, True, False]}
        assert by_rid["8"] == {"op": "enqueued", "rid": 8, "ids": [], "created": []}
        task = by_rid["-1"]["task"]
        assert task["payload"] == encode_value({"n": 1}) and task["state"] == "ready"


@pytest.mark.trio
async def test_request_errors_carry_the_rid_and_keep_the_connection(server: Server) -> None:
    with trio.fail_after(10):
        raw = await Raw.open(server.port)
        async with raw.stream:
            await raw.stream.send_all(HELLO)
            assert (await raw.recv())["op"] == "welcome"

            async def ask(msg: dict[str, Any]) -> dict[str, Any]:
                await raw.stream.send_all(encode_frame(msg))
                reply = await raw.recv()
                assert reply["rid"] == msg.get("rid")
                return reply

            # the whole enqueue is refused: the valid spec before the bad one is not enqueued either
            r = await ask({"op": "enqueue", "rid": "a", "tasks": [{"type": "ok"}, {"type": "t", "priority": 2**40}]})
            assert r["op"] == "error" and r["code"] == "bad_request" and "32 bits" in r["message"]
            r = await ask({"op": "enqueue", "tasks": [{"type": "t", "delay": 1, "run_at": 5}]})  # no rid: nil
            assert r["op"] == "error" and r["code"] == "bad_request" and "rid" in r and r["rid"] is None
            r = await ask({"op": "get", "rid": 2, "id": 12345})
            assert (r["op"], r["code"]) == ("error", "not_found")
            r = await ask({"op": "list", "rid": 3, "limit": 0})
            assert (r["op"], r["code"]) == ("error", "bad_request")
            r = await ask({"op": "list", "rid": 4, "state": "failing"})
            assert (r["op"], r["code"]) == ("error", "bad_request")
            r = await ask({"op": "enqueue", "rid": 5, "tasks": [{"type": "t"}]})
            assert r["op"] == "enqueued" and r["ids"] == [1]  # nothing was created by the refused requests
            r = await ask({"op": "cancel", "rid": 6, "id": 1})
            assert r["op"] == "task" and r["task"]["state"] == "cancelled"
            r = await ask({"op": "cancel", "rid": 7, "id": 1})
            assert (r["op"], r["code"]) == ("error", "invalid_state") and "cancelled" in r["message"]
            r = await ask({"op": "retry", "rid": 8, "id": 99})
            assert (r["op"], r["code"]) == ("error", "not_found")
            r = await ask({"op": "wait", "rid": 9, "id": 99})
            assert (r["op"], r["code"]) == ("error", "not_found")
            r = await ask({"op": "ping", "rid": 10})
            assert r == {"op": "pong", "rid": 10}
        assert server.stats.protocol_errors == 0


@pytest.mark.trio
async def test_request_errors_through_the_sdk(server: Server) -> None:
    with trio.fail_after(10):
        async with Client(f"127.0.0.1:{server.port}") as c:
            with pytest.raises(RemoteError) as exc_info:
                await c.enqueue("t", priority=2**40)
            assert exc_info.value.code == "bad_request"
            with pytest.raises(RemoteError) as exc_info:
                await c.cancel(12345)
            assert exc_info.value.code == "not_found"
            tid = await c.enqueue("t")
            await c.cancel(tid)
            with pytest.raises(RemoteError) as exc_info:
                await c.cancel(tid)
            assert exc_info.value.code == "invalid_state"
            assert await c.enqueue("t") == tid + 1  # still usable
            assert server.stats.protocol_errors == 0


# ---------------------------------------------------------------- bugs: input that harms more than its connection

@pytest.mark.parametrize("request_", [
    {"op": "get", "rid": 1, "id": 2**63},
    {"op": "list", "rid": 1, "cursor": 2**64 - 1},
    {"op": "subscribe", "rid": 1, "queues": [[1]]},
    {"op": "wait", "rid": 1, "id": 1, "timeout": float("nan")},
], ids=["get-id-2**63", "list-cursor-2**64-1", "subscribe-unhashable", "wait-timeout-nan"])
@pytest.mark.trio
async def test_odd_values_get_an_error_not_a_crash(tmp_path: Path, request_: dict[str, Any]) -> None:
    with trio.fail_after(10):
        async with running(tmp_path) as srv:
            assert srv.port is not None
            async with Client(f"127.0.0.1:{srv.port}") as bystander:
                before = await bystander.enqueue("t", "before")
                raw = await Raw.open(srv.port)
                async with raw.stream:
                    await raw.stream.send_all(HELLO + encode_frame(request_))
                    msgs = [await raw.recv(), await raw.recv()]
                assert msgs[0]["op"] == "welcome"
                assert msgs[1]["op"] == "error"
                assert msgs[1]["code"] in ("bad_message", "bad_request", "not_found", "internal")
                await still_works(bystander, before)


@pytest.mark.parametrize("report", [
    {"op": "done", "results": [["ID", "LEASE", {"not": "bin"}]]},
    {"op": "done", "results": [["ID", "LEASE", "a str"]]},
    {"op": "fail", "id": "ID", "lease": "LEASE", "error": "x", "retry_in": float("nan")},
    {"op": "fail", "id": "ID", "lease": "LEASE", "error": "x", "retry_in": float("inf")},
    {"op": "fail", "id": "ID", "lease": "LEASE", "error": "x", "retry_in": -1},
    {"op": "fail", "id": "ID", "lease": "LEASE", "error": "x", "retries": 1001},
    {"op": "fail", "id": "ID", "lease": "LEASE", "error": "x", "retries": -1},
], ids=["done-result-map", "done-result-str", "fail-retry_in-nan", "fail-retry_in-inf", "fail-retry_in-negative",
        "fail-retries-1001", "fail-retries-negative"])
@pytest.mark.trio
async def test_bad_worker_reports_are_refused(tmp_path: Path, report: dict[str, Any]) -> None:
    with trio.fail_after(10):
        async with running(tmp_path) as srv:
            assert srv.port is not None
            async with Client(f"127.0.0.1:{srv.port}") as client:
                before = await client.enqueue("t", "before")
                raw, task = await leased_worker(srv.port)
                async with raw.stream:
                    fill = {"ID": task["id"], "LEASE": task["lease"]}
                    msg = msgpack.unpackb(msgpack.packb(report))  # a deep copy
                    if msg["op"] == "done":
                        msg["results"][0][:2] = [fill[x] for x in msg["results"][0][:2]]
                    else:
                        msg["id"], msg["lease"] = fill["ID"], fill["LEASE"]
                    await raw.stream.send_all(encode_frame(msg) + encode_frame({"op": "ping", "rid": 1}))
                    first = await raw.recv()
                assert first["op"] == "error" and first["code"] in ("bad_message", "bad_request"), first
                with trio.fail_after(2):
                    await still_works(client, before)
                assert srv.stats.store_errors == 0


@pytest.mark.trio
async def test_a_bug_in_a_handler_is_internal_and_closes_only_that_connection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.fail_after(10):
        async with running(tmp_path) as srv:
            assert srv.port is not None
            async with Client(f"127.0.0.1:{srv.port}") as bystander:
                before = await bystander.enqueue("t", "before")

                def broken() -> list[dict[str, Any]]:
                    raise ZeroDivisionError("injected")

                # fault injection: no input reaches a bug any more, so plant one in one operation
                monkeypatch.setattr(srv, "queue_stats", broken)
                raw = await Raw.open(srv.port)
                async with raw.stream:
                    await raw.stream.send_all(HELLO + encode_frame({"op": "ping", "rid": 1})
                                              + encode_frame({"op": "queues", "rid": 2})
                                              + encode_frame({"op": "ping", "rid": 3}))
                    msgs = await raw.until_closed()
                monkeypatch.undo()
                # (the error names the request that met the bug: docs/protocol.md section 4)
                assert [(m["op"], m.get("rid")) for m in msgs] == [("welcome", None), ("pong", 1), ("error", 2)]
                assert msgs[-1]["code"] == "internal" and "ZeroDivisionError: injected" in msgs[-1]["message"]
                await still_works(bystander, before)
                stats = await bystander.stats()
                assert stats["internal_errors"] == 1 and stats["protocol_errors"] == 0
