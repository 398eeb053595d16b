"""Dead-lettered messages of the bts-sync queue: list, requeue and delete them.

Dramatiq's Redis broker (``dramatiq/brokers/redis/dispatch.lua``, version 2.x)
keeps, under its namespace ``{prefix}:dramatiq``:

* ``{namespace}:{queue}`` list: ids of messages ready to be fetched.
* ``{namespace}:{queue}.msgs`` hash: id to encoded message.
* ``{namespace}:{queue}.XQ`` sorted set: ids of dead-lettered messages, scored
  by the time they were dead-lettered in milliseconds.
* ``{namespace}:{queue}.XQ.msgs`` hash: id to encoded message.

The ids are the broker's ``redis_message_id`` option, not the message id.
A requeue moves a message from the dead-letter queue to the ready list in one
script, so a message is requeued at most once however many people press the
button. A requeued poll message is harmless: its slot fails the chain's claim
and the message is dropped and counted.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import redis
from dramatiq import Message
from dramatiq.errors import DecodeError

from bts_sync.redact import mask_text

#: Dead-lettered messages listed at most.
MAX_LISTED = 200


def dramatiq_namespace(prefix: str) -> str:
    """Return the namespace of Dramatiq's keys for the key prefix."""
    return f"{prefix}:dramatiq"


def _keys(namespace: str, queue: str) -> tuple[str, str, str, str]:
    base = f"{namespace}:{queue}"
    return base, f"{base}.msgs", f"{base}.XQ", f"{base}.XQ.msgs"


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered message.

    Attributes:
        id: The broker's id of the message in Redis.
        message_id: Dramatiq's message id.
        actor: Actor name.
        args: Positional arguments, as sent (bts-sync sends no secrets in them).
        dead_lettered_at: Unix time at which it was dead-lettered.
        error: Last line of the traceback that Dramatiq stored, masked; empty
            when none was stored.
    """

    id: str
    message_id: str
    actor: str
    args: tuple[Any, ...]
    dead_lettered_at: float
    error: str

    def to_dict(self) -> dict[str, Any]:
        """Return the message as plain data for JSON."""
        return {
            "id": self.id,
            "message_id": self.message_id,
            "actor": self.actor,
            "args": [mask_text(str(arg)) for arg in self.args],
            "dead_lettered_at": self.dead_lettered_at,
            "error": self.error,
        }


def _last_traceback_line(options: dict[str, Any]) -> str:
    text = str(options.get("traceback") or "").strip()
    return mask_text(text.splitlines()[-1]) if text else ""


def list_dead_letters(
    client: redis.Redis, namespace: str, queue: str, limit: int = MAX_LISTED
) -> list[DeadLetter]:
    """Return up to ``limit`` dead-lettered messages, newest first."""
    _, _, xqueue, xmessages = _keys(namespace, queue)
    entries: Any = client.zrevrange(xqueue, 0, limit - 1, withscores=True)
    if not entries:
        return []
    data: Any = client.hmget(xmessages, [entry_id for entry_id, _ in entries])
    letters = []
    for (entry_id, score), encoded in zip(entries, data, strict=True):
        redis_id = entry_id.decode()
        if encoded is None:
            continue
        try:
            message = Message.decode(encoded)
        except DecodeError:
            letters.append(
                DeadLetter(redis_id, "", "(undecodable)", (), score / 1000, "")
            )
            continue
        letters.append(
            DeadLetter(
                id=redis_id,
                message_id=message.message_id,
                actor=message.actor_name,
                args=message.args,
                dead_lettered_at=score / 1000,
                error=_last_traceback_line(message.options),
            )
        )
    return letters


# KEYS: dead-letter set, dead-letter messages, queue list, queue messages.
# ARGV: old id, new id, new encoded message.
_REQUEUE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[2], ARGV[3])
redis.call('RPUSH', KEYS[3], ARGV[2])
return 1
"""


def requeue_dead_letter(
    client: redis.Redis, namespace: str, queue: str, redis_id: str
) -> bool:
    """Move a dead-lettered message back to the ready queue; return whether it was there.

    The message keeps its Dramatiq id and arguments, loses its delay and its
    stored traceback, and gets a new broker id, as Dramatiq's own enqueue
    gives every enqueued copy.
    """
    base, messages, xqueue, xmessages = _keys(namespace, queue)
    encoded: Any = client.hget(xmessages, redis_id)
    if encoded is None:
        return False
    message = Message.decode(encoded)
    new_id = str(uuid.uuid4())
    options = {
        key: value
        for key, value in message.options.items()
        if key not in ("eta", "traceback", "redis_message_id")
    }
    fresh: Message[Any] = Message(
        queue_name=queue,
        actor_name=message.actor_name,
        args=message.args,
        kwargs=message.kwargs,
        options={**options, "redis_message_id": new_id},
        message_id=message.message_id,
        message_timestamp=message.message_timestamp,
    )
    moved = client.eval(
        _REQUEUE, 4, xqueue, xmessages, base, messages, redis_id, new_id, fresh.encode()
    )
    return bool(moved)


def delete_dead_letter(
    client: redis.Redis, namespace: str, queue: str, redis_id: str
) -> bool:
    """Delete a dead-lettered message; return whether it was there."""
    _, _, xqueue, xmessages = _keys(namespace, queue)
    pipe = client.pipeline(transaction=True)
    pipe.zrem(xqueue, redis_id)
    pipe.hdel(xmessages, redis_id)
    removed, _ = pipe.execute()
    return bool(removed)
