"""A real server running in its own thread (its own trio loop), for SDK tests under asyncio and blocking
clients (a module of its own, not conftest: ``from conftest import`` finds another folder's conftest when
several test folders run together)."""

from __future__ import annotations

import threading

import trio

from runq.app.core import CoreConfig
from runq.app.server import Server, ServerConfig

__all__ = ["ThreadedServer"]


class ThreadedServer:
    def __init__(self, db: str, lease_timeout: float = 10.0) -> None:
        self.server = Server(ServerConfig(db=db, port=0, core=CoreConfig(lease_timeout=lease_timeout)))
        self.port = 0
        self._started = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as n:
                self.port = await n.start(self.server.serve)
                self._started.set()

        try:
            trio.run(main)
        except BaseException as exc:  # noqa: BLE001 - reported by start()/stop()
            self._error = exc
            self._started.set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ThreadedServer:
        self._thread.start()
        assert self._started.wait(15), "server did not start"
        if self._error:
            raise self._error
        return self

    def stop(self) -> None:
        if self._token is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self.server.stopping.set, trio_token=self._token)
        self._thread.join(15)
        assert not self._thread.is_alive(), "server did not stop"
        if self._error:
            raise self._error
