"""The chain protocol called directly against a real redis-server.

These tests call ``bts_sync.chain`` (and ``run_slot`` of the actors module)
without worker processes, so that each rule of the protocol is checked on its
own: one live chain per endpoint, one claim per slot, slots on a fixed grid, no
overlapping polls, ``stop`` taking effect, and an atomic re-seed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
from support import forget_actors, import_actors, write_config

from bts_sync import chain, store
from bts_sync.connection import execute_pipeline
from bts_sync.fetch import FetchResult

PREFIX = "bts_sync"
NAME = "items"
INTERVAL_MS = 1000
LEAD_MS = 500
STALLED_AFTER_MS = 3000
NOW_MS = 1_800_000_000_000


def seed(client: redis.Redis, now_ms: int = NOW_MS, expected: str = "") -> Any:
    return chain.seed(
        client,
        PREFIX,
        NAME,
        interval_ms=INTERVAL_MS,
        now_ms=now_ms,
        stalled_after_ms=STALLED_AFTER_MS,
        lead_ms=LEAD_MS,
        expected_token=expected,
    )


def counter(client: redis.Redis, name: str) -> int:
    value = client.hget(store.stats_key(PREFIX, NAME), name)
    return int(value or 0)


def run_in_threads(count: int, call: Callable[[], Any]) -> list[Any]:
    """Run ``call`` in ``count`` threads released together; return the results."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def target(index: int) -> None:
        barrier.wait()
        results[index] = call()

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results


# One live chain per endpoint.


def test_second_start_keeps_live_chain(client: redis.Redis) -> None:
    # Given a started chain
    first = seed(client)
    # When it is started again before it stalls
    second = seed(client, now_ms=NOW_MS + 100)
    # Then the second start writes nothing and returns the live token
    assert first.started
    assert not second.started
    assert second.token == first.token
    assert second.first_slot_ms is None


def test_concurrent_starts_seed_once(redis_url: str) -> None:
    clients = [redis.Redis.from_url(redis_url) for _ in range(8)]
    calls = iter(clients)
    lock = threading.Lock()

    def start() -> Any:
        with lock:
            own = next(calls)
        return seed(own)

    outcomes = run_in_threads(8, start)

    assert sum(outcome.started for outcome in outcomes) == 1
    assert len({outcome.token for outcome in outcomes}) == 1
    for own in clients:
        own.close()


def test_start_replaces_stalled_chain(client: redis.Redis) -> None:
    first = seed(client)
    later = seed(client, now_ms=NOW_MS + STALLED_AFTER_MS + 1)
    assert later.started
    assert later.token != first.token


def test_first_slot_lies_on_grid_after_lead(client: redis.Redis) -> None:
    outcome = seed(client)
    phase = chain.grid_phase_ms(NAME, INTERVAL_MS)
    assert outcome.first_slot_ms >= NOW_MS + LEAD_MS
    assert outcome.first_slot_ms < NOW_MS + LEAD_MS + INTERVAL_MS
    assert (outcome.first_slot_ms - phase) % INTERVAL_MS == 0


def test_claim_repeated_slot_is_duplicate(client: redis.Redis) -> None:
    # Given a chain that claimed its first slot
    outcome = seed(client)
    slot = outcome.first_slot_ms
    assert chain.claim(client, PREFIX, NAME, outcome.token, slot, 0) == "claimed"
    # When the same message arrives again, as after a retry or a redelivery
    again = chain.claim(client, PREFIX, NAME, outcome.token, slot, 0)
    earlier = chain.claim(client, PREFIX, NAME, outcome.token, slot - INTERVAL_MS, 0)
    # Then it is dropped and counted
    assert again == "duplicate"
    assert earlier == "duplicate"
    assert counter(client, "dropped_duplicates") == 2


def test_claim_with_old_token_is_stale(client: redis.Redis) -> None:
    old = seed(client)
    new = seed(client, now_ms=NOW_MS + STALLED_AFTER_MS + 1)
    slot = new.first_slot_ms + INTERVAL_MS

    assert chain.claim(client, PREFIX, NAME, old.token, slot, 0) == "stale"
    assert counter(client, "dropped_stale") == 1
    assert chain.claim(client, PREFIX, NAME, new.token, slot, 0) == "claimed"


