"""A minimal trio echo server: the floor under any request/reply over loopback.

    python -m bench.echo --port-file FILE

Listens on 127.0.0.1 (a free port, written to FILE once bound) and writes back every byte it reads, one
``send_all`` per ``receive_some``: no framing, no parsing, no other task. ``bench.throughput --only
sequential`` times a round trip of one small frame through it beside the real calls.
"""

from __future__ import annotations

import argparse
import os
import signal

import trio


async def _echo(stream: trio.SocketStream) -> None:
    try:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


def _write_port(port_file: str, port: int) -> None:
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, port_file)  # (whole, never half-written)


async def _main(port_file: str) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    _write_port(port_file, port)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, _echo, listeners)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port-file", required=True)
    trio.run(_main, p.parse_args().port_file)


if __name__ == "__main__":
    main()
