"""What a poll leaves in Redis: latest result, history, change events and counters.

Keys, under the configured prefix (``bts_sync`` by default); the README
documents them as the interface that consumers read:

* ``{prefix}:latest:{name}`` hash: the last poll (``time``, ``status``,
  ``error_kind`` …) and the last good content (``hash``, ``body`` …).
* ``{prefix}:history:{name}`` stream: one entry per poll, capped.
* ``{prefix}:changes`` stream: one entry per content change of any endpoint.
* ``{prefix}:stats:{name}`` hash: counters.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from bts_sync.fetch import FetchResult

logger = logging.getLogger(__name__)

#: Entries kept in the shared change stream.
CHANGES_LENGTH = 10_000

#: Counters kept per endpoint in the stats hash.
COUNTERS = (
    "polls",
    "successes",
    "failures",
    "consecutive_failures",
    "skipped_overlaps",
    "missed_slots",
    "dropped_duplicates",
    "dropped_stale",
    "changes",
)


def latest_key(prefix: str, name: str) -> str:
    """Return the key of the endpoint's latest-result hash."""
    return f"{prefix}:latest:{name}"


def history_key(prefix: str, name: str) -> str:
    """Return the key of the endpoint's history stream."""
    return f"{prefix}:history:{name}"


def changes_key(prefix: str) -> str:
    """Return the key of the change stream shared by all endpoints."""
    return f"{prefix}:changes"


def stats_key(prefix: str, name: str) -> str:
    """Return the key of the endpoint's counters hash."""
    return f"{prefix}:stats:{name}"