def test_concurrent_claims_of_slot_win_once(redis_url: str) -> None:
    setup = redis.Redis.from_url(redis_url)
    outcome = seed(setup)
    clients = [redis.Redis.from_url(redis_url) for _ in range(6)]
    calls = iter(clients)
    lock = threading.Lock()

    def claim() -> str:
        with lock:
            own = next(calls)
        return chain.claim(own, PREFIX, NAME, outcome.token, outcome.first_slot_ms, 0)

    results = run_in_threads(6, claim)

    assert results.count("claimed") == 1
    assert results.count("duplicate") == 5
    for own in [setup, *clients]:
        own.close()


def test_claim_counts_missed_slots(client: redis.Redis) -> None:
    outcome = seed(client)
    chain.claim(client, PREFIX, NAME, outcome.token, outcome.first_slot_ms, 3)
    assert counter(client, "missed_slots") == 3


# The fixed-rate grid.


def test_plan_on_time_polls_next_slot() -> None:
    plan = chain.plan_slot(slot_ms=10_000, now_ms=9_600, interval_ms=INTERVAL_MS)
    assert plan.poll
    assert plan.next_slot_ms == 11_000
    assert plan.missed == 0


def test_plan_slightly_late_still_polls() -> None:
    plan = chain.plan_slot(slot_ms=10_000, now_ms=10_400, interval_ms=INTERVAL_MS)
    assert plan.poll
    assert plan.next_slot_ms == 11_000
    assert plan.missed == 0


def test_plan_after_outage_skips_to_future() -> None:
    # Given a message that arrives 3.4 intervals after its slot
    plan = chain.plan_slot(slot_ms=10_000, now_ms=13_400, interval_ms=INTERVAL_MS)
    # Then that slot and the three passed since are missed, not replayed
    assert not plan.poll
    assert plan.next_slot_ms == 14_000
    assert plan.missed == 4


def test_plan_keeps_grid_over_many_slots() -> None:
    slot = 10_000
    for step in range(10_000):
        now = slot - 300 + (step % 7) * 50
        plan = chain.plan_slot(slot_ms=slot, now_ms=now, interval_ms=INTERVAL_MS)
        slot = plan.next_slot_ms
    assert slot == 10_000 + 10_000 * INTERVAL_MS


def test_grid_slot_is_phase_plus_steps() -> None:
    phase = chain.grid_phase_ms(NAME, INTERVAL_MS)
    slot = chain.next_grid_slot(NAME, NOW_MS + 1, INTERVAL_MS)
    assert (slot - phase) % INTERVAL_MS == 0
    assert NOW_MS + 1 <= slot < NOW_MS + 1 + INTERVAL_MS


# No overlapping polls, and stop.


def test_begin_while_running_skips_slot(client: redis.Redis) -> None:
    # Given a poll in progress for the first slot
    outcome = seed(client)
    first = outcome.first_slot_ms
    started = chain.begin_poll(client, PREFIX, NAME, outcome.token, first, 10_000)
    assert started.outcome == "ok"
    # When the next slot is due before it finished
    second = first + INTERVAL_MS
    overlap = chain.begin_poll(client, PREFIX, NAME, outcome.token, second, 10_000)
    # Then that slot is skipped and counted
    assert overlap.outcome == "overlap"
    assert counter(client, "skipped_overlaps") == 1


def test_release_lets_next_slot_begin(client: redis.Redis) -> None:
    outcome = seed(client)
    first = outcome.first_slot_ms
    chain.begin_poll(client, PREFIX, NAME, outcome.token, first, 10_000)

    pipe = client.pipeline(transaction=False)
    chain.release_poll(pipe, client, PREFIX, NAME, first)
    execute_pipeline(pipe, client)

    second = first + INTERVAL_MS
    started = chain.begin_poll(client, PREFIX, NAME, outcome.token, second, 10_000)
    assert started.outcome == "ok"


def test_begin_after_stop_is_refused(client: redis.Redis) -> None:
    # Given a claimed slot waiting for its due time
    outcome = seed(client)
    slot = outcome.first_slot_ms
    chain.claim(client, PREFIX, NAME, outcome.token, slot, 0)
    # When the chain is stopped before the slot starts
    was_running = chain.stop(client, PREFIX, NAME)
    # Then the slot is not polled and later messages are stale
    assert was_running
    started = chain.begin_poll(client, PREFIX, NAME, outcome.token, slot, 10_000)
    assert started.outcome == "stopped"
    later = chain.claim(client, PREFIX, NAME, outcome.token, slot + INTERVAL_MS, 0)
    assert later == "stale"
    assert chain.running_names(client, PREFIX) == []


