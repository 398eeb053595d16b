"""A registry of running worker processes, for ``watch``, the dashboard and metrics.

Each worker process adds itself to the sorted set ``{prefix}:workers``, scored
by its last heartbeat in milliseconds, and keeps a hash ``{prefix}:worker:{id}``
with its host, PID and thread count. Dramatiq's own heartbeat set cannot serve
here, because every process that sends a message (the scheduler, ``bts-sync
start``) appears in it too.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from dramatiq.middleware import Middleware

from bts_sync.connection import connect, describe

logger = logging.getLogger(__name__)

#: Seconds between two heartbeats of a worker process.
HEARTBEAT_INTERVAL_S = 15.0

#: Milliseconds after its last heartbeat that a worker still counts as seen.
SEEN_WINDOW_MS = 60_000

#: Milliseconds after which a silent worker is removed from the registry.
FORGET_AFTER_MS = 3_600_000


def workers_key(prefix: str) -> str:
    """Return the key of the sorted set of worker ids, scored by last heartbeat."""
    return f"{prefix}:workers"


def worker_key(prefix: str, worker_id: str) -> str:
    """Return the key of the hash that describes one worker process."""
    return f"{prefix}:worker:{worker_id}"


@dataclass(frozen=True)
class WorkerInfo:
    """A worker process seen recently.

    Attributes:
        id: ``host:pid``.
        host: Host name of the machine.
        pid: Process id.
        threads: Worker threads of the process.
        last_seen: Unix time of the last heartbeat.
        started: Unix time at which the process started its worker.
    """

    id: str
    host: str
    pid: int
    threads: int
    last_seen: float
    started: float | None

    def to_dict(self) -> dict[str, Any]:
        """Return the worker as plain data for JSON."""
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "threads": self.threads,
            "last_seen": self.last_seen,
            "started": self.started,
        }


def read_workers(
    client: redis.Redis, prefix: str, now_ms: int, window_ms: int = SEEN_WINDOW_MS
) -> list[WorkerInfo]:
    """Return the workers whose last heartbeat lies within ``window_ms`` of ``now_ms``."""
    members: Any = client.zrangebyscore(
        workers_key(prefix), now_ms - window_ms, "+inf", withscores=True
    )
    if not members:
        return []
    pipe = client.pipeline(transaction=False)
    for member, _ in members:
        pipe.hgetall(worker_key(prefix, member.decode()))
    details = pipe.execute()

    workers = []
    for (member, score), fields in zip(members, details, strict=True):
        worker_id = member.decode()
        info = {k.decode(): v.decode() for k, v in fields.items()}
        host, _, pid = worker_id.rpartition(":")
        workers.append(
            WorkerInfo(
                id=worker_id,
                host=info.get("host", host),
                pid=int(info.get("pid", pid or 0)),
                threads=int(info.get("threads", 0)),
                last_seen=score / 1000,
                started=float(info["started"]) if info.get("started") else None,
            )
        )
    return sorted(workers, key=lambda w: w.id)


class WorkerRegistry(Middleware):
    """Dramatiq middleware that registers each worker process and beats every 15 s.

    The heartbeat runs in a daemon thread from worker boot to worker shutdown.
    A failed heartbeat is logged and retried at the next beat, so a Redis
    outage only makes the worker disappear from the view for a while.
    """

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker_id = ""

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        self._worker_id = f"{socket.gethostname()}:{os.getpid()}"
        threads = int(getattr(worker, "worker_threads", 0))
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._beat,
            args=(threads, time.time()),
            name="bts-sync-heartbeat",
            daemon=True,
        )
        self._thread.start()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            client = connect(self.redis_url, check=False)
            pipe = client.pipeline(transaction=False)
            pipe.zrem(workers_key(self.prefix), self._worker_id)
            pipe.delete(worker_key(self.prefix, self._worker_id))
            pipe.execute()
        except redis.RedisError as exc:
            logger.warning(
                "Could not remove worker %s from the registry (%s); it disappears from the view within a minute.",
                self._worker_id,
                describe(exc),
            )

    def _beat(self, threads: int, started: float) -> None:
        client = connect(self.redis_url, check=False)
        details_key = worker_key(self.prefix, self._worker_id)
        expire_s = int(FORGET_AFTER_MS / 1000)
        while True:
            now_ms = int(time.time() * 1000)
            try:
                pipe = client.pipeline(transaction=True)
                pipe.zadd(workers_key(self.prefix), {self._worker_id: now_ms})
                pipe.zremrangebyscore(
                    workers_key(self.prefix), 0, now_ms - FORGET_AFTER_MS
                )
                pipe.hset(
                    details_key,
                    mapping={
                        "host": socket.gethostname(),
                        "pid": os.getpid(),
                        "threads": threads,
                        "started": f"{started:.3f}",
                    },
                )
                pipe.expire(details_key, expire_s)
                pipe.execute()
            except redis.RedisError as exc:
                logger.warning(
                    "Worker heartbeat of %s failed (%s); retrying in %.0f s.",
                    self._worker_id,
                    describe(exc),
                    HEARTBEAT_INTERVAL_S,
                )
            if self._stop.wait(HEARTBEAT_INTERVAL_S):
                return
