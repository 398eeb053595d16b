"""A local stand-in for the DummyJSON API, serving its real data sets on 127.0.0.1.

The data sets are read from ``shared/fixtures/dummyjson/`` in the folder that
contains the repository. Set ``BTS_SYNC_FIXTURES_DIR`` to the ``fixtures``
folder when it is somewhere else, for example in a git worktree.

Routes, as the live API serves them:

* ``GET /test`` returns ``{"status": "ok", "method": "GET"}``.
* ``GET /<name>`` returns ``{"<name>": [...], "total": N, "skip": S, "limit": L}``,
  paged with ``?skip=`` and ``?limit=`` (30 by default; 0 returns every record
  from ``skip`` on).
* ``GET /<name>/<id>`` returns one record, or 404 with a JSON message.
* A client address that sends more than ``rate_limit`` requests within
  ``rate_window_s`` seconds gets 429 with a JSON message and ``Retry-After``.
  The wording of the message and the header are this server's own.

Tests use ``DummyJsonServer`` in a thread. Benchmarks run the file as a script,
which prints the base URL on its first line and serves until it is terminated::

    python tests/dummyjson_server.py --port 0 --rate-limit 0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

#: Folder of the data sets when ``BTS_SYNC_FIXTURES_DIR`` is not set.
DEFAULT_FIXTURES_DIR = Path(__file__).parents[1] / ".." / "shared" / "fixtures"

#: Data sets served, each a JSON array of records in ``<name>.json``.
DATASETS = ("products", "quotes", "todos")

#: Records per page when a request gives no ``limit``.
DEFAULT_LIMIT = 30

#: Requests allowed per client address within ``DEFAULT_RATE_WINDOW_S``.
DEFAULT_RATE_LIMIT = 100

#: Length of the rate-limit window, in seconds.
DEFAULT_RATE_WINDOW_S = 10.0


def dummyjson_dir() -> Path:
    """Return the folder that contains the DummyJSON data sets."""
    base = os.environ.get("BTS_SYNC_FIXTURES_DIR")
    folder = (Path(base) if base else DEFAULT_FIXTURES_DIR) / "dummyjson"
    return folder.resolve()


@cache
def load_datasets(folder: Path) -> Mapping[str, list[dict[str, Any]]]:
    """Read every data set in ``folder``, keyed by name.

    Raises:
        FileNotFoundError: A data set is missing; the message names the path
            and the variable that moves it.
    """
    datasets = {}
    for name in DATASETS:
        path = folder / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"DummyJSON fixture {path} not found. Place shared/ beside the "
                "repository folder, or set BTS_SYNC_FIXTURES_DIR to its fixtures folder."
            )
        datasets[name] = json.loads(path.read_text(encoding="utf-8"))
    return datasets


class _RateLimiter:
    """Sliding-window request counter per client address."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._times: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float | None:
        """Count a request of ``client``; return seconds to wait when it is over the limit."""
        if self.limit <= 0:
            return None
        now = time.monotonic()
        with self._lock:
            times = self._times.setdefault(client, deque())
            while times and times[0] <= now - self.window_s:
                times.popleft()
            if len(times) >= self.limit:
                return times[0] + self.window_s - now
            times.append(now)
            return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Buffered writes send the headers and the body in one segment; written
    # apart, Nagle's algorithm and delayed ACKs add about 40 ms per response.
    wbufsize = -1
    server: _Server

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        wait_s = self.server.limiter.retry_after(self.client_address[0])
        if wait_s is not None:
            seconds = max(1, math.ceil(wait_s))
            self._send_json(
                429,
                {"message": f"Too many requests. Try again in {seconds} seconds."},
                {"Retry-After": str(seconds)},
            )
            return

        parts = urlsplit(self.path)
        segments = [s for s in parts.path.split("/") if s]
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        status, body = self._route(segments, query)
        self._send_json(status, body)

    def _route(self, segments: list[str], query: Mapping[str, str]) -> tuple[int, Any]:
        datasets = self.server.datasets
        if segments == ["test"]:
            return 200, {"status": "ok", "method": "GET"}
        if len(segments) == 1 and segments[0] in datasets:
            return self._page(segments[0], query)
        if len(segments) == 2 and segments[0] in datasets:
            return self._record(segments[0], segments[1])
        return 404, {"message": f"Route GET {urlsplit(self.path).path} not found."}

    def _page(self, name: str, query: Mapping[str, str]) -> tuple[int, Any]:
        records = self.server.datasets[name]
        try:
            skip = int(query.get("skip", 0))
            limit = int(query.get("limit", DEFAULT_LIMIT))
        except ValueError:
            return 400, {"message": "skip and limit must be whole numbers."}
        if skip < 0 or limit < 0:
            return 400, {"message": "skip and limit must be 0 or more."}
        page = records[skip:] if limit == 0 else records[skip : skip + limit]
        return 200, {
            name: page,
            "total": len(records),
            "skip": skip,
            "limit": len(page),
        }

    def _record(self, name: str, record_id: str) -> tuple[int, Any]:
        for record in self.server.datasets[name]:
            if str(record.get("id")) == record_id:
                return 200, record
        label = name.rstrip("s").capitalize()
        return 404, {"message": f"{label} with id '{record_id}' not found"}

    def _send_json(
        self, status: int, body: Any, headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the request log out of test and benchmark output."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        port: int,
        datasets: Mapping[str, list[dict[str, Any]]],
        limiter: _RateLimiter,
    ) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.datasets = datasets
        self.limiter = limiter
        self.requests: list[str] = []


class DummyJsonServer:
    """The stand-in API, served from a background thread.

    Args:
        rate_limit: Requests allowed per client address within the window;
            0 turns the limit off. Defaults to 100.
        rate_window_s: Length of the window in seconds. Defaults to 10.
        fixtures_dir: Folder of the data sets. Defaults to ``dummyjson_dir()``.
        port: TCP port on 127.0.0.1; 0 picks a free one.
    """

    def __init__(
        self,
        rate_limit: int = DEFAULT_RATE_LIMIT,
        rate_window_s: float = DEFAULT_RATE_WINDOW_S,
        fixtures_dir: Path | None = None,
        port: int = 0,
    ) -> None:
        datasets = load_datasets(fixtures_dir or dummyjson_dir())
        self._server = _Server(port, datasets, _RateLimiter(rate_limit, rate_window_s))
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """URL of the server's root, without a trailing slash."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def requests(self) -> list[str]:
        """Paths with query strings of every request received, in order."""
        return self._server.requests

    def url(self, path: str) -> str:
        """Return the absolute URL of ``path``, which starts with a slash."""
        return self.base_url + path

    def start(self) -> DummyJsonServer:
        """Serve in a background thread and return the server."""
        # A short poll interval lets stop() return within 50 ms.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="dummyjson",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted, then close the socket."""
        try:
            self._server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self._server.server_close()

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> DummyJsonServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """Serve in the foreground; print the base URL first, for the process that started it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--rate-limit",
        type=int,
        default=DEFAULT_RATE_LIMIT,
        help="requests per client and window; 0 turns the limit off",
    )
    parser.add_argument(
        "--rate-window", type=float, default=DEFAULT_RATE_WINDOW_S, help="seconds"
    )
    args = parser.parse_args(argv)

    server = DummyJsonServer(args.rate_limit, args.rate_window, port=args.port)
    print(server.base_url, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
