"""Typed tasks (runq.task): binding and checking arguments, the wire entry, options, the context, models,
and a producer and a worker sharing one definition module against a real server."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
import trio
import typed_tasks as tt

from runq import BadArguments, Client, NoClient, SyncClient, TaskContext, TaskDef, TaskHandle, Worker, task
from runq.app.server import Server
from runq.protocol.tasks import default_client, tasks_in


def payload_of(entry: dict[str, Any]) -> Any:
    return msgpack.unpackb(entry["payload"], raw=False)


# ---------------------------------------------------------------------- binding (producer side)
def test_call_binds_arguments_into_a_map_by_name() -> None:
    entry = tt.send_email.call("a@b.c").entry()
    assert payload_of(entry) == {"to": "a@b.c"}  # defaults are the worker's to apply
    assert payload_of(tt.send_email.call(to="a@b.c", subject="s").entry()) == {"to": "a@b.c", "subject": "s"}
    assert payload_of(tt.add.call(1, 2).entry()) == {"a": 1, "b": 2}
    assert payload_of(tt.variadic.call(1, 2, 3, x=9).entry()) == {"first": 1, "rest": [2, 3], "x": 9}


@pytest.mark.parametrize(("args", "kwargs", "why"), [
    ((), {}, "missing a required argument: 'to'"),
    (("a", "b", "c"), {}, "too many positional arguments"),
    ((), {"to": "a", "cc": "b"}, "unexpected keyword argument 'cc'"),
    ((), {"to": "a", "ctx": None}, "unexpected keyword argument 'ctx'"),  # the context is the worker's
])
def test_call_refuses_arguments_that_do_not_fit(args: tuple[Any, ...], kwargs: dict[str, Any], why: str) -> None:
    with pytest.raises(BadArguments, match=why) as info:
        tt.send_email.call(*args, **kwargs)
    assert "send_email(to: str, subject: str = 'hello')" in str(info.value)  # says what was expected


def test_a_misspelt_keyword_is_named_with_a_suggestion() -> None:
    with pytest.raises(BadArguments, match=r"unexpected keyword argument 'too' \(did you mean 'to'\?\)"):
        tt.send_email.call(too="a@b.c")  # type: ignore[call-arg]  # (not "missing a required argument: 'to'")
    with pytest.raises(BadArguments, match="unexpected keyword argument 'zzz'$"):
        tt.add.call(1, zzz=2)  # type: ignore[call-arg]


def test_enqueue_in_sync_code_says_what_to_use_instead() -> None:
    # called without await outside async code it would only make a coroutine that nothing awaits
    with pytest.raises(TypeError, match=r"enqueue\(\) is async.*sync_client.enqueue\(add.call\(...\)\)"):
        tt.add.enqueue(1)


def test_call_refuses_a_value_msgpack_cannot_carry() -> None:
    with pytest.raises(BadArguments, match="cannot encode object"):
        tt.add.call(object())  # type: ignore[arg-type]


def test_options_come_from_the_definition_and_may_be_changed_per_enqueue() -> None:
    entry = tt.send_email.call("a@b.c").entry()
    assert {k: v for k, v in entry.items() if k != "payload"} == {
        "type": "send_email", "queue": "mail", "timeout": 30.0, "retries": 2}
    entry = tt.send_email.call("a@b.c").entry(queue="urgent", priority=7, delay=5, timeout=10, key="k")
    assert (entry["queue"], entry["priority"], entry["delay"], entry["timeout"], entry["key"]) == (
        "urgent", 7, 5.0, 10.0, "k")
    assert tt.add.call(1).entry() == {"type": "add", "payload": tt.add.call(1).payload}  # no options: none sent
    assert tt.add.call(1).entry(run_at=1e9)["run_at"] == 1e9


def test_an_enqueue_may_not_ask_for_more_than_the_workers_definition_gives() -> None:
    # the worker caps an attempt at its definition's timeout and applies its retries: asking for more or
    # other would be overruled silently, so it is refused where it is asked
    with pytest.raises(ValueError, match="caps every attempt"):
        tt.send_email.call("a").entry(timeout=60)
    with pytest.raises(ValueError, match="sets retries=2"):
        tt.send_email.call("a").entry(retries=5)
    assert tt.send_email.call("a").entry(retries=2)["retries"] == 2
    assert tt.add.call(1).entry(timeout=600, retries=9)["retries"] == 9  # unset in the definition: free


def test_unique_key_from_a_template_or_a_function() -> None:
    assert tt.welcome.call("ann").entry()["key"] == "welcome-ann"
    assert tt.welcome.call("ann").entry(key="other")["key"] == "other"
    keyed = task(key=lambda a, b=1: f"sum-{a + b}")(lambda a, b=1: a + b)
    assert keyed.call(2, b=3).entry()["key"] == "sum-5"
    with pytest.raises(ValueError, match=r"names 'nope', which is not a parameter \(it has: a, b\)"):
        task(key="{nope}")(tt.add.fn)  # found when the task is defined, not at its first enqueue
    with pytest.raises(ValueError, match="names '0'"):
        task(key="x-{0}")(tt.add.fn)
    assert task(key="sum-{a}-{b}")(tt.add.fn).call(1).entry()["key"] == "sum-1-1"  # defaults apply


def test_with_options_copies_the_definition() -> None:
    urgent = tt.send_email.with_options(queue="urgent", priority=9)
    assert (urgent.type, urgent.options.queue, urgent.options.priority, urgent.options.retries) == (
        "send_email", "urgent", 9, 2)
    assert tt.send_email.options.queue == "mail"
    # the worker runs the task with ITS definition: a copy may not ask for more than it either
    with pytest.raises(ValueError, match="caps every attempt"):
        tt.send_email.with_options(timeout=120)
    with pytest.raises(ValueError, match="sets retries=2"):
        tt.send_email.with_options(retries=10)
    assert tt.send_email.with_options(timeout=5).call("a").entry()["timeout"] == 5.0


@pytest.mark.parametrize(("options", "why"), [
    ({"queue": ""}, "queue"), ({"timeout": 0}, "timeout"), ({"retries": 1001}, "retries"),
    ({"priority": 2**31}, "priority"), ({"delay": -1}, "delay"),
])
def test_bad_options_are_refused_at_definition(options: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        task(**options)(tt.add.fn)


def test_the_definition_still_runs_as_a_plain_function() -> None:
    assert tt.add(2, 3) == 5
    assert tt.legacy_shape("x") == "hi x"


# ---------------------------------------------------------------------- the context and the worker side
def test_the_context_goes_by_annotation_or_by_the_name_ctx_never_by_position() -> None:
    def by_name(x, ctx):
        return x

    def by_annotation(x: int, context: TaskContext) -> int:
        return x

    def first(context: TaskContext, x: int) -> int:
        return x

    assert tt.send_email.context_param == "ctx"
    assert task(by_name).context_param == "ctx"
    assert task(by_annotation).context_param == "context"
    assert task(first).context_param == "context"
    assert tt.legacy_shape.context_param is None  # `def greet(payload, greeting="hi")` gets no context
    ctx = object()
    assert task(first).arguments({"x": 1}, ctx) == ([], {"x": 1, "context": ctx})  # type: ignore[arg-type]
    assert tt.legacy_shape.arguments({"payload": 5}, ctx) == ([], {"payload": 5})  # type: ignore[arg-type]


def test_a_handler_by_type_name_takes_the_payload_and_the_context_only_by_name() -> None:
    w = Worker()

    @w.task("greet")
    def greet(payload: Any, greeting: str = "hi") -> str:
        return f"{greeting} {payload}"

    @w.task("with_ctx")
    def with_ctx(payload: Any, ctx: Any) -> Any:
        return payload

    ctx = object()
    assert w.handlers["greet"].arguments("ann", ctx) == (["ann"], {})  # type: ignore[arg-type]
    assert w.handlers["with_ctx"].arguments("ann", ctx) == (["ann"], {"ctx": ctx})  # type: ignore[arg-type]


def test_arguments_rebuild_the_call_from_a_payload_map() -> None:
    assert tt.add.arguments({"a": 1}, None) == ([], {"a": 1})
    assert tt.variadic.arguments({"first": 1, "rest": [2, 3], "x": 9}, None) == ([1, 2, 3], {"x": 9})
    assert tt.variadic.fn(*[1, 2, 3], x=9) == [1, 2, 3, 9]

    def posonly(a: int, b: int = 2, /, c: int = 3) -> int:
        return a + b + c

    assert task(posonly).arguments({"a": 1, "c": 5}, None) == ([1, 2], {"c": 5})
    for bad, why in (({"b": 1}, "missing argument 'a'"), ({"a": 1, "z": 2}, "unexpected argument"),
                     ([1, 2], "takes a map"), ({"first": 1, "rest": 5}, "must be an array")):
        target = tt.variadic if "first" in str(bad) else tt.add
        with pytest.raises(BadArguments, match=why):
            target.arguments(bad, None)
    with pytest.raises(BadArguments, match="missing argument 'a'"):  # nil is an empty map
        tt.add.arguments(None, None)
    assert task(lambda: 1).arguments(None, None) == ([], {})


def test_the_context_takes_its_own_place_beside_star_args() -> None:
    def first_then_rest(ctx: TaskContext, *names: str) -> list[str]:
        return [str(ctx), *names]

    def posonly_ctx(ctx: TaskContext, /, x: int) -> int:
        return x

    ctx = "CTX"
    t = task(first_then_rest)
    assert t.context_param == "ctx"
    args, kwargs = t.arguments(msgpack.unpackb(t.call("a", "b").payload), ctx)  # type: ignore[arg-type]
    assert (args, kwargs) == (["CTX", "a", "b"], {}) and t.fn(*args, **kwargs) == ["CTX", "a", "b"]
    assert task(posonly_ctx).arguments({"x": 1}, ctx) == (["CTX"], {"x": 1})  # type: ignore[arg-type]


def test_keywords_that_a_payload_map_could_not_tell_apart_are_refused() -> None:
    def posonly_and_kwargs(a: int, /, **kw: int) -> int:
        return a

    def star_both(*args: int, **kwargs: int) -> int:
        return 0

    with pytest.raises(BadArguments, match="keyword argument 'a' has the name of a positional-only or \\*args"):
        task(posonly_and_kwargs).call(1, a=2)  # (the worker would have called f(2))
    with pytest.raises(BadArguments, match="keyword argument 'args'"):
        task(star_both).call(1, args=2)
    t = task(posonly_and_kwargs)
    assert t.arguments(msgpack.unpackb(t.call(1, b=2).payload), None) == ([1], {"b": 2})


def test_models_are_validated_when_bound_and_rebuilt_on_the_worker() -> None:
    call = tt.greet.call({"name": "ann", "age": 3}, tt.Point(1, 2))  # type: ignore[arg-type]
    assert payload_of(call.entry()) == {"user": {"name": "ann", "age": 3}, "point": {"x": 1, "y": 2}}
    assert payload_of(tt.greet.call(tt.User(name="bo", age=4)).entry()) == {"user": {"name": "bo", "age": 4}}
    with pytest.raises(BadArguments, match="(?s)argument 'user'.*greater than or equal to 0"):
        tt.greet.call({"name": "ann", "age": -1})  # type: ignore[arg-type]
    with pytest.raises(BadArguments, match="argument 'point'"):
        tt.greet.call(tt.User(name="a", age=1), {"x": "not an int"})  # type: ignore[arg-type]
    _, kwargs = tt.greet.arguments({"user": {"name": "ann", "age": 3}, "point": {"x": 1, "y": 2}}, None)
    assert kwargs == {"user": tt.User(name="ann", age=3), "point": tt.Point(1, 2)}
    with pytest.raises(BadArguments, match="argument 'user'"):
        tt.greet.arguments({"user": {"name": "ann"}}, None)
    assert tt.greet.result_value({"text": "x", "length": 1}) == tt.Greeting(text="x", length=1)


def test_worker_takes_definitions_and_serves_their_queues() -> None:
    w = Worker(tasks=[tt.send_email, tt.add])
    assert w.queues == ["mail", "default"] and set(w.handlers) == {"send_email", "add"}
    w2 = Worker()
    w2.include(tt)  # a module: every definition in it
    assert set(w2.handlers) == {t.type for t in tasks_in(tt)} == {
        "send_email", "add", "greet", "welcome", "variadic", "legacy_shape"}
    assert Worker(queues=["x"], tasks=[tt.add]).queues == ["x"]
    with pytest.raises(ValueError, match="has a handler already"):
        w.register(task(type="add")(lambda a: a))
    w.register(tt.add)  # the same definition again is fine


def test_the_open_client_for_enqueue_is_never_a_watcher(threaded_server: Any) -> None:
    async def main() -> None:
        async with Client(threaded_server.address) as client, Client(threaded_server.address, role="watcher"):
            assert default_client() is client  # (the watcher opened last, but may not enqueue)

    asyncio.run(main())


def test_no_open_client_is_a_clear_error() -> None:
    with pytest.raises(NoClient, match="no runq Client is open"):
        default_client()
    async def enqueue() -> None:
        await tt.add.enqueue(1)

    with pytest.raises(NoClient):
        asyncio.run(enqueue())


def test_a_task_cannot_be_defined_twice() -> None:
    with pytest.raises(TypeError, match="is a task already"):
        task(tt.add)  # type: ignore[call-overload]
    assert isinstance(tt.add, TaskDef)


# ---------------------------------------------------------------------- against a real server
async def _produce_and_run(address: str, backend_worker: Worker) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with Client(address) as client:
        handle = await tt.send_email.enqueue("a@b.c", subject="hi")  # the open client
        assert isinstance(handle, TaskHandle) and int(handle) == handle.id
        out["email"] = await handle.result(timeout=10)
        greeting = await client.enqueue(tt.greet.call(tt.User(name="ann", age=3)))
        out["greeting"] = await greeting.result(timeout=10)
        handles = await client.enqueue_many([tt.add.call(i) for i in range(3)])
        out["adds"] = [await h.result(timeout=10) for h in handles]
        # by type name with a JSON-like map, as another language or the HTTP API would
        by_name = await client.enqueue("variadic", {"first": 1, "rest": [2], "k": 3})
        out["by_name"] = await client.result(by_name, timeout=10)
        bad = await client.enqueue("add", {"a": 1, "oops": 2})
        out["bad"] = await client.wait(bad, timeout=10)
        first = await client.enqueue(tt.welcome.call("zed"))
        again = await client.enqueue(tt.welcome.call("zed"))
        out["same_key"] = first.id == again.id or (await client.get(first.id))["state"] == "succeeded"
    backend_worker.stop()
    return out


def _check(out: dict[str, Any]) -> None:
    assert out["email"] == {"to": "a@b.c", "subject": "hi", "attempt": 1, "queue": "mail"}
    assert out["greeting"] == tt.Greeting(text="hi ann (3)", length=10)  # rebuilt as the return type
    assert out["adds"] == [1, 2, 3]
    assert out["by_name"] == [1, 2, 3]
    bad = out["bad"]  # a payload that does not fit goes dead at once: the same payload would fail again
    assert bad["state"] == "dead" and bad["attempt"] == 1
    assert bad["error"].startswith("bad arguments:") and "unexpected argument(s) 'oops'" in bad["error"]


def test_producer_and_worker_share_definitions_under_asyncio(threaded_server: Any) -> None:
    worker = Worker(tasks=tasks_in(tt), concurrency=4)

    async def main() -> dict[str, Any]:
        async with asyncio.timeout(30):
            run = asyncio.ensure_future(worker.run(threaded_server.address))
            out = await _produce_and_run(threaded_server.address, worker)
            await run
            return out

    _check(asyncio.run(main()))


@pytest.mark.trio
async def test_producer_and_worker_share_definitions_under_trio(server: Server) -> None:
    plain = Worker(tasks=[t for t in tasks_in(tt) if t.type != "send_email"], concurrency=4)
    address = f"127.0.0.1:{server.port}"
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            n.start_soon(plain.run, address)
            async with Client(address) as client:
                h = await client.enqueue(tt.add.call(41))
                assert await h.result(timeout=10) == 42
                g = await client.enqueue(tt.greet.call(tt.User(name="bo", age=1), tt.Point(3, 4)))
                assert (await g.result(timeout=10)).text == "hi bo (1) at 3,4"
            plain.stop()


def test_sync_client_enqueues_a_typed_task(threaded_server: Any) -> None:
    worker = Worker(tasks=[tt.add], concurrency=1)

    async def run_worker() -> None:
        async with asyncio.timeout(30):
            await worker.run(threaded_server.address)

    import threading

    t = threading.Thread(target=lambda: asyncio.run(run_worker()), daemon=True)
    t.start()
    try:
        with SyncClient(threaded_server.address) as client:
            handle = client.enqueue(tt.add.call(1, b=5))
            assert handle.result(timeout=10) == 6
            assert client.get(int(handle))["state"] == "succeeded"
    finally:
        worker.stop()
        t.join(15)


@pytest.mark.trio
async def test_only_the_payload_decides_bad_arguments_not_the_handlers_own_code(server: Server) -> None:
    """A handler that binds a follow-up task wrongly fails like any exception (its traceback, its retries);
    only a payload that does not fit the handler is 'bad arguments', dead at once."""

    @task(retries=1)
    def parent(n: int) -> None:
        tt.add.call()  # type: ignore[call-arg]  # the handler's own mistake

    worker = Worker(tasks=[parent, tt.add], concurrency=2)
    address = f"127.0.0.1:{server.port}"
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            n.start_soon(worker.run, address)
            async with Client(address) as client:
                own = await client.wait((await client.enqueue(parent.call(1))).id, timeout=20)
                garbled = await client.request({"op": "enqueue", "tasks": [{"type": "add", "payload": b"\xc1"}]})
                bad = await client.wait(garbled["ids"][0], timeout=20)
            worker.stop()
    assert own["state"] == "dead" and own["attempt"] == 2  # its retry was made
    assert own["error"].startswith("Traceback") and "missing a required argument: 'a'" in own["error"]
    assert bad["state"] == "dead" and bad["attempt"] == 1
    assert bad["error"].startswith("bad arguments: the payload is not msgpack")


@pytest.mark.trio
async def test_a_type_no_worker_handles_waits_ready_until_a_worker_that_handles_it_joins(server: Server) -> None:
    """`runq enqueue sendemail` (a typo) used to be run by the connected worker, fail 'no handler' and
    spend its retries; now it waits, ready, and the tasks behind it run."""
    address = f"127.0.0.1:{server.port}"

    @task(type="sendemail")
    def late(to: str) -> str:
        return f"late {to}"

    with trio.fail_after(30):
        async with trio.open_nursery() as n, Client(address) as client:
            first = Worker(tasks=[tt.add], concurrency=2)
            n.start_soon(first.run, address)
            typo = await client.enqueue("sendemail", {"to": "a"})
            ok = await client.enqueue(tt.add.call(1))
            assert await ok.result(timeout=10) == 2  # not blocked by the typo ahead of it
            await trio.sleep(0.2)
            waiting = await client.get(typo)
            assert (waiting["state"], waiting["attempt"], waiting["error"]) == ("ready", 0, None)
            second = Worker(tasks=[late], concurrency=1)
            n.start_soon(second.run, address)
            assert await client.result(typo, timeout=10) == "late a"
            first.stop()
            second.stop()


@pytest.mark.trio
async def test_a_task_enqueued_by_name_runs_as_its_workers_definition_says(server: Server) -> None:
    """By type name (another language, runq enqueue, HTTP) with no queue: it used to land on 'default',
    where no worker of send_email listens, and wait for ever."""
    address = f"127.0.0.1:{server.port}"

    @task(type="send_email", queue="mail", timeout=30, retries=2)
    def send_email(to: str) -> dict[str, str]:
        return {"to": to}

    worker = Worker(tasks=[send_email], concurrency=1)  # listens on 'mail' only
    with trio.fail_after(30):
        async with trio.open_nursery() as n, Client(address) as client:
            n.start_soon(worker.run, address)
            while not await client.task_types():
                await trio.sleep(0.01)
            tid = await client.enqueue("send_email", {"to": "x@y.z"})
            done = await client.wait(tid, timeout=10)
            worker.stop()
    assert (done["state"], done["queue"], done["timeout"], done["max_retries"]) == ("succeeded", "mail", 30.0, 2)
    assert done["result"]["to"] == "x@y.z"
