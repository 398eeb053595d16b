"""Shared helpers for tests that write configurations, start processes and serve HTTP.

* ``wait_until`` polls a condition with a deadline.
* ``write_config`` writes a TOML configuration for bts-sync to load.
* ``process_env``, ``bts_sync_command`` and ``run_cli`` prepare and run
  bts-sync commands as child processes.
* ``ProcessSet`` starts worker, scheduler, dashboard, Honcho and CLI processes
  with their output in a log file, and stops each of them by PID when the
  test ends.
* ``import_actors`` and ``forget_actors`` load ``bts_sync.actors`` in the test
  process with a test's configuration.
* ``RecordingServer`` and ``ScriptedEndpoint`` serve endpoints on 127.0.0.1
  and record each request they receive.
* ``http_request`` and ``wait_for_http`` are a small HTTP client for the
  dashboard.
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
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

#: Repository root and tests folder.
REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

#: Folder of the Python that runs the tests. The ``dramatiq``, ``periodiq``,
#: ``honcho`` and ``bts-sync`` scripts of the same environment are there.
BIN_DIR = Path(sys.executable).parent

#: Environment variables of the test process that would change what the
#: started processes load. ``process_env`` removes them.
_INHERITED_SETTINGS = (
    "REDIS_URL",
    "BTS_SYNC_CONFIG",
    "BTS_SYNC_REDIS_URL",
    "BTS_SYNC_URL",
    "BTS_SYNC_INTERVAL",
    "BTS_SYNC_KEY_PREFIX",
    "BTS_SYNC_STATE_DIR",
    "BTS_SYNC_LOG_FORMAT",
    "BTS_SYNC_ALERT_WEBHOOK",
    "BTS_SYNC_DASHBOARD_TOKEN",
)

#: Text that a Dramatiq worker process logs once it consumes messages.
WORKER_READY_LINE = "Worker process is ready"

Responder = Callable[[Request], Response]


def wait_until(
    condition: Callable[[], Any],
    timeout_s: float,
    message: str,
    pause_s: float = 0.05,
) -> Any:
    """Call ``condition`` every ``pause_s`` until it returns a true value, and return that value.

    Raises:
        AssertionError: ``timeout_s`` passed first. The message is
            ``Timed out after <timeout_s> s: <message>``, so ``message``
            should name the expected condition.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout_s:g} s: {message}")
        time.sleep(pause_s)


# Configuration files.


