"""Delivery of content changes to an application's Dramatiq actor.

An endpoint's ``on_change`` names an actor and a queue. For each change event,
bts-sync builds a ``dramatiq.Message`` for that actor and enqueues it on its
own broker, so the application does not import bts-sync and bts-sync does not
import the application. The application's worker must therefore use the same
Redis and the broker namespace ``{key_prefix}:dramatiq``.

The message has one positional argument, a dict (``build_change`` lists its
keys), so that keys added later do not break existing actors.

Delivery happens after the poll is recorded and is at most once: when the
worker dies in between, or the enqueue fails, the change stays in the change
stream (``{key_prefix}:changes``) but no message is sent.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
import redis

from bts_sync.config import ChangeTarget, Endpoint
from bts_sync.fetch import FetchResult
from bts_sync.store import ChangeEvent

logger = logging.getLogger(__name__)


def build_change(
    endpoint: Endpoint, result: FetchResult, change: ChangeEvent
) -> dict[str, Any]:
    """Build the argument of a change message, a dict with these keys.

    * ``endpoint``: endpoint name.
    * ``time``: Unix seconds at which the poll started.
    * ``status``: HTTP status.
    * ``content_type``: media type of the body.
    * ``body``: decoded JSON, or text when the body is not JSON.
    * ``hash``, ``previous_hash``: content hashes; ``previous_hash`` is None
      for the first body.
    * ``change_id``: id of the change stream entry, for deduplication.
    """
    return {
        "endpoint": endpoint.name,
        "time": round(result.started_at, 3),
        "status": result.status,
        "content_type": result.content_type,
        "body": result.body,
        "hash": change.hash,
        "previous_hash": change.previous_hash,
        "change_id": change.id,
    }


def change_message(
    target: ChangeTarget, change: dict[str, Any]
) -> dramatiq.Message[Any]:
    """Build the Dramatiq message that carries ``change`` to the target actor."""
    return dramatiq.Message(
        queue_name=target.queue,
        actor_name=target.actor,
        args=(change,),
        kwargs={},
        options={},
    )


def deliver_change(
    broker: dramatiq.Broker,
    endpoint: Endpoint,
    result: FetchResult,
    change: ChangeEvent,
) -> bool:
    """Send a change to the endpoint's ``on_change`` actor; return whether it was enqueued.

    Failures are logged, not raised, because the poll is already recorded.
    A body that JSON cannot encode raises ``TypeError`` or ``ValueError``.
    """
    target = endpoint.on_change
    if target is None:
        return False
    message = change_message(target, build_change(endpoint, result, change))
    try:
        broker.enqueue(message)
    except (redis.RedisError, dramatiq.DramatiqError, TypeError, ValueError):
        logger.exception(
            "Could not send change %s of endpoint %r to actor %r on queue %r; the change stays in the change stream.",
            change.id,
            endpoint.name,
            target.actor,
            target.queue,
        )
        return False
    logger.info(
        "Sent change %s of endpoint %r to actor %r on queue %r as message %s.",
        change.id,
        endpoint.name,
        target.actor,
        target.queue,
        message.message_id,
    )
    return True
