"""Helpers for the monitoring tests: configuration files, child processes, waits.

``Processes`` starts the worker, the dashboard or a CLI command with its output
in a log file and stops each process it started, by PID, when the test ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: Folder of the Python that runs the tests, with the ``dramatiq`` and
#: ``bts-sync`` scripts of the same environment.
BIN_DIR = Path(sys.executable).parent

#: Variables of the test process that would change what child processes load.
_SETTINGS_VARIABLES = (
    "REDIS_URL",
    "BTS_SYNC_CONFIG",
    "BTS_SYNC_REDIS_URL",
    "BTS_SYNC_URL",
    "BTS_SYNC_INTERVAL",
    "BTS_SYNC_KEY_PREFIX",
    "BTS_SYNC_LOG_FORMAT",
    "BTS_SYNC_ALERT_WEBHOOK",
    "BTS_SYNC_DASHBOARD_TOKEN",
)


def wait_until(
    condition: Callable[[], Any], timeout_s: float, message: str, pause_s: float = 0.05
) -> Any:
    """Call ``condition`` until it returns a true value, and return that value.

    Raises:
        AssertionError: ``timeout_s`` passed first; the message states what was
            expected.
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
    if isinstance(value, dict):
        items = ", ".join(
            f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()
        )
        return "{ " + items + " }"
    raise TypeError(f"No TOML form for {value!r} in test configurations.")


def write_config(
    path: Path, endpoints: Sequence[dict[str, Any]], **settings: Any
) -> Path:
    """Write a configuration file with top-level ``settings`` and ``endpoints``.

    ``dispatch_lead`` defaults to 0.5 s, which workers started with
    ``dramatiq_worker_timeout=100`` meet easily.
    """
    settings.setdefault("dispatch_lead", 0.5)
    lines = [f"{key} = {_toml_value(value)}" for key, value in settings.items()]
    for endpoint in endpoints:
        lines.append("")
        lines.append("[[endpoints]]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in endpoint.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def process_env(config_path: Path, redis_url: str, **extra: str) -> dict[str, str]:
    """Return the environment of a child process that uses this configuration."""
    env = {k: v for k, v in os.environ.items() if k not in _SETTINGS_VARIABLES}
    env.update(
        BTS_SYNC_CONFIG=str(config_path),
        BTS_SYNC_REDIS_URL=redis_url,
        dramatiq_worker_timeout="100",
        PYTHONUNBUFFERED="1",
        PATH=f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}",
    )
    env.update(extra)
    return env


class Processes:
    """Child processes of one test, each stopped by PID at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(
        self, name: str, command: list[str], env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        """Start ``command`` with standard output and error in ``folder/name.log``."""
        log_path = self.folder / f"{name}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.started.append((process, log_path))
        return process

    def worker(
        self, env: dict[str, str], processes: int = 1, name: str = "worker"
    ) -> subprocess.Popen[bytes]:
        """Start ``dramatiq bts_sync.actors`` with four threads per process."""
        command = [
            str(BIN_DIR / "dramatiq"),
            "bts_sync.actors",
            "--processes",
            str(processes),
            "--threads",
            "4",
        ]
        return self.start(name, command, env)

    def log(self, name: str) -> str:
        """Return what the named process has written so far."""
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def stop_all(self, timeout_s: float = 20) -> None:
        """Send SIGTERM to each process still running, wait, then SIGKILL what is left."""
        for process, _ in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process, _ in self.started:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def bts_sync_command(*args: str) -> list[str]:
    """Return the command line of ``bts-sync`` with ``args``."""
    return [str(BIN_DIR / "bts-sync"), *args]


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

    def answers() -> bool:
        try:
            http_request(url)
        except OSError:
            return False
        return True

    wait_until(answers, timeout_s, f"{url} answered", pause_s=0.1)
