"""A stand-in application for change delivery tests: ``dramatiq change_receiver``.

It does not import bts-sync. Its actor stores every message it receives in a
Redis list, so a test can count the messages and read their contents.

Environment: ``RECEIVER_REDIS_URL`` (Redis of bts-sync), ``RECEIVER_NAMESPACE``
(bts-sync's broker namespace, ``{key_prefix}:dramatiq``), ``RECEIVER_QUEUE``
and ``RECEIVER_LIST`` (the Redis list that collects the messages).
"""

from __future__ import annotations

import json
import os
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

REDIS_URL = os.environ["RECEIVER_REDIS_URL"]
RECEIVED_LIST = os.environ.get("RECEIVER_LIST", "test:received")

broker = RedisBroker(
    url=REDIS_URL, namespace=os.environ.get("RECEIVER_NAMESPACE", "bts_sync:dramatiq")
)
dramatiq.set_broker(broker)
_client = redis.Redis.from_url(REDIS_URL)


@dramatiq.actor(queue_name=os.environ.get("RECEIVER_QUEUE", "app"), max_retries=0)
def record_change(change: dict[str, Any]) -> None:
    """Append the received change to the Redis list."""
    _client.rpush(RECEIVED_LIST, json.dumps(change))
