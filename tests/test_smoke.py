import pytest

from runq import Client


@pytest.mark.trio
async def test_smoke(server):
    async with Client(f"127.0.0.1:{server.port}") as c:
        tid = await c.enqueue("x", {"a": 1})
        t = await c.get(tid)
        assert t["state"] == "ready" and t["payload"] == {"a": 1}
