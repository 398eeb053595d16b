"""A small, fast HTTP/1.1 server for the benchmarks that logs each request's arrival.

``python -m bench.httpd PORT LOG_FILE`` responds to every request with a short JSON
body, keeps connections alive, and appends ``arrival_time path`` lines to
LOG_FILE once a second and on SIGTERM. The arrival time is taken when the
request's bytes reach the process. Several copies can share PORT because the
socket sets SO_REUSEPORT, and the kernel spreads connections over them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import time
from pathlib import Path

_BODY = b'{"ok": true, "items": [1, 2, 3]}'
_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(_BODY)).encode()
    + b"\r\n\r\n"
    + _BODY
)

#: Seconds between two writes of the arrival log.
FLUSH_PERIOD_S = 1.0


class _ArrivalProtocol(asyncio.Protocol):
    def __init__(self, arrivals: list[str]) -> None:
        self.arrivals = arrivals
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        arrived = time.time()
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            request_line = head.split(b"\r\n", 1)[0].split()
            path = request_line[1].decode() if len(request_line) > 1 else "?"
            self.arrivals.append(f"{arrived:.6f} {path}\n")
            assert self.transport is not None
            self.transport.write(_RESPONSE)


async def serve(port: int, log_path: Path) -> None:
    """Serve on 127.0.0.1:``port`` until SIGTERM or SIGINT, logging arrivals to ``log_path``."""
    arrivals: list[str] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _ArrivalProtocol(arrivals), sock=sock, backlog=1024
    )
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    with log_path.open("a") as log:

        def flush() -> None:
            log.writelines(arrivals)
            log.flush()
            arrivals.clear()

        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), FLUSH_PERIOD_S)
            flush()
        server.close()
        flush()


def read_arrivals(paths: list[Path]) -> list[tuple[float, str]]:
    """Read arrival logs written by ``serve``, sorted by time."""
    arrivals = []
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            arrived, _, request_path = line.partition(" ")
            arrivals.append((float(arrived), request_path))
    arrivals.sort()
    return arrivals


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m bench.httpd PORT LOG_FILE")
    asyncio.run(serve(int(sys.argv[1]), Path(sys.argv[2])))
