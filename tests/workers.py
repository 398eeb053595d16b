"""Helpers for tests that run real worker, scheduler and Honcho processes.

* ``write_config`` writes a TOML configuration for the processes to load.
* ``RecordingServer`` serves endpoints on 127.0.0.1 and records when each
  request arrived and how many ran at once.
* ``ProcessSet`` starts processes with their output in a log file and stops
  every one of them, by PID, when the test ends.
* ``wait_until`` polls a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

#: Folder of the Python that runs the tests. The ``dramatiq``, ``periodiq``
#: and ``honcho`` scripts of the same environment are there.
BIN_DIR = Path(sys.executable).parent

#: Environment variables of the test process that would change what the
#: started processes load.
_INHERITED_SETTINGS = (
    "REDIS_URL",
    "BTS_SYNC_CONFIG",
    "BTS_SYNC_REDIS_URL",
    "BTS_SYNC_URL",
    "BTS_SYNC_INTERVAL",
    "BTS_SYNC_KEY_PREFIX",
    "BTS_SYNC_STATE_DIR",
)

Responder = Callable[[Request], Response]


def wait_until(
    condition: Callable[[], Any],
    timeout_s: float,
    message: str,
    pause_s: float = 0.05,
) -> Any:
    """Call ``condition`` until it returns a true value, and return that value.

    Raises:
        AssertionError: ``timeout_s`` passed first. The message names the
            condition that was expected.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout_s:g} s: {message}")
        time.sleep(pause_s)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise TypeError(f"No TOML form for {value!r} in test configurations.")


