"""The dashboard's live source on a server that speaks TLS (``runq tui --tls-ca FILE``): it follows the server
with the CA, and says why it cannot without TLS."""

from __future__ import annotations

import anyio
import pytest
from tls_certs import make_certs
from tui_helpers import Procs

from runq.demo import start_server
from runq.protocol.client import Client
from runq.tui import LiveSource

pytestmark = [pytest.mark.tui, pytest.mark.anyio]


async def test_the_live_source_over_tls(procs: Procs) -> None:
    certs = make_certs(procs.tmp / "certs")
    procs.server, procs.port = start_server(procs.db, 0, ["--http-port", "0", "--tls-cert", certs.server,
                                                          "--tls-key", certs.server])
    source = LiveSource(procs.address, tls=certs.ca)
    plain = LiveSource(procs.address, tls=False)
    with anyio.fail_after(30):
        await source.start()
        await plain.start()
        async with Client(procs.address, tls=certs.ca) as client:
            await client.enqueue("noop", None, queue="seen")
            while not (source.state.connected and "seen" in source.state.queues):
                await anyio.sleep(0.05)
        while "tls_required" not in plain.state.status:
            await anyio.sleep(0.05)
        assert not plain.state.connected
        await source.close()
        await plain.close()
