"""Helpers for end-to-end tests: configuration files, worker processes, a scripted server.

Every process started here is stopped by its own PID (or its own process
group, which it leads), never by name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from werkzeug import Request, Response

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

#: Seconds a worker process may take to stop after SIGTERM before it is killed.
STOP_TIMEOUT_S = 15.0


def toml_value(value: Any) -> str:
    """Write a value as TOML: strings, numbers, booleans, lists and inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items())
        return "{ " + items + " }"
    raise TypeError(f"No TOML form for {type(value).__name__}.")


def write_config(
    path: Path,
    endpoints: Sequence[Mapping[str, Any]],
    dispatch_lead: float = 0.3,
    **top_level: Any,
) -> Path:
    """Write a bts-sync TOML file with the given endpoints and top-level keys."""
    lines = [f"dispatch_lead = {dispatch_lead!r}"]
    lines += [f"{key} = {toml_value(value)}" for key, value in top_level.items()]
    for endpoint in endpoints:
        lines.append("")
        lines.append("[[endpoints]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in endpoint.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def bts_env(config: Path, redis_url: str) -> dict[str, str]:
    """Return the environment for bts-sync commands and workers under test."""
    env = dict(os.environ)
    env.update(
        BTS_SYNC_CONFIG=str(config),
        BTS_SYNC_REDIS_URL=redis_url,
        dramatiq_worker_timeout="100",
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
    )
    return env


def run_cli(
    config: Path, redis_url: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run ``bts-sync ARGS`` with the test configuration and return what it printed."""
    return subprocess.run(
        [sys.executable, "-m", "bts_sync", *args],
        env=bts_env(config, redis_url),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class WorkerProcess:
    """A ``dramatiq`` worker process in its own session, logging to a file."""

    def __init__(
        self,
        module: str,
        env: Mapping[str, str],
        log_path: Path,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dramatiq",
                module,
                "--processes",
                "1",
                "--threads",
                "4",
                *extra_args,
            ],
            env=dict(env),
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_text(self) -> str:
        """Return everything the worker has logged so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Send SIGTERM and wait; kill the worker's own process group if it hangs."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=STOP_TIMEOUT_S)
        self._log.close()


def start_bts_worker(config: Path, redis_url: str, log_path: Path) -> WorkerProcess:
    """Start ``dramatiq bts_sync.actors`` for the test configuration."""
    return WorkerProcess("bts_sync.actors", bts_env(config, redis_url), log_path)


def wait_until(
    condition: Callable[[], bool], timeout_s: float, description: str
) -> None:
    """Poll ``condition`` every 50 ms until it holds.

    Raises:
        AssertionError: It did not hold within ``timeout_s``; the message
            names ``description``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"Timed out after {timeout_s:g} s waiting for {description}.")


@dataclass(frozen=True)
class ReceivedRequest:
    """A request as the scripted server saw it.

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
    """Build a JSON response for the scripted server."""
    return Response(
        json.dumps(value),
        status=status,
        headers=dict(headers or {}),
        content_type="application/json",
    )
