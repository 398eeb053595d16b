"""``bts-sync run``: worker, scheduler and live view in one foreground process tree.

It is meant for development. When no Redis responds at the configured URL and
none was configured on purpose, it starts a private ``redis-server`` from the
PATH on a free loopback port, with its data in the state folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bts_sync.connection import connect
from bts_sync.errors import RedisUnavailableError
from bts_sync.redact import mask_url

logger = logging.getLogger(__name__)

#: Folder for the private Redis's data and the child processes' logs, unless
#: ``BTS_SYNC_STATE_DIR`` names another.
DEFAULT_STATE_DIR = ".bts-sync"

#: Seconds the children get to stop after SIGTERM before they are killed.
STOP_TIMEOUT_S = 30.0


def state_dir(env: Mapping[str, str]) -> Path:
    """Return the state folder, created if missing."""
    path = Path(env.get("BTS_SYNC_STATE_DIR") or DEFAULT_STATE_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    """A process started by ``run``, with the log file it writes to."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes] | None = field(default=None, repr=False)


def start_private_redis(folder: Path) -> tuple[str, Child]:
    """Start ``redis-server`` on a free loopback port with its data in ``folder``.

    Raises:
        RedisUnavailableError: redis-server is not on the PATH or did not start.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisUnavailableError(
            "No Redis responds and redis-server is not on the PATH. Install Redis "
            "(for example apt-get install redis-server) or set REDIS_URL to a running Redis."
        )
    data = folder / "redis"
    data.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data.resolve()),
        "--save",
        "60 1",
        "--appendonly",
        "no",
    ]
    child = spawn("redis", command, folder, dict(os.environ))
    url = f"redis://127.0.0.1:{port}/0"

    deadline = time.monotonic() + 10
    while True:
        try:
            connect(url).close()
            return url, child
        except RedisUnavailableError:
            if child.process.poll() is not None or time.monotonic() > deadline:
                stop_children([child])
                raise RedisUnavailableError(
                    f"The private redis-server did not start; see {child.log_path}."
                ) from None
            time.sleep(0.1)


def spawn(name: str, command: list[str], folder: Path, env: dict[str, str]) -> Child:
    """Start a child in its own session, writing to ``folder/name.log``.

    Its own session keeps Ctrl+C in the terminal from reaching it, so that it
    gets exactly one SIGTERM, from ``stop_children``.
    """
    log_path = folder / f"{name}.log"
    log_file = log_path.open("ab")
    process = subprocess.Popen(
        command,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    return Child(name=name, process=process, log_path=log_path, log_file=log_file)


def stop_children(children: list[Child], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Send SIGTERM to each running child, wait, then SIGKILL what is left."""
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for child in children:
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning(
                "%s (pid %d) did not stop within %.0f s; killing it.",
                child.name,
                child.process.pid,
                timeout_s,
            )
            child.process.kill()
            child.process.wait()
        if child.log_file is not None:
            child.log_file.close()


def worker_commands() -> dict[str, list[str]]:
    """Return the commands of the worker and the scheduler, run with this Python."""
    return {
        "worker": [
            sys.executable,
            "-m",
            "dramatiq",
            "bts_sync.actors",
            "--processes",
            "1",
            "--threads",
            "4",
        ],
        "scheduler": [
            sys.executable,
            "-c",
            "import periodiq; periodiq.entrypoint()",
            "bts_sync.actors",
        ],
    }


def redis_was_chosen(
    env: Mapping[str, str], redis_url_flag: str | None, file_has_url: bool
) -> bool:
    """Tell whether the user named a Redis on purpose, which ``run`` then must not replace."""
    return bool(
        redis_url_flag
        or env.get("BTS_SYNC_REDIS_URL")
        or env.get("REDIS_URL")
        or file_has_url
    )


def describe_private_redis(url: str, folder: Path, pid: int) -> str:
    """Describe the private Redis for the user."""
    return f"No Redis answered, so bts-sync started redis-server at {mask_url(url)} (pid {pid}) with its data in {folder / 'redis'}."