def write_config(
    path: Path, endpoints: Sequence[dict[str, Any]], **settings: Any
) -> Path:
    """Write a configuration file with top-level ``settings`` and ``endpoints``.

    ``dispatch_lead`` defaults to 0.5 s, so that messages of short intervals
    are released in time by workers with ``dramatiq_worker_timeout=100``.
    """
    settings.setdefault("dispatch_lead", 0.5)
    lines = [f"{key} = {_toml_value(value)}" for key, value in settings.items()]
    for endpoint in endpoints:
        lines.append("")
        lines.append("[[endpoints]]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in endpoint.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def process_env(config_path: Path, redis_url: str) -> dict[str, str]:
    """Return the environment for a worker, scheduler or CLI process of a test."""
    env = {k: v for k, v in os.environ.items() if k not in _INHERITED_SETTINGS}
    env.update(
        BTS_SYNC_CONFIG=str(config_path),
        BTS_SYNC_REDIS_URL=redis_url,
        dramatiq_worker_timeout="100",
        PYTHONUNBUFFERED="1",
        PATH=f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


# Responders: each builds the response to one request.


def json_body(data: Any) -> Responder:
    """Respond 200 with ``data`` as JSON."""
    return lambda request: Response(json.dumps(data), 200, mimetype="application/json")


def status_code(code: int) -> Responder:
    """Respond with ``code`` and a small JSON error body."""
    return lambda request: Response('{"error": "x"}', code, mimetype="application/json")


def invalid_json() -> Responder:
    """Respond 200 with a body that claims to be JSON and is not."""
    return lambda request: Response("{not json", 200, mimetype="application/json")


def delayed(seconds: float, responder: Responder) -> Responder:
    """Wait ``seconds`` before responding, which a short deadline turns into a timeout."""

    def respond(request: Request) -> Response:
        time.sleep(seconds)
        return responder(request)

    return respond


@dataclass
class EndpointLog:
    """What one endpoint of a ``RecordingServer`` received.

    Attributes:
        arrivals: Unix time at which each request reached the handler.
        max_concurrent: Highest number of requests handled at the same time.
    """

    arrivals: list[float] = field(default_factory=list)
    max_concurrent: int = 0
    _active: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self) -> int:
        """Return the number of requests so far."""
        with self._lock:
            return len(self.arrivals)

    def in_progress(self) -> int:
        """Return the number of requests being handled right now."""
        with self._lock:
            return self._active

    def snapshot(self) -> list[float]:
        """Return a copy of the arrival times so far."""
        with self._lock:
            return list(self.arrivals)

    def wrap(self, responder: Responder) -> Responder:
        """Return ``responder`` with the arrival and concurrency recorded."""

        def respond(request: Request) -> Response:
            with self._lock:
                self.arrivals.append(time.time())
                self._active += 1
                self.max_concurrent = max(self.max_concurrent, self._active)
            try:
                return responder(request)
            finally:
                with self._lock:
                    self._active -= 1

        return respond


class RecordingServer:
    """A threaded pytest-httpserver on 127.0.0.1 whose endpoints record requests."""

    def __init__(self) -> None:
        self.server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
        self.server.start()

    def url(self, path: str) -> str:
        """Return the URL of ``path`` on this server."""
        return f"http://127.0.0.1:{self.server.port}{path}"

    def add_endpoint(
        self,
        path: str,
        then: Responder,
        first: Sequence[Responder] = (),
    ) -> EndpointLog:
        """Serve ``path``: the ``first`` responders in order, then ``then`` for every request."""
        log = EndpointLog()
        for responder in first:
            self.server.expect_ordered_request(path).respond_with_handler(
                log.wrap(responder)
            )
        self.server.expect_request(path).respond_with_handler(log.wrap(then))
        return log

    def stop(self) -> None:
        """Stop serving."""
        self.server.clear()
        if self.server.is_running():
            self.server.stop()


def import_actors(monkeypatch: Any, config_path: Path, redis_url: str) -> ModuleType:
    """Import ``bts_sync.actors`` afresh in the test process, configured like the workers.

    The module reads its settings at import, so a module left by an earlier
    test would use that test's configuration. The caller calls
    ``forget_actors`` when the test ends.
    """
    monkeypatch.setenv("BTS_SYNC_CONFIG", str(config_path))
    monkeypatch.setenv("BTS_SYNC_REDIS_URL", redis_url)
    monkeypatch.delenv("REDIS_URL", raising=False)
    forget_actors()
    return importlib.import_module("bts_sync.actors")


def forget_actors() -> None:
    """Drop ``bts_sync.actors`` from this process, so the next import reads the settings again.

    ``from bts_sync import actors`` returns the package's attribute when it is
    set, so that goes too.
    """
    sys.modules.pop("bts_sync.actors", None)
    package = sys.modules.get("bts_sync")
    if package is not None and hasattr(package, "actors"):
        delattr(package, "actors")


def children_of(pid: int) -> list[int]:
    """Return the PIDs of the direct children of ``pid`` (Linux /proc)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(child) for child in path.read_text().split()]
    except OSError:
        return []


def descendants_of(pid: int) -> list[int]:
    """Return the PIDs of the children and grandchildren of ``pid``, grandchildren first."""
    children = children_of(pid)
    grandchildren = [
        grandchild for child in children for grandchild in children_of(child)
    ]
    return grandchildren + children


@dataclass
class Started:
    """A process started by a ``ProcessSet``."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """Return the process ID."""
        return self.process.pid

    def log(self) -> str:
        """Return everything the process has written so far."""
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        """Tell whether the process has not exited yet."""
        return self.process.poll() is None


class ProcessSet:
    """Processes started by one test, each stopped by PID at the end.

    Each process runs in its own session, so that a signal meant for the test
    runner does not reach it and the test decides which processes get which
    signal.
    """

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.started: list[Started] = []

    def start(
        self,
        name: str,
        command: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Started:
        """Start ``command`` with its output in ``log_dir/name-N.log``."""
        log_path = self.log_dir / f"{name}-{len(self.started)}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                list(command),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env or self.env,
                cwd=cwd,
                start_new_session=True,
            )
        started = Started(name=name, process=process, log_path=log_path)
        self.started.append(started)
        return started

    def start_worker(self, timeout_s: float = 30) -> Started:
        """Start ``dramatiq bts_sync.actors`` with one process of four threads, and wait until it consumes."""
        worker = self.start(
            "worker",
            [
                str(BIN_DIR / "dramatiq"),
                "bts_sync.actors",
                "--processes",
                "1",
                "--threads",
                "4",
            ],
        )
        wait_until(
            lambda: "Worker process is ready" in worker.log() or not worker.running(),
            timeout_s,
            f"worker {worker.pid} to boot; see {worker.log_path}",
        )
        assert worker.running(), f"Worker exited at start:\n{worker.log()}"
        return worker

    def start_scheduler(self) -> Started:
        """Start ``periodiq bts_sync.actors``."""
        return self.start("scheduler", [str(BIN_DIR / "periodiq"), "bts_sync.actors"])

    def terminate(self, started: Started, timeout_s: float = 20) -> int:
        """Send SIGTERM to the process alone, wait for it and return its exit code."""
        started.process.send_signal(signal.SIGTERM)
        return started.process.wait(timeout_s)

    def kill(self, started: Started) -> None:
        """SIGKILL the process's children and grandchildren, then the process, and reap it."""
        for descendant in descendants_of(started.pid):
            _kill_quietly(descendant)
        _kill_quietly(started.pid)
        started.process.wait(10)

    def close(self) -> None:
        """Stop every process that still runs: SIGTERM, then SIGKILL after 20 s."""
        for started in self.started:
            if started.running():
                started.process.send_signal(signal.SIGTERM)
        for started in self.started:
            try:
                started.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill(started)


def _kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def grid_slot_ms(phase_ms: int, interval_ms: int, at_s: float) -> int:
    """Return the grid slot ``phase + k * interval`` nearest to ``at_s``, in ms."""
    k = round((at_s * 1000 - phase_ms) / interval_ms)
    return phase_ms + k * interval_ms
