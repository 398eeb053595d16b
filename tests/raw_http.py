"""A hand-written HTTP/1.1 server on 127.0.0.1 that can send a response byte by byte.

pytest-httpserver writes each response in one piece, so it cannot act like a
server that keeps a connection busy by sending one byte at a time. This server
reads requests itself and responds by path:

* ``/trickle-body``: the status line and headers at once, then the body one
  byte per write.
* ``/trickle-headers``: the status line and headers one byte per write.
* any other path: a small JSON body at once.

Connections are kept alive, and each one is served by its own thread. With
an ``ssl.SSLContext`` the server speaks HTTPS.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

#: Body sent by every path that does not trickle.
FAST_BODY = {"fast": True}
FAST_JSON = json.dumps(FAST_BODY).encode()

#: Length of a filler header, so that trickling the headers also takes seconds.
_PADDING_BYTES = 200

#: Body of the trickling paths: a JSON array of about 2 kB.
TRICKLE_BODY = b"[" + b"0," * 1000 + b"0]"


class TrickleServer:
    """HTTP server whose trickling paths send one byte per write.

    Args:
        byte_interval_s: Pause between two bytes of a trickled response.
            Defaults to 0.02 s, so sending ``TRICKLE_BODY`` takes 40 s, far
            longer than any deadline in the tests.
    """

    def __init__(
        self, byte_interval_s: float = 0.02, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.byte_interval_s = byte_interval_s
        self.ssl_context = ssl_context
        self.connections = 0
        self.paths: list[str] = []
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []

    @property
    def port(self) -> int:
        """TCP port that the server listens on."""
        return int(self._listener.getsockname()[1])

    def url(self, path: str) -> str:
        """Return the absolute URL of ``path`` on this server."""
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        """Accept connections in a background thread."""
        thread = threading.Thread(target=self._accept, name="trickle-accept")
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        """Stop accepting, cut every open connection and join the threads."""
        self._stop.set()
        for sock in list(self._sockets):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in list(self._threads):
            thread.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            self._sockets.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        # A client that gives up resets the connection; that ends the thread.
        with suppress(OSError):
            if self.ssl_context is not None:
                conn.settimeout(5)
                conn = self.ssl_context.wrap_socket(conn, server_side=True)
                conn.settimeout(None)
            self._serve_requests(conn)

    def _serve_requests(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            while not self._stop.is_set():
                request_line = reader.readline()
                if not request_line:
                    return
                # Skip the request headers; no test sends a request body.
                while reader.readline() not in (b"\r\n", b"\n", b""):
                    pass
                path = request_line.split()[1].decode()
                self.paths.append(path)
                if not self._respond(conn, path):
                    return

    def _respond(self, conn: socket.socket, path: str) -> bool:
        """Send the response for ``path``; return False when the client is gone."""
        body = TRICKLE_BODY if path.startswith("/trickle-") else FAST_JSON
        head = (
            "HTTP/1.1 200 OK\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-Padding: {'p' * _PADDING_BYTES}\r\n"
            "\r\n"
        ).encode()

        try:
            if path == "/trickle-headers":
                self._trickle(conn, head)
                conn.sendall(body)
            elif path == "/trickle-body":
                conn.sendall(head)
                self._trickle(conn, body)
            else:
                conn.sendall(head + body)
        except OSError:
            return False
        return not self._stop.is_set()

    def _trickle(self, conn: socket.socket, data: bytes) -> None:
        for index in range(len(data)):
            if self._stop.wait(self.byte_interval_s):
                return
            conn.sendall(data[index : index + 1])


@contextmanager
def running_trickle_server(
    byte_interval_s: float = 0.02, ssl_context: ssl.SSLContext | None = None
) -> Iterator[TrickleServer]:
    """Run a ``TrickleServer``, over TLS with ``ssl_context``, for the duration of the block."""
    server = TrickleServer(byte_interval_s, ssl_context)
    server.start()
    try:
        yield server
    finally:
        server.stop()
