"""The chain protocol: one live chain of poll messages per endpoint, on a fixed grid.

Redis stores, per endpoint, a hash with the chain's generation ``token``, the
last claimed ``slot`` (a due time in milliseconds since the epoch), the
``interval`` and the time the chain was ``seeded``. This module is the only one
that reads or writes these keys. Every change to them is one Lua script, so concurrent
``start`` commands, watchdogs, retries and redeliveries cannot interleave.

Slots lie on a grid per endpoint: ``phase + k * interval``, where the phase is
derived from the endpoint's name. Different endpoints therefore spread over the
interval instead of all firing at the same instant, and a re-seeded chain lands
on the same grid as before.

The same hash stores the endpoint's politeness state: ``paused_until`` (a pause
that a ``Retry-After`` header asked for), ``backoff_until`` and
``backoff_streak``. The chain keeps claiming every slot during a pause or a
back-off, so the watchdog never takes it for stalled. The fire-time script
skips the slots that fall before these times. ``stop`` and ``start`` keep
them, so restarting cannot poll early.
"""

from __future__ import annotations

import logging
import math
import uuid
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from bts_sync.connection import queue_script
from bts_sync.store import latest_key, stats_key

if TYPE_CHECKING:
    from bts_sync.politeness import Hold

logger = logging.getLogger(__name__)

#: Milliseconds a slot may be late and still be polled; a later message counts
#: its slot as missed. It is capped at half the interval.
MAX_LATENESS_MS = 5000


def chain_key(prefix: str, name: str) -> str:
    """Return the key of an endpoint's chain hash."""
    return f"{prefix}:chain:{name}"


def chains_key(prefix: str) -> str:
    """Return the key of the set of endpoints whose chain is running."""
    return f"{prefix}:chains"


def running_key(prefix: str, name: str) -> str:
    """Return the key that marks a poll of the endpoint as in progress."""
    return f"{prefix}:running:{name}"


def new_token() -> str:
    """Return a fresh chain generation token."""
    return uuid.uuid4().hex[:16]


def grid_phase_ms(name: str, interval_ms: int) -> int:
    """Return the endpoint's offset on the grid, stable across processes."""
    return zlib.crc32(name.encode()) % interval_ms


def next_grid_slot(name: str, after_ms: int, interval_ms: int) -> int:
    """Return the first grid slot of the endpoint at or after ``after_ms``."""
    phase = grid_phase_ms(name, interval_ms)
    steps = math.ceil((after_ms - phase) / interval_ms)
    return phase + steps * interval_ms


@dataclass(frozen=True)
class SlotPlan:
    """Decision for a delivered slot.

    Attributes:
        poll: Whether the slot is still on time to be polled.
        next_slot_ms: The following slot to schedule, always in the future.
        missed: Slots passed over without a poll, this one included when
            ``poll`` is false.
    """

    poll: bool
    next_slot_ms: int
    missed: int