def content_hash(result: FetchResult) -> str:
    """Hash what counts as the content of a response.

    JSON bodies are hashed in canonical form (sorted keys, no spaces), so a
    server that reorders keys does not produce a change; other bodies are
    hashed as bytes.
    """
    if result.is_json:
        data = json.dumps(
            result.body, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    else:
        data = result.raw
    return hashlib.sha256(data).hexdigest()


# KEYS: latest, history, changes, stats.
# ARGV: name, time, ok, hash, history length, changes length, number of poll
# field values, then poll fields and values, then content fields and values.
_RECORD = """
local name, now, ok, hash = ARGV[1], ARGV[2], ARGV[3] == '1', ARGV[4]
local poll_count = tonumber(ARGV[7])
local poll_fields = {}
for i = 8, 7 + poll_count do poll_fields[#poll_fields + 1] = ARGV[i] end
local content_fields = {}
for i = 8 + poll_count, #ARGV do content_fields[#content_fields + 1] = ARGV[i] end

local previous = redis.call('HGET', KEYS[1], 'hash')
local changed = 0
redis.call('HSET', KEYS[1], unpack(poll_fields))
redis.call('HINCRBY', KEYS[4], 'polls', 1)
if ok then
  redis.call('HSET', KEYS[1], unpack(content_fields))
  redis.call('HINCRBY', KEYS[4], 'successes', 1)
  redis.call('HSET', KEYS[4], 'consecutive_failures', 0, 'last_success_at', now)
  if previous ~= hash then
    changed = 1
    redis.call('HSET', KEYS[1], 'changed_at', now)
    redis.call('HINCRBY', KEYS[4], 'changes', 1)
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*',
      'endpoint', name, 'time', now, 'hash', hash, 'previous_hash', previous or '')
  end
else
  redis.call('HINCRBY', KEYS[4], 'failures', 1)
  redis.call('HINCRBY', KEYS[4], 'consecutive_failures', 1)
  redis.call('HSET', KEYS[4], 'last_failure_at', now)
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'changed', changed, unpack(poll_fields))
return changed
"""

_record_scripts: dict[int, Any] = {}


def _record_script(client: redis.Redis) -> Any:
    script = _record_scripts.get(id(client))
    if script is None:
        script = client.register_script(_RECORD)
        _record_scripts[id(client)] = script
    return script


@dataclass(frozen=True)
class PollRecord:
    """A poll result with the scheduling facts that go with it.

    Attributes:
        result: What the fetch returned.
        slot_ms: The slot's due time, in milliseconds since the epoch.
        lateness_ms: How late the request started after the due time.
    """

    result: FetchResult
    slot_ms: int
    lateness_ms: float


def _poll_fields(record: PollRecord) -> list[str]:
    result = record.result
    fields: dict[str, Any] = {
        "time": f"{result.started_at:.3f}",
        "slot": record.slot_ms,
        "lateness_ms": f"{record.lateness_ms:.1f}",
        "status": result.status if result.status is not None else "",
        "reason": result.reason,
        "elapsed_ms": f"{result.elapsed_ms:.1f}",
        "size": result.size,
        "ok": int(result.ok),
        "error_kind": result.error_kind or "",
        "error": result.error or "",
    }
    return [str(item) for pair in fields.items() for item in pair]


def _content_fields(result: FetchResult, digest: str) -> list[str | bytes]:
    fields: dict[str, str | bytes] = {
        "hash": digest,
        "body": result.raw,
        "content_type": result.content_type,
        "is_json": str(int(result.is_json)),
        "fetched_at": f"{result.started_at:.3f}",
        "etag": result.etag or "",
        "last_modified": result.last_modified or "",
    }
    return [item for pair in fields.items() for item in pair]


def record_poll(
    client: redis.Redis,
    prefix: str,
    name: str,
    record: PollRecord,
    history_length: int,
    also: Callable[[Any], None] | None = None,
) -> bool:
    """Store a poll's result, history entry, counters and change event.

    Args:
        client: Redis client.
        prefix: Key prefix.
        name: Endpoint name.
        record: The poll and its slot.
        history_length: Entries kept in the history stream (approximately).
        also: Adds more commands to the same pipeline, so they cost no extra
            round trip.

    Returns:
        Whether the content changed.
    """
    result = record.result
    digest = content_hash(result) if result.ok else ""
    poll_fields = _poll_fields(record)
    args: list[Any] = [
        name,
        f"{result.started_at:.3f}",
        int(result.ok),
        digest,
        history_length,
        CHANGES_LENGTH,
        len(poll_fields),
        *poll_fields,
        *(_content_fields(result, digest) if result.ok else []),
    ]
    keys = [
        latest_key(prefix, name),
        history_key(prefix, name),
        changes_key(prefix),
        stats_key(prefix, name),
    ]

    pipe = client.pipeline(transaction=False)
    _record_script(client)(keys=keys, args=args, client=pipe)
    if also is not None:
        also(pipe)
    changed = pipe.execute()[0]
    return bool(changed)


def _decode(
    mapping: Mapping[bytes, bytes], binary: tuple[str, ...] = ()
) -> dict[str, Any]:
    decoded: dict[str, Any] = {}
    for key, value in mapping.items():
        name = key.decode()
        decoded[name] = value if name in binary else value.decode(errors="replace")
    return decoded


def read_latest(client: redis.Redis, prefix: str, name: str) -> dict[str, Any]:
    """Return the endpoint's latest-result hash; ``body`` stays bytes. Empty if never polled."""
    reply: Any = client.hgetall(latest_key(prefix, name))
    return _decode(reply, binary=("body",))


def read_stats(
    client: redis.Redis, prefix: str, names: list[str]
) -> dict[str, dict[str, Any]]:
    """Return the counters and latest poll fields of each endpoint, in one round trip.

    Each value has the counters as integers under their names and the latest
    poll's fields (without the body) under ``latest``.
    """
    pipe = client.pipeline(transaction=False)
    poll_fields = (
        "time",
        "slot",
        "lateness_ms",
        "status",
        "reason",
        "elapsed_ms",
        "size",
        "ok",
        "error_kind",
        "error",
        "changed_at",
    )
    for name in names:
        pipe.hgetall(stats_key(prefix, name))
        pipe.hmget(latest_key(prefix, name), *poll_fields)
    replies = pipe.execute()

    stats: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(names):
        counters = _decode(replies[2 * index])
        values: dict[str, Any] = {
            counter: int(counters.get(counter, 0)) for counter in COUNTERS
        }
        for field_name in ("last_success_at", "last_failure_at"):
            values[field_name] = (
                float(counters[field_name]) if field_name in counters else None
            )
        latest = replies[2 * index + 1]
        values["latest"] = {
            field_name: value.decode(errors="replace")
            for field_name, value in zip(poll_fields, latest, strict=True)
            if value is not None
        }
        stats[name] = values
    return stats


def read_history(
    client: redis.Redis, prefix: str, name: str, count: int
) -> list[dict[str, str]]:
    """Return up to ``count`` newest history entries of the endpoint, oldest first."""
    entries: Any = client.xrevrange(history_key(prefix, name), count=count)
    return [
        {"id": entry_id.decode(), **_decode(fields)}
        for entry_id, fields in reversed(entries)
    ]