def test_stop_of_stopped_chain_returns_false(client: redis.Redis) -> None:
    assert not chain.stop(client, PREFIX, NAME)


def test_start_after_stop_claims_first_slot(client: redis.Redis) -> None:
    # Given a chain whose message claimed a slot at the earliest moment it may
    # be delivered, one lead time before the slot, and was then stopped
    old = seed(client)
    claimed_at = old.first_slot_ms - LEAD_MS
    chain.claim(client, PREFIX, NAME, old.token, old.first_slot_ms, 0)
    chain.stop(client, PREFIX, NAME)
    # When it is started again in that same millisecond
    new = seed(client, now_ms=claimed_at)
    # Then the new chain starts after the old claim, and its first message
    # can claim its slot
    assert new.started
    assert new.first_slot_ms > old.first_slot_ms
    claimed = chain.claim(client, PREFIX, NAME, new.token, new.first_slot_ms, 0)
    assert claimed == "claimed"


# The watchdog's re-seed.


def test_reseed_skips_live_chain(client: redis.Redis) -> None:
    outcome = seed(client)
    again = seed(client, now_ms=NOW_MS + 100, expected=outcome.token)
    assert not again.started
    assert again.token == outcome.token


def test_reseed_needs_current_token(client: redis.Redis) -> None:
    seed(client)
    again = seed(client, now_ms=NOW_MS + STALLED_AFTER_MS + 1, expected="other")
    assert not again.started


def test_concurrent_reseeds_replace_once(redis_url: str) -> None:
    # Given a chain that has claimed nothing for longer than it may
    setup = redis.Redis.from_url(redis_url)
    stalled = seed(setup)
    later = NOW_MS + STALLED_AFTER_MS + 1
    clients = [redis.Redis.from_url(redis_url) for _ in range(8)]
    calls = iter(clients)
    lock = threading.Lock()

    def reseed() -> Any:
        with lock:
            own = next(calls)
        return seed(own, now_ms=later, expected=stalled.token)

    # When eight watchdogs re-seed it at the same moment
    outcomes = run_in_threads(8, reseed)

    # Then one of them wrote a new token and the others saw it
    winners = [outcome for outcome in outcomes if outcome.started]
    assert len(winners) == 1
    assert winners[0].token != stalled.token
    assert {outcome.token for outcome in outcomes} == {winners[0].token}
    for own in [setup, *clients]:
        own.close()


def test_stalled_state_needs_interval_plus_grace(client: redis.Redis) -> None:
    outcome = seed(client)
    chain.claim(client, PREFIX, NAME, outcome.token, outcome.first_slot_ms, 0)
    state = chain.read_states(client, PREFIX, [NAME])[NAME]
    grace_ms = 2000
    limit = outcome.first_slot_ms + INTERVAL_MS + grace_ms

    assert not state.is_stalled(limit, grace_ms)
    assert state.is_stalled(limit + 1, grace_ms)


# A failure inside bts-sync never ends the chain.


@pytest.fixture
def actors(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    """Import ``bts_sync.actors`` afresh, configured with one endpoint on a closed port."""
    config = write_config(
        tmp_path / "bts-sync.toml",
        [{"name": NAME, "url": "http://127.0.0.1:9/items", "interval": 1}],
    )
    yield import_actors(monkeypatch, config, redis_url)
    forget_actors()


def test_run_slot_records_internal_error(
    actors: ModuleType, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a claimed slot and a fetch that raises inside bts-sync
    def broken_fetch(endpoint: Any) -> FetchResult:
        raise KeyError("bug")

    monkeypatch.setattr(actors, "fetch", broken_fetch)
    endpoint = actors.SETTINGS.endpoint(NAME)
    outcome = seed(client, now_ms=actors.now_ms())
    slot = outcome.first_slot_ms
    chain.claim(client, PREFIX, NAME, outcome.token, slot, 0)

    # When the slot runs
    actors.run_slot(endpoint, outcome.token, slot)

    # Then the failure is recorded, the in-progress mark is gone, and the
    # chain still runs
    history = store.read_history(client, PREFIX, NAME, 10)
    assert [entry["error_kind"] for entry in history] == ["internal"]
    assert history[0]["slot"] == str(slot)
    assert client.exists(chain.running_key(PREFIX, NAME)) == 0
    assert chain.read_states(client, PREFIX, [NAME])[NAME].token == outcome.token
