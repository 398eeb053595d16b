"""The naive design, the baseline of every benchmark: poll, then re-send yourself 3 s later.

``dramatiq bench.naive_actors`` runs it, with ``NAIVE_REDIS_URL`` naming the
Redis (a separate redis-server from bts-sync's in the benchmarks). The actor
does the same work per poll as bts-sync's, with bts-sync's ``fetch`` and
``record_poll`` under the key prefix ``naive``, so CPU per poll compares the
scheduling designs. The broker keeps Dramatiq's default middleware, retries
included, as a first implementation would.

``python -m bench.naive_actors FILE`` sends the first message of each
endpoint listed in FILE as ``name URL`` lines.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import zlib
from pathlib import Path

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from bts_sync.config import Endpoint
from bts_sync.fetch import fetch
from bts_sync.store import PollRecord, record_poll

logger = logging.getLogger(__name__)

#: Delay between the end of one poll and the next, in milliseconds.
RESEND_DELAY_MS = 3000

#: Prefix of the keys that the naive polls write.
KEY_PREFIX = "naive"

REDIS_URL = os.environ.get("NAIVE_REDIS_URL", "redis://localhost:6379/0")

broker = RedisBroker(url=REDIS_URL, namespace=f"{KEY_PREFIX}:dramatiq")  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)

_clients: dict[int, redis.Redis] = {}
_clients_lock = threading.Lock()


def _client() -> redis.Redis:
    with _clients_lock:
        client = _clients.get(os.getpid())
        if client is None:
            client = redis.Redis.from_url(REDIS_URL)
            _clients[os.getpid()] = client
        return client


@dramatiq.actor(queue_name="naive")
def naive_poll(name: str, url: str) -> None:
    """Poll the endpoint, record the result and send the next poll 3 s later."""
    result = fetch(Endpoint(name=name, url=url))
    started_ms = int(result.started_at * 1000)
    record = PollRecord(result=result, slot_ms=started_ms, lateness_ms=0.0)
    changed = record_poll(_client(), KEY_PREFIX, name, record, history_length=1000)
    logger.info(
        "Polled endpoint %r: status %s in %.0f ms, %s.",
        name,
        result.status,
        result.elapsed_ms,
        "changed" if changed else "unchanged",
    )
    naive_poll.send_with_options(args=(name, url), delay=RESEND_DELAY_MS)


def seed(endpoint_list: Path) -> int:
    """Send the first message of each ``name URL`` line; return how many were sent.

    Each first message is delayed by a share of the interval taken from the
    name, as bts-sync spreads its grid, so that the naive chains do not all
    start in the same instant.
    """
    count = 0
    for line in endpoint_list.read_text().splitlines():
        if line.strip():
            name, url = line.split()
            delay_ms = zlib.crc32(name.encode()) % RESEND_DELAY_MS
            naive_poll.send_with_options(args=(name, url), delay=delay_ms)
            count += 1
    return count


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bench.naive_actors ENDPOINT_LIST")
    print(f"Sent the first message of {seed(Path(sys.argv[1]))} naive chains.")
