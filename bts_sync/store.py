"""Records of each poll in Redis: latest result, history, change events and counters.

Keys, under the configured prefix (``bts_sync`` by default); the README
documents them as the interface that consumers read:

* ``{prefix}:latest:{name}`` hash: the last poll (``time``, ``status``,
  ``error_kind`` …) and the last good content (``hash``, ``body`` …).
* ``{prefix}:history:{name}`` stream: one entry per poll, capped.
* ``{prefix}:changes`` stream: one entry per content change of any endpoint.
* ``{prefix}:stats:{name}`` hash: counters.

A poll ends in one of four outcomes:

* ``ok``: new content, which may or may not be a change.
* ``not_modified``: a 304 to a conditional request, which is a success that
  keeps the stored body.
* ``rate_limited``: a 429. It is neither a success nor a failure, so
  ``consecutive_failures`` is left as it is.
* ``failed``: any other failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from bts_sync import changes
from bts_sync.connection import execute_pipeline, queue_script
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
    "not_modified",
    "rate_limited",
    "skipped_paused",
    "skipped_backoff",
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


# KEYS: latest, history, changes, stats.
# ARGV: name, time, outcome, hash, history length, changes length, number of
# poll field values, then poll fields and values, then content fields and values.
# Returns the change entry's id and the previous hash, or nil without a change.
_RECORD = """
local name, now, outcome, hash = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local poll_count = tonumber(ARGV[7])
local poll_fields = {}
for i = 8, 7 + poll_count do poll_fields[#poll_fields + 1] = ARGV[i] end
local content_fields = {}
for i = 8 + poll_count, #ARGV do content_fields[#content_fields + 1] = ARGV[i] end

local previous = redis.call('HGET', KEYS[1], 'hash')
local change_id = false
redis.call('HSET', KEYS[1], unpack(poll_fields))
redis.call('HINCRBY', KEYS[4], 'polls', 1)
if outcome == 'ok' or outcome == 'not_modified' then
  if #content_fields > 0 then redis.call('HSET', KEYS[1], unpack(content_fields)) end
  redis.call('HINCRBY', KEYS[4], 'successes', 1)
  redis.call('HSET', KEYS[4], 'consecutive_failures', 0, 'last_success_at', now)
  if outcome == 'not_modified' then
    redis.call('HINCRBY', KEYS[4], 'not_modified', 1)
  elseif previous ~= hash then
    redis.call('HSET', KEYS[1], 'changed_at', now)
    redis.call('HINCRBY', KEYS[4], 'changes', 1)
    change_id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*',
      'endpoint', name, 'time', now, 'hash', hash, 'previous_hash', previous or '')
  end
elseif outcome == 'rate_limited' then
  redis.call('HINCRBY', KEYS[4], 'rate_limited', 1)
  redis.call('HSET', KEYS[4], 'last_rate_limited_at', now)
else
  redis.call('HINCRBY', KEYS[4], 'failures', 1)
  redis.call('HINCRBY', KEYS[4], 'consecutive_failures', 1)
  redis.call('HSET', KEYS[4], 'last_failure_at', now)
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*',
  'changed', change_id and 1 or 0, unpack(poll_fields))
if change_id then return {change_id, previous or ''} end
return false
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


@dataclass(frozen=True)
class ChangeEvent:
    """An entry that a poll added to the change stream.

    Attributes:
        id: The stream entry's id, such as ``1718000000000-0``.
        hash: Content hash of the new body.
        previous_hash: Content hash before the change, or None for the first body.
    """

    id: str
    hash: str
    previous_hash: str | None


def poll_outcome(result: FetchResult) -> str:
    """Classify a result as ``ok``, ``not_modified``, ``rate_limited`` or ``failed``."""
    if result.not_modified:
        return "not_modified"
    if result.ok:
        return "ok"
    if result.error_kind == "rate_limited":
        return "rate_limited"
    return "failed"


def _validator_fields(result: FetchResult) -> list[str | bytes]:
    """Return the validators that a 304 response carried, to keep them current."""
    fields: list[str | bytes] = []
    if result.etag:
        fields += ["etag", result.etag]
    if result.last_modified:
        fields += ["last_modified", result.last_modified]
    return fields


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
    change = record_and_detect_change(
        client, prefix, name, record, history_length, also=also
    )
    return change is not None


def record_and_detect_change(
    client: redis.Redis,
    prefix: str,
    name: str,
    record: PollRecord,
    history_length: int,
    digest: str | None = None,
    also: Callable[[Any], None] | None = None,
    also_replies: list[Any] | None = None,
) -> ChangeEvent | None:
    """Store a poll like ``record_poll`` and return the change event it added.

    Args:
        client: Redis client.
        prefix: Key prefix.
        name: Endpoint name.
        record: The poll and its slot.
        history_length: Entries kept in the history stream (approximately).
        digest: Content hash of a successful result, or None to hash the
            whole body.
        also: Adds more commands to the same pipeline, so they cost no extra
            round trip.
        also_replies: Receives the replies of the commands that ``also`` added.

    Returns:
        The new change stream entry, or None when the content did not change
        or the poll did not succeed.
    """
    result = record.result
    outcome = poll_outcome(result)
    if outcome == "ok":
        digest = changes.content_hash(result) if digest is None else digest
        content = _content_fields(result, digest)
    else:
        digest = ""
        content = _validator_fields(result) if outcome == "not_modified" else []
    poll_fields = _poll_fields(record)
    args: list[Any] = [
        name,
        f"{result.started_at:.3f}",
        outcome,
        digest,
        history_length,
        CHANGES_LENGTH,
        len(poll_fields),
        *poll_fields,
        *content,
    ]
    keys = [
        latest_key(prefix, name),
        history_key(prefix, name),
        changes_key(prefix),
        stats_key(prefix, name),
    ]

    pipe = client.pipeline(transaction=False)
    queue_script(pipe, _record_script(client), keys, args)
    if also is not None:
        also(pipe)
    replies = execute_pipeline(pipe, client)
    if also_replies is not None:
        also_replies.extend(replies[1:])
    reply = replies[0]
    if not reply:
        return None
    entry_id, previous = (item.decode() for item in reply)
    return ChangeEvent(id=entry_id, hash=digest, previous_hash=previous or None)


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
        for field_name in (
            "last_success_at",
            "last_failure_at",
            "last_rate_limited_at",
        ):
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