def toml_value(value: Any) -> str:
    """Format ``value`` as TOML: a string, number, boolean, list or inline table.

    Raises:
        TypeError: ``value`` is of another type.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(
            f"{json.dumps(key)} = {toml_value(item)}" for key, item in value.items()
        )
        return "{ " + items + " }"
    raise TypeError(f"No TOML form for {value!r} in test configurations.")


def write_config(
    path: Path,
    endpoints: Sequence[Mapping[str, Any]],
    *,
    dispatch_lead: float = 0.5,
    **settings: Any,
) -> Path:
    """Write a configuration file with top-level ``settings`` and ``endpoints``, and return ``path``.

    ``dispatch_lead`` defaults to 0.5 s, which releases messages of short
    intervals in time for workers started with ``dramatiq_worker_timeout=100``
    (see ``process_env``). The politeness and change-event tests pass 0.3 s.
    """
    lines = [f"dispatch_lead = {toml_value(dispatch_lead)}"]
    lines.extend(f"{key} = {toml_value(value)}" for key, value in settings.items())
    for endpoint in endpoints:
        lines.append("")
        lines.append("[[endpoints]]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in endpoint.items())
    path.write_text("\n".join(lines) + "\n")
    return path


# Child processes.


def process_env(config_path: Path, redis_url: str, **extra: str) -> dict[str, str]:
    """Return the environment for a worker, scheduler, dashboard or CLI process of a test.

    It is the test process's environment without ``_INHERITED_SETTINGS``,
    plus ``BTS_SYNC_CONFIG``, ``BTS_SYNC_REDIS_URL``,
    ``dramatiq_worker_timeout=100`` (ms after which an idle Dramatiq worker
    wakes up, 1000 by default), ``PYTHONUNBUFFERED=1`` and ``BIN_DIR`` first
    on ``PATH``.
    ``extra`` variables are set last and override all of these.
    """
    env = {k: v for k, v in os.environ.items() if k not in _INHERITED_SETTINGS}
    env.update(
        BTS_SYNC_CONFIG=str(config_path),
        BTS_SYNC_REDIS_URL=redis_url,
        dramatiq_worker_timeout="100",
        PYTHONUNBUFFERED="1",
        PATH=f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}",
    )
    env.update(extra)
    return env


def bts_sync_command(*args: str) -> list[str]:
    """Return the command line of ``bts-sync`` with ``args``."""
    return [str(BIN_DIR / "bts-sync"), *args]


def run_cli(
    config: Path, redis_url: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bts_sync ARGS`` to completion and return its exit code and output.

    ``COLUMNS=200`` keeps the ``status`` table from wrapping. The command
    times out after 60 s.
    """
    return subprocess.run(
        [sys.executable, "-m", "bts_sync", *args],
        env=process_env(config, redis_url, COLUMNS="200"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


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
        """Process ID."""
        return self.process.pid

    def log(self) -> str:
        """Return everything the process has written so far."""
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        """Return whether the process has not exited yet."""
        return self.process.poll() is None


class ProcessSet:
    """Processes started by one test, each stopped by PID at the end.

    Each process runs in its own session, so that a signal meant for the test
    runner does not reach it and the test decides which processes get which
    signal. Standard output and error go to ``log_dir/NAME-N.log``, where N
    counts the processes started before it.

    Args:
        log_dir: Folder of the log files.
        env: Environment of every process that ``start`` is not given one
            for, usually from ``process_env``. Without it, each call passes
            its own.
        stop_timeout_s: Seconds that ``stop`` and ``close`` wait after
            SIGTERM before they SIGKILL. Defaults to 20.
    """

    def __init__(
        self,
        log_dir: Path,
        env: dict[str, str] | None = None,
        stop_timeout_s: float = 20,
    ) -> None:
        self.log_dir = log_dir
        self.env = env
        self.stop_timeout_s = stop_timeout_s
        self.started: list[Started] = []

    def start(
        self,
        name: str,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Started:
        """Start ``command`` with its output in ``log_dir/name-N.log``.

        Raises:
            ValueError: Neither ``env`` nor the set's ``env`` is given.
        """
        env = env if env is not None else self.env
        if env is None:
            raise ValueError(
                f"Missing environment for process {name!r}: pass env, or create "
                "the ProcessSet with one."
            )
        log_path = self.log_dir / f"{name}-{len(self.started)}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                list(command),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        started = Started(name=name, process=process, log_path=log_path)
        self.started.append(started)
        return started

    def start_worker(
        self,
        env: Mapping[str, str] | None = None,
        *,
        processes: int = 1,
        module: str = "bts_sync.actors",
        extra_args: Sequence[str] = (),
        name: str = "worker",
        ready_timeout_s: float | None = 30,
    ) -> Started:
        """Start ``dramatiq MODULE`` with four threads per process.

        By default it runs one process of ``bts_sync.actors``, and the call
        waits up to 30 s until the worker logs ``WORKER_READY_LINE``. With
        ``ready_timeout_s=None`` it returns at once.

        Raises:
            AssertionError: The worker exited, or was not ready in time.
        """
        command = [
            str(BIN_DIR / "dramatiq"),
            module,
            "--processes",
            str(processes),
            "--threads",
            "4",
            *extra_args,
        ]
        worker = self.start(name, command, env)
        if ready_timeout_s is not None:
            wait_until(
                lambda: WORKER_READY_LINE in worker.log() or not worker.running(),
                ready_timeout_s,
                f"worker {worker.pid} to boot; see {worker.log_path}",
            )
            assert worker.running(), f"Worker exited at start:\n{worker.log()}"
        return worker

    def start_scheduler(self) -> Started:
        """Start ``periodiq bts_sync.actors`` with the set's environment."""
        return self.start("scheduler", [str(BIN_DIR / "periodiq"), "bts_sync.actors"])

    def log(self, name: str) -> str:
        """Return the output of the process started last under ``name``.

        Raises:
            KeyError: No process of that name was started.
        """
        for started in reversed(self.started):
            if started.name == name:
                return started.log()
        raise KeyError(f"No process named {name!r} was started.")

    def terminate(self, started: Started, timeout_s: float = 20) -> int:
        """Send SIGTERM to the process alone, wait for it and return its exit code.

        Raises:
            subprocess.TimeoutExpired: It still runs after ``timeout_s``.
        """
        started.process.send_signal(signal.SIGTERM)
        return started.process.wait(timeout_s)

    def kill(self, started: Started) -> None:
        """SIGKILL the process's children and grandchildren, then the process, and reap it."""
        for descendant in descendants_of(started.pid):
            _kill_quietly(descendant)
        _kill_quietly(started.pid)
        started.process.wait(10)

    def stop(self, started: Started) -> None:
        """Send SIGTERM if the process runs, and ``kill`` it if it still runs ``stop_timeout_s`` later."""
        if started.running():
            started.process.send_signal(signal.SIGTERM)
        try:
            started.process.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            self.kill(started)

    def close(self) -> None:
        """Stop every process that still runs.

        All of them get SIGTERM at once. Those still running
        ``stop_timeout_s`` later are killed with ``kill``.
        """
        for started in self.started:
            if started.running():
                started.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for started in self.started:
            try:
                started.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(started)


def _kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# bts_sync.actors in the test process.


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


# Responders for RecordingServer: each builds the response to one request.


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


# Scripted endpoints for the httpserver fixture: the response depends on the
# request's position in the sequence.


@dataclass(frozen=True)
class ReceivedRequest:
    """A request as a ``ScriptedEndpoint`` saw it.

    Attributes:
        time: Unix time at which the handler ran.
        headers: Request headers, names in their received case.
    """

    time: float
    headers: dict[str, str]


@dataclass
class ScriptedEndpoint:
    """A pytest-httpserver handler that responds to the n-th request with ``respond(n, request)``.

    It records when each request arrived and which headers it carried.
    """

    respond: Callable[[int, Request], Response]
    requests: list[ReceivedRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Request) -> Response:
        with self._lock:
            index = len(self.requests)
            self.requests.append(
                ReceivedRequest(time=time.time(), headers=dict(request.headers))
            )
        return self.respond(index, request)

    def count(self) -> int:
        """Return the number of requests received so far."""
        with self._lock:
            return len(self.requests)

    def snapshot(self) -> list[ReceivedRequest]:
        """Return a copy of the requests received so far."""
        with self._lock:
            return list(self.requests)


def json_response(
    value: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """Build a JSON response, for a ``ScriptedEndpoint``."""
    return Response(
        json.dumps(value),
        status=status,
        headers=dict(headers or {}),
        content_type="application/json",
    )


# HTTP client for the dashboard.


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def http_request(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Send one request and return the status, headers and body, for any status.

    Redirects are returned, not followed, so that their cookies can be read.
    The request times out after 10 s.
    """
    request = urllib.request.Request(
        url, method=method, headers=headers or {}, data=data
    )
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def wait_for_http(url: str, timeout_s: float) -> None:
    """Wait until ``url`` responds with any HTTP status."""

    def responds() -> bool:
        try:
            http_request(url)
        except OSError:
            return False
        return True

    wait_until(responds, timeout_s, f"{url} responded", pause_s=0.1)


def grid_slot_ms(phase_ms: int, interval_ms: int, at_s: float) -> int:
    """Return the grid slot ``phase + k * interval`` nearest to ``at_s``, in ms."""
    k = round((at_s * 1000 - phase_ms) / interval_ms)
    return phase_ms + k * interval_ms