def plan_slot(slot_ms: int, now_ms: int, interval_ms: int) -> SlotPlan:
    """Decide whether a slot is polled and which slot comes next.

    The next slot is ``slot + k * interval`` with the smallest ``k`` that puts
    it in the future, so an outage ends without a burst of catch-up polls.
    """
    tolerance = min(MAX_LATENESS_MS, interval_ms // 2)
    poll = now_ms - slot_ms <= tolerance
    steps = max(1, math.floor((now_ms - slot_ms) / interval_ms) + 1)
    next_slot = slot_ms + steps * interval_ms
    missed = (steps - 1) + (0 if poll else 1)
    return SlotPlan(poll=poll, next_slot_ms=next_slot, missed=missed)


# KEYS: chain, chains; ARGV: name, new token, now, interval, stalled after, expected token.
# With an empty expected token it is a start: it keeps a live chain and
# replaces a missing or stalled one. With an expected token it is a re-seed by
# the watchdog, which only replaces that very token and only when stalled.
# Returns {started, token, last claimed slot}.
_SEED = """
local token = redis.call('HGET', KEYS[1], 'token')
local now = tonumber(ARGV[3])
local slot = redis.call('HGET', KEYS[1], 'slot') or '0'
local last = math.max(tonumber(slot),
                      tonumber(redis.call('HGET', KEYS[1], 'seeded') or '0'))
local stalled = (now - last) > tonumber(ARGV[5])
if ARGV[6] ~= '' then
  if token ~= ARGV[6] or not stalled then return {0, token or '', slot} end
elseif token and not stalled then
  return {0, token, slot}
end
redis.call('HSET', KEYS[1], 'token', ARGV[2], 'seeded', ARGV[3], 'interval', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[1])
return {1, ARGV[2], slot}
"""

# KEYS: chain, stats; ARGV: token, slot, missed.
_CLAIM = """
local token = redis.call('HGET', KEYS[1], 'token')
if token ~= ARGV[1] then
  redis.call('HINCRBY', KEYS[2], 'dropped_stale', 1)
  return 'stale'
end
local last = tonumber(redis.call('HGET', KEYS[1], 'slot') or '-1')
if tonumber(ARGV[2]) <= last then
  redis.call('HINCRBY', KEYS[2], 'dropped_duplicates', 1)
  return 'duplicate'
end
redis.call('HSET', KEYS[1], 'slot', ARGV[2])
if tonumber(ARGV[3]) > 0 then
  redis.call('HINCRBY', KEYS[2], 'missed_slots', ARGV[3])
end
return 'claimed'
"""

# KEYS: chain, running, stats, latest; ARGV: token, slot, lock milliseconds.
# Returns {outcome, held until, etag, last modified, back-off streak}; the
# validators and the streak are read here so that a poll costs no extra round trip.
_BEGIN = """
local chain = redis.call('HMGET', KEYS[1], 'token', 'paused_until', 'backoff_until', 'backoff_streak')
if chain[1] ~= ARGV[1] then
  return {'stopped', ''}
end
local slot = tonumber(ARGV[2])
if chain[2] and slot < tonumber(chain[2]) then
  redis.call('HINCRBY', KEYS[3], 'skipped_paused', 1)
  return {'paused', chain[2]}
end
if chain[3] and slot < tonumber(chain[3]) then
  redis.call('HINCRBY', KEYS[3], 'skipped_backoff', 1)
  return {'backing_off', chain[3]}
end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  redis.call('HINCRBY', KEYS[3], 'skipped_overlaps', 1)
  return {'overlap', ''}
end
local validators = redis.call('HMGET', KEYS[4], 'etag', 'last_modified')
return {'ok', '', validators[1] or '', validators[2] or '', chain[4] or '0'}
"""

# KEYS: running; ARGV: slot.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS: chain, chains; ARGV: name.
_STOP = """
local had = redis.call('HDEL', KEYS[1], 'token')
redis.call('SREM', KEYS[2], ARGV[1])
return had
"""


class _Scripts:
    """Lua scripts registered once per client."""

    def __init__(self, client: redis.Redis) -> None:
        self.seed = client.register_script(_SEED)
        self.claim = client.register_script(_CLAIM)
        self.begin = client.register_script(_BEGIN)
        self.release = client.register_script(_RELEASE)
        self.stop = client.register_script(_STOP)


_scripts_by_client: dict[int, _Scripts] = {}


def _scripts(client: redis.Redis) -> _Scripts:
    scripts = _scripts_by_client.get(id(client))
    if scripts is None:
        scripts = _Scripts(client)
        _scripts_by_client[id(client)] = scripts
    return scripts


@dataclass(frozen=True)
class SeedOutcome:
    """Result of a start or re-seed.

    Attributes:
        started: Whether a new chain generation was written.
        token: The chain's token after the call.
        first_slot_ms: First slot of the new generation; None when not started.
    """

    started: bool
    token: str
    first_slot_ms: int | None


def seed(
    client: redis.Redis,
    prefix: str,
    name: str,
    interval_ms: int,
    now_ms: int,
    stalled_after_ms: int,
    lead_ms: int,
    expected_token: str = "",
) -> SeedOutcome:
    """Start a chain, or with ``expected_token`` re-seed a stalled one.

    The caller sends the first message for ``first_slot_ms`` when ``started``.
    """
    token = new_token()
    keys = [chain_key(prefix, name), chains_key(prefix)]
    args: list[str | int] = [
        name,
        token,
        now_ms,
        interval_ms,
        stalled_after_ms,
        expected_token,
    ]
    started, current, last_slot = _scripts(client).seed(keys=keys, args=args)
    current_token = current.decode() if isinstance(current, bytes) else str(current)
    if not started:
        return SeedOutcome(started=False, token=current_token, first_slot_ms=None)
    # The slot claimed last by a stopped chain can lie up to the lead time
    # ahead (more if clocks differ), and the claim check drops any slot that is
    # not later than it, so the new chain starts after it.
    after = max(now_ms + lead_ms, int(last_slot) + 1)
    first = next_grid_slot(name, after, interval_ms)
    return SeedOutcome(started=True, token=current_token, first_slot_ms=first)


def claim(
    client: redis.Redis, prefix: str, name: str, token: str, slot_ms: int, missed: int
) -> str:
    """Claim a slot for this message: ``claimed``, ``stale`` or ``duplicate``.

    Only a message with the current token and a slot later than the last
    claimed one wins, so every slot is claimed at most once.
    """
    keys = [chain_key(prefix, name), stats_key(prefix, name)]
    outcome = _scripts(client).claim(keys=keys, args=[token, slot_ms, missed])
    return outcome.decode() if isinstance(outcome, bytes) else str(outcome)


@dataclass(frozen=True)
class PollStart:
    """Decision of the fire-time check of a slot, with what the poll needs.

    Attributes:
        outcome: ``ok`` to poll. Any other value skips the slot: ``stopped``
            (the token is gone), ``paused``, ``backing_off``, or ``overlap``
            (the previous poll still runs).
        held_until_ms: End of the pause or back-off that skipped the slot.
        etag: ``ETag`` of the last good response, or None.
        last_modified: ``Last-Modified`` of the last good response, or None.
        backoff_streak: Consecutive unsuccessful polls so far.
    """

    outcome: str
    held_until_ms: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    backoff_streak: int = 0


def begin_poll(
    client: redis.Redis, prefix: str, name: str, token: str, slot_ms: int, lock_ms: int
) -> PollStart:
    """Decide at the due time whether a claimed slot is polled, and mark the poll as started.

    A slot before the end of a pause or a back-off is skipped and counted
    (``skipped_paused``, ``skipped_backoff``), and so is a slot whose previous
    poll still runs (``skipped_overlaps``). The in-progress mark expires after
    ``lock_ms`` in case the process that set it dies.
    """
    keys = [
        chain_key(prefix, name),
        running_key(prefix, name),
        stats_key(prefix, name),
        latest_key(prefix, name),
    ]
    reply = _scripts(client).begin(keys=keys, args=[token, slot_ms, lock_ms])
    values = [item.decode() if isinstance(item, bytes) else str(item) for item in reply]
    if values[0] != "ok":
        return PollStart(
            outcome=values[0], held_until_ms=int(values[1]) if values[1] else None
        )
    return PollStart(
        outcome="ok",
        etag=values[2] or None,
        last_modified=values[3] or None,
        backoff_streak=int(values[4]),
    )


def queue_hold(pipe: Any, prefix: str, name: str, hold: Hold) -> None:
    """Queue, on ``pipe``, the writes that store a poll's pause and back-off."""
    key = chain_key(prefix, name)
    if hold.paused_until_ms is not None:
        pipe.hset(key, "paused_until", hold.paused_until_ms)
    if hold.backoff_until_ms is None:
        pipe.hdel(key, "backoff_until")
    else:
        pipe.hset(key, "backoff_until", hold.backoff_until_ms)
    pipe.hset(key, "backoff_streak", hold.backoff_streak)


def release_poll(
    pipe: Any, client: redis.Redis, prefix: str, name: str, slot_ms: int
) -> None:
    """Queue, on ``pipe``, the removal of the in-progress mark set for ``slot_ms``."""
    queue_script(pipe, _scripts(client).release, [running_key(prefix, name)], [slot_ms])


def stop(client: redis.Redis, prefix: str, name: str) -> bool:
    """End the endpoint's chain; return whether it was running.

    Messages already in flight fail the token check and are dropped, and a
    claimed slot that has not started yet is not polled.
    """
    return bool(
        _scripts(client).stop(
            keys=[chain_key(prefix, name), chains_key(prefix)], args=[name]
        )
    )


@dataclass(frozen=True)
class ChainState:
    """Chain fields stored in Redis for one endpoint.

    Attributes:
        name: Endpoint name.
        token: Current token, or None when stopped.
        slot_ms: Last claimed slot, or None before the first claim.
        interval_ms: Interval of the chain.
        seeded_ms: When the current generation was written.
        paused_until_ms: End of the last pause that a server asked for, or None.
        backoff_until_ms: End of the current back-off, or None.
    """

    name: str
    token: str | None
    slot_ms: int | None
    interval_ms: int | None
    seeded_ms: int | None
    paused_until_ms: int | None = None
    backoff_until_ms: int | None = None

    @property
    def running(self) -> bool:
        """Whether the chain has a token."""
        return self.token is not None

    def last_activity_ms(self) -> int:
        """Return the later of the last claimed slot and the seeding time."""
        return max(self.slot_ms or 0, self.seeded_ms or 0)

    def is_stalled(self, now_ms: int, grace_ms: int) -> bool:
        """Tell whether a running chain has claimed nothing for an interval plus ``grace_ms``."""
        if not self.running or self.interval_ms is None:
            return False
        return now_ms - self.last_activity_ms() > self.interval_ms + grace_ms


def read_states(
    client: redis.Redis, prefix: str, names: list[str]
) -> dict[str, ChainState]:
    """Read the chain state of each named endpoint in one round trip."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hmget(
            chain_key(prefix, name),
            "token",
            "slot",
            "interval",
            "seeded",
            "paused_until",
            "backoff_until",
        )
    states = {}
    for name, (token, slot, interval, seeded, paused, backoff) in zip(
        names, pipe.execute(), strict=True
    ):
        states[name] = ChainState(
            name=name,
            token=token.decode() if token else None,
            slot_ms=int(slot) if slot else None,
            interval_ms=int(interval) if interval else None,
            seeded_ms=int(seeded) if seeded else None,
            paused_until_ms=int(paused) if paused else None,
            backoff_until_ms=int(backoff) if backoff else None,
        )
    return states


def running_names(client: redis.Redis, prefix: str) -> list[str]:
    """Return the names of endpoints whose chain is running, sorted."""
    members: Any = client.smembers(chains_key(prefix))
    return sorted(member.decode() for member in members)
