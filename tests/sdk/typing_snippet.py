# Checked by mypy in test_typing.py (not run): each line marked "E:" must be an error, and no other line.
from __future__ import annotations

from runq import Client, SyncClient, TaskContext, task


@task(queue="mail")
async def send_email(ctx: TaskContext, to: str, subject: str = "hi") -> dict[str, str]:
    return {"to": to, "queue": ctx.queue}


@task
def add(a: int, b: int = 1) -> int:
    return a + b


async def producer(client: Client, sync: SyncClient) -> None:
    handle = await client.enqueue(add.call(1, b=2))
    total: int = await handle.result()
    mail = await send_email.enqueue("a@b.c", subject="s")
    to: str = (await mail.result())["to"]
    again: int = sync.enqueue(add.call(1)).result()
    task_id: int = await client.enqueue("add", {"a": 1})
    ids: list[int] = await client.enqueue_many([{"type": "add"}])
    handles = await client.enqueue_many([add.call(1), add.call(2)])
    firsts: list[int] = [await h.result() for h in handles]
    print(total, to, again, task_id, ids, firsts)
    add.call("x")  # E: a str for an int
    await send_email.enqueue(too="a")  # E: a misspelt argument
    add.call(1, 2, 3)  # E: one argument too many
    send_email.call()  # E: 'to' is missing
    print(await handle.result() + "")  # E: the result is an int
    send_email.call("a", ctx=None)  # E: the context is the worker's
