"""Shared fixtures: throwaway servers on 127.0.0.1 and a clean environment per test.

Servers: redis-server, httpbin and the DummyJSON stand-in. pytest-httpserver's
``httpserver`` is bound to 127.0.0.1 too. Every test runs in its own empty
working folder with no ``BTS_SYNC_*`` or ``REDIS_URL`` variables, so that no
test reads a stray ``bts-sync.toml`` or polls the public default endpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from dummyjson_server import DummyJsonServer
from support import ProcessSet, RecordingServer


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"Nothing listened on 127.0.0.1:{port} within {timeout_s} s.")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start a private redis-server for the session and return its base URL.

    On CI a missing redis-server is a failure; elsewhere the tests that need it
    are skipped.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail(
                "redis-server is not on the PATH; .ci/run should have installed it."
            )
        pytest.skip("redis-server is not installed")

    port = free_port()
    data_dir: Path = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data_dir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, 10)
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """Return the URL of an empty database on the session's redis-server."""
    import redis

    url = f"{redis_server}/0"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    yield url


@pytest.fixture(scope="session")
def httpserver_listen_address() -> tuple[str, int]:
    """Bind pytest-httpserver to 127.0.0.1 on a free port, never to other interfaces."""
    return ("127.0.0.1", 0)


#: Variables that change what bts-sync polls or prints; tests set them explicitly.
_ISOLATED_VARIABLES = ("REDIS_URL", "NO_COLOR", "FORCE_COLOR", "COLUMNS")


@pytest.fixture(autouse=True)
def isolated_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[None]:
    """Run each test in an empty folder, without bts-sync's variables, and restore logging.

    The CLI replaces the root logger's handlers; the originals, among them
    pytest's capture handlers, are put back afterwards.
    """
    for name in list(os.environ):
        if name.startswith("BTS_SYNC_") and name != "BTS_SYNC_FIXTURES_DIR":
            monkeypatch.delenv(name)
    for name in _ISOLATED_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(autouse=True, scope="session")
def quiet_test_servers() -> None:
    """Keep the request log of werkzeug-based test servers out of bts-sync's stderr.

    pytest-httpserver and httpbin run in the test process, and werkzeug logs
    each request at INFO, which the CLI's root handler would print.
    """
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def httpbin_url() -> Iterator[str]:
    """Serve httpbin from PyPI on 127.0.0.1 for the session and return its base URL."""
    from httpbin import app
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="httpbin")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.fixture
def dummyjson() -> Iterator[DummyJsonServer]:
    """Serve the DummyJSON stand-in with the live API's rate limit, fresh for each test."""
    with DummyJsonServer() as server:
        yield server


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """Return a client of the test's empty Redis database."""
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[ProcessSet]:
    """Return a ``ProcessSet`` with its logs in ``tmp_path``, closed when the test ends.

    It has no environment of its own, so each ``start`` or ``start_worker``
    call passes one.
    """
    processes = ProcessSet(tmp_path)
    yield processes
    processes.close()


@pytest.fixture
def http() -> Iterator[RecordingServer]:
    """Return a ``RecordingServer`` on 127.0.0.1, stopped when the test ends."""
    server = RecordingServer()
    yield server
    server.stop()
