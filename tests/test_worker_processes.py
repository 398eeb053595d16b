"""The chain invariants with real worker, scheduler and Honcho processes.

Each test writes a configuration with short intervals, starts
``dramatiq bts_sync.actors`` (one process, four threads, with
``dramatiq_worker_timeout=100``) against the session's redis-server, and
serves the endpoints from a threaded HTTP server on 127.0.0.1 that records
when each request arrived. Slots lie on the grid ``phase + k * interval``, so
each arrival maps to the slot it was polled for.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
from support import (
    BIN_DIR,
    EndpointLog,
    ProcessSet,
    RecordingServer,
    Started,
    delayed,
    forget_actors,
    grid_slot_ms,
    import_actors,
    invalid_json,
    json_body,
    process_env,
    status_code,
    wait_until,
    write_config,
)
from werkzeug import Request, Response

from bts_sync import chain, store

pytestmark = pytest.mark.slow

PREFIX = "bts_sync"
NAME = "items"

#: Largest accepted distance, in seconds, between a request's arrival and its
#: slot. Polls start a millisecond or two after the slot on an idle machine,
#: and the margin is an estimate for a loaded 2-core machine.
ON_GRID_TOLERANCE_S = 0.1


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return tmp_path / "bts-sync.toml"


@pytest.fixture
def processes(
    tmp_path: Path, config_path: Path, redis_url: str
) -> Iterator[ProcessSet]:
    started = ProcessSet(tmp_path, process_env(config_path, redis_url))
    yield started
    started.close()


@pytest.fixture
def actors(
    config_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """Return a function that imports ``bts_sync.actors`` once the test wrote its configuration."""
    modules: list[ModuleType] = []

    def load() -> ModuleType:
        if not modules:
            modules.append(import_actors(monkeypatch, config_path, redis_url))
        return modules[0]

    yield load
    forget_actors()


def configure(
    config_path: Path,
    url: str,
    interval: float,
    deadline: float | None = None,
    **settings: Any,
) -> None:
    endpoint: dict[str, Any] = {"name": NAME, "url": url, "interval": interval}
    if deadline is not None:
        endpoint["deadline"] = deadline
    write_config(config_path, [endpoint], **settings)


def run_cli(processes: ProcessSet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN_DIR / "bts-sync"), *args],
        env=processes.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def start_chain(processes: ProcessSet) -> None:
    result = run_cli(processes, "start", NAME)
    assert result.returncode == 0, result.stderr


def history(client: redis.Redis) -> list[dict[str, str]]:
    return store.read_history(client, PREFIX, NAME, 10_000)


def history_slots(client: redis.Redis) -> list[int]:
    return [int(entry["slot"]) for entry in history(client)]


def counters(client: redis.Redis) -> dict[str, Any]:
    return store.read_stats(client, PREFIX, [NAME])[NAME]


def arrival_slots(arrivals: list[float], interval_s: float) -> list[int]:
    """Map each arrival to the nearest slot of the endpoint's grid, in ms."""
    interval_ms = round(interval_s * 1000)
    phase = chain.grid_phase_ms(NAME, interval_ms)
    return [grid_slot_ms(phase, interval_ms, arrival) for arrival in arrivals]


def offsets_s(arrivals: list[float], interval_s: float) -> list[float]:
    """Return how long after its slot each request arrived, in seconds."""
    slots = arrival_slots(arrivals, interval_s)
    return [
        arrival - slot / 1000 for arrival, slot in zip(arrivals, slots, strict=True)
    ]


def unaccounted_slots(
    client: redis.Redis, arrivals: list[float], interval_s: float
) -> int:
    """Count the slots from the first request to the last that were neither polled nor counted.

    A slot is polled (one request), or counted as missed or as skipped
    because the previous poll still ran.
    """
    slots = set(arrival_slots(arrivals, interval_s))
    step = round(interval_s * 1000)
    total = (max(slots) - min(slots)) // step + 1
    stats = counters(client)
    return total - len(slots) - stats["missed_slots"] - stats["skipped_overlaps"]


def wait_for_requests(log: EndpointLog, count: int, timeout_s: float = 20) -> None:
    wait_until(lambda: log.count() >= count, timeout_s, f"{count} requests")


def wait_for_recorded(client: redis.Redis, log: EndpointLog) -> None:
    """Wait until every request that reached the server has its history entry."""
    wait_until(
        lambda: len(history(client)) >= log.count(),
        10,
        "a history entry for every request",
    )


def wait_for_request_in_progress(log: EndpointLog, after: int) -> None:
    wait_until(
        lambda: log.count() > after and log.in_progress() > 0,
        20,
        f"request number {after + 1} to be in progress",
        pause_s=0.005,
    )


# One live chain per endpoint.


def test_racing_starts_run_one_chain(
    http: RecordingServer,
    client: redis.Redis,
    config_path: Path,
    processes: ProcessSet,
) -> None:
    # Given a worker and an endpoint polled every 0.25 s
    interval = 0.25
    log = http.add_endpoint("/items", json_body({"n": 1}))
    configure(config_path, http.url("/items"), interval)
    processes.start_worker()

    # When two start commands race, and a third follows
    racing = [
        subprocess.Popen(
            [str(BIN_DIR / "bts-sync"), "start", NAME],
            env=processes.env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=60)[0] for process in racing]
    third = run_cli(processes, "start", NAME)
    wait_for_requests(log, 10)
    # (Messages that arrive after the stop below are dropped as stale.)
    stale = counters(client)["dropped_stale"]
    run_cli(processes, "stop", NAME)
    wait_for_recorded(client, log)

    # Then one start printed started and the other already running
    printed_started = [output for output in outputs if "started" in output]
    assert len(printed_started) == 1
    assert "already running" in third.stdout
    # And every slot was polled once, by the one chain
    slots = arrival_slots(log.snapshot(), interval)
    assert len(set(slots)) == len(slots)
    assert sorted(history_slots(client)) == sorted(slots)
    assert stale == 0


def test_repeated_message_is_dropped(
    http: RecordingServer,
    client: redis.Redis,
    config_path: Path,
    processes: ProcessSet,
    actors: Any,
) -> None:
    # Given a running chain that has claimed a slot
    interval = 0.3
    log = http.add_endpoint("/items", json_body({"n": 1}))
    configure(config_path, http.url("/items"), interval)
    processes.start_worker()
    start_chain(processes)
    wait_for_requests(log, 2)
    state = chain.read_states(client, PREFIX, [NAME])[NAME]
    module = actors()

    # When the message of that slot is delivered again, once with its own
    # message ID (a retry) and once as a copy (a redelivery)
    message = module.poll_endpoint.message(NAME, state.token, state.slot_ms)
    module.broker.enqueue(message)
    wait_until(lambda: counters(client)["dropped_duplicates"] >= 1, 10, "first drop")
    module.broker.enqueue(message)
    module.broker.enqueue(message.copy(message_id="copy-of-" + message.message_id))
    wait_until(lambda: counters(client)["dropped_duplicates"] >= 3, 10, "all drops")
    wait_for_requests(log, log.count() + 3)
    run_cli(processes, "stop", NAME)
    wait_for_recorded(client, log)

    # Then all three were dropped and counted, and no slot was polled twice
    assert counters(client)["dropped_duplicates"] == 3
    slots = arrival_slots(log.snapshot(), interval)
    assert len(set(slots)) == len(slots)
    assert sorted(history_slots(client)) == sorted(slots)


def test_two_workers_poll_slot_once(
    http: RecordingServer,
    client: redis.Redis,
    config_path: Path,
    processes: ProcessSet,
) -> None:
    # Given two worker processes sharing one Redis
    interval = 0.2
    log = http.add_endpoint("/items", json_body({"n": 1}))
    configure(config_path, http.url("/items"), interval)
    processes.start_worker()
    processes.start_worker()

    # When a chain runs for 15 slots
    start_chain(processes)
    wait_for_requests(log, 15)
    run_cli(processes, "stop", NAME)
    wait_for_recorded(client, log)

    # Then each slot in the history is unique and had exactly one request
    recorded = history_slots(client)
    slots = arrival_slots(log.snapshot(), interval)
    assert len(set(recorded)) == len(recorded)
    assert len(set(slots)) == len(slots)
    assert sorted(recorded) == sorted(slots)


# The fixed-rate grid.


def test_requests_stay_on_grid(
    http: RecordingServer,
    client: redis.Redis,
    config_path: Path,
    processes: ProcessSet,
) -> None:
    # Given a chain polled every 0.25 s for 20 slots
    interval = 0.25
    log = http.add_endpoint("/items", json_body({"n": 1}))
    configure(config_path, http.url("/items"), interval)
    processes.start_worker()
    start_chain(processes)
    wait_for_requests(log, 20)
    arrivals = log.snapshot()[:20]

    # Then every request arrived just after its slot, without drift
    offsets = offsets_s(arrivals, interval)
    assert min(offsets) >= 0
    assert max(offsets) < ON_GRID_TOLERANCE_S
    # And no slot was left out
    slots = arrival_slots(arrivals, interval)
    step = round(interval * 1000)
    assert slots == list(range(slots[0], slots[0] + 20 * step, step))


def test_outage_skips_to_next_slot(
    http: RecordingServer,
    client: redis.Redis,
    config_path: Path,
    processes: ProcessSet,
) -> None:
    # Given a chain polled every 0.25 s
    interval = 0.25
    log = http.add_endpoint("/items", json_body({"n": 1}))
    configure(config_path, http.url("/items"), interval)
    worker = processes.start_worker()
    start_chain(processes)
    wait_for_requests(log, 4)

    # When the only worker is down for about eight intervals
    assert processes.terminate(worker) == 0
    before = log.count()
    time.sleep(8 * interval)  # the outage itself
    processes.start_worker()
    wait_for_requests(log, before + 6)
    run_cli(processes, "stop", NAME)
    wait_for_recorded(client, log)

    # Then polling resumed on the grid with no burst of catch-up requests
    arrivals = log.snapshot()
    assert max(offsets_s(arrivals, interval)) < ON_GRID_TOLERANCE_S
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert min(gaps) > interval - ON_GRID_TOLERANCE_S
    # And every slot from first to last was either polled once or counted
    # as missed
    assert counters(client)["missed_slots"] >= 6
    assert unaccounted_slots(client, arrivals, interval) == 0


# A poll that fails in any way never ends the chain.


def test_failed_polls_keep_chain_running(
    http: RecordingServer,
    client: redis.Redis,
    config_path: Path,
    processes: ProcessSet,
) -> None:
    # Given an endpoint that responds with 500, 404, invalid JSON and too
    # late, then with 200
    log = http.add_endpoint(
        "/items",
        json_body({"n": 1}),
        first=[
            status_code(500),
            status_code(404),
            invalid_json(),
            delayed(0.3, json_body({"n": 0})),
        ],
    )
    configure(config_path, http.url("/items"), interval=0.4, deadline=0.2)
    processes.start_worker()

    # When its chain runs
    start_chain(processes)
    wait_for_requests(log, 7)
    wait_for_recorded(client, log)

    # Then every poll was recorded with its error kind and the chain went on
    entries = history(client)[:7]
    assert [entry["error_kind"] for entry in entries] == [
        "http_status",
        "http_status",
        "invalid_json",
        "timeout",
        "",
        "",
        "",
    ]
    assert [entry["status"] for entry in entries[:3]] == ["500", "404", "200"]
    stats = counters(client)
    assert stats["failures"] == 4
    assert stats["consecutive_failures"] == 0
    assert chain.read_states(client, PREFIX, [NAME])[NAME].running


def test_poll_outlives_message_time_limit(
    http: RecordingServer,
    client: redis.Redis,
    config_path: Path,
    processes: ProcessSet,
    actors: Any,
) -> None:
    # Given an endpoint that takes 1.2 s to respond, and a chain whose first
    # message carries a time limit of 1 ms
    log = http.add_endpoint("/items", delayed(1.2, json_body({"n": 1})))
    configure(config_path, http.url("/items"), interval=1.5, deadline=1.4)
    processes.start_worker()
    module = actors()
    outcome = chain.seed(
        client,
        PREFIX,
        NAME,
        interval_ms=1500,
        now_ms=module.now_ms(),
        stalled_after_ms=60_000,
        lead_ms=500,
    )
    module.poll_endpoint.send_with_options(
        args=(NAME, outcome.token, outcome.first_slot_ms), time_limit=1
    )

    # When Dramatiq's time limit, checked once a second, passes during the poll
    wait_for_requests(log, 2)
    wait_until(lambda: len(history(client)) >= 2, 10, "two recorded polls")

    # Then the poll still finished and was recorded, and the chain went on
    entries = history(client)
    assert int(entries[0]["slot"]) == outcome.first_slot_ms
    assert entries[0]["ok"] == "1"
    assert entries[1]["ok"] == "1"


def trickled_body(pause_s: float) -> Any:
    """Respond 200 with a JSON body sent in three parts, ``pause_s`` apart."""

    def respond(request: Request) -> Response:
        def parts() -> Iterator[bytes]:
            yield b"["
            time.sleep(pause_s)
            yield b"1"
            time.sleep(pause_s)
            yield b"]"

        return Response(
            parts(),
            200,
            headers={"Content-Length": "3"},
            mimetype="application/json",
            direct_passthrough=True,
        )

    return respond


def test_slow_poll_skips_next_slot(
    http: RecordingServer,
    client: redis.Redis,
    config_path: Path,
    processes: ProcessSet,
) -> None:
    # Given an endpoint whose body arrives in parts 0.45 s apart, with a
    # deadline equal to the 0.5 s interval. The fetch checks its deadline
    # between reads, so each poll ends when the last part arrives, 0.9 s
    # after it started and so past the next slot.
    interval = 0.5
    log = http.add_endpoint("/items", trickled_body(0.45))
    configure(config_path, http.url("/items"), interval=interval, deadline=interval)
    processes.start_worker()

    # When its chain runs for about eight slots
    start_chain(processes)
    wait_for_requests(log, 4)
    run_cli(processes, "stop", NAME)
    wait_for_recorded(client, log)

    # Then the server never had two requests at once, and the slots that
    # fell inside a running poll were skipped and counted
    assert log.max_concurrent == 1
    assert counters(client)["skipped_overlaps"] >= 3
    entries = history(client)
    for earlier, later in itertools.pairwise(entries):
        ended = float(earlier["time"]) + float(earlier["elapsed_ms"]) / 1000
        assert float(later["time"]) >= ended


# stop ends the chain.


def test_no_poll_starts_after_stop(
    http: RecordingServer,
    client: redis.Redis,
    config_path: Path,
    processes: ProcessSet,
) -> None:
    # Given a chain polled every 0.2 s. With a lead of 0.5 s, the worker
    # has two or three claimed slots that are not due yet.
    interval = 0.2
    log = http.add_endpoint("/items", json_body({"n": 1}))
    configure(config_path, http.url("/items"), interval)
    processes.start_worker()
    start_chain(processes)
    wait_for_requests(log, 5)

    # When the chain is stopped
    was_running = chain.stop(client, PREFIX, NAME)
    stopped_at = time.time()
    assert was_running
    # and the messages still in flight reach the worker
    wait_until(
        lambda: counters(client)["dropped_stale"] >= 1,
        10,
        "the next message to be dropped as stale",
    )

    # Then no request was sent for a slot due after stop returned
    late = [
        slot
        for slot in arrival_slots(log.snapshot(), interval)
        if slot / 1000 > stopped_at
    ]
    assert late == []
    assert not chain.read_states(client, PREFIX, [NAME])[NAME].running


# The watchdog.


RESEED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import redis
    from bts_sync import actors

    barrier = redis.Redis.from_url(actors.SETTINGS.redis_url)
    barrier.rpush("test:ready", 1)
    barrier.blpop(["test:go"], timeout=30)
    print(json.dumps(actors.reseed_stalled_chains(actors.redis_client())))
    """
)


def queued_messages(client: redis.Redis) -> int:
    """Count poll and watchdog messages stored in the broker's queues."""
    base = f"{PREFIX}:dramatiq:bts_sync"
    return int(client.hlen(f"{base}.msgs")) + int(client.hlen(f"{base}.DQ.msgs"))


def lose_messages(processes: ProcessSet, worker: Started, client: redis.Redis) -> None:
    """SIGKILL the worker and delete the broker's keys, so the chain's messages are gone."""
    processes.kill(worker)
    broker_keys = list(client.scan_iter(f"{PREFIX}:dramatiq:*"))
    if broker_keys:
        client.delete(*broker_keys)


def wait_for_stall(client: redis.Redis, grace_ms: int = 500) -> None:
    wait_until(
        lambda: chain.read_states(client, PREFIX, [NAME])[NAME].is_stalled(
            int(time.time() * 1000), grace_ms
        ),
        10,
        "the chain to count as stalled",
    )


def test_concurrent_watchdogs_reseed_once(
    http: RecordingServer,
    client: redis.Redis,
    config_path: Path,
    processes: ProcessSet,
) -> None:
    # Given a running chain whose messages were lost
    interval = 0.25
    log = http.add_endpoint("/items", json_body({"n": 1}))
    configure(config_path, http.url("/items"), interval, watchdog_grace=0.5)
    worker = processes.start_worker()
    start_chain(processes)
    wait_for_requests(log, 2)
    lose_messages(processes, worker, client)
    wait_for_stall(client)

    # When two processes run the watchdog's re-seed at the same moment
    callers = [
        processes.start("reseed", [sys.executable, "-c", RESEED_SCRIPT])
        for _ in range(2)
    ]
    wait_until(lambda: client.llen("test:ready") == 2, 20, "both callers ready")
    client.rpush("test:go", 1, 1)
    for caller in callers:
        caller.process.wait(30)
    results = [json.loads(caller.log().strip().splitlines()[-1]) for caller in callers]

    # Then exactly one re-seeded the chain and sent one message
    assert sorted(results) == [[], [NAME]]
    assert queued_messages(client) == 1
    # And a new worker continues the chain without polling a slot twice
    before = log.count()
    processes.start_worker()
    wait_for_requests(log, before + 4)
    stale = counters(client)["dropped_stale"]
    run_cli(processes, "stop", NAME)
    wait_for_recorded(client, log)
    slots = arrival_slots(log.snapshot(), interval)
    assert len(set(slots)) == len(slots)
    assert stale == 0


def test_two_schedulers_reseed_once(
    http: RecordingServer,
    client: redis.Redis,
    config_path: Path,
    processes: ProcessSet,
) -> None:
    # Given a running chain whose messages were lost, and a worker
    interval = 0.25
    log = http.add_endpoint("/items", json_body({"n": 1}))
    configure(config_path, http.url("/items"), interval, watchdog_grace=0.5)
    worker = processes.start_worker()
    start_chain(processes)
    wait_for_requests(log, 2)
    lose_messages(processes, worker, client)
    wait_for_stall(client)
    before = log.count()
    worker = processes.start_worker()

    # When two periodiq schedulers start; periodiq sends the watchdog at
    # start-up (after a pause of up to 5 s late in a minute)
    processes.start_scheduler()
    processes.start_scheduler()
    wait_until(
        lambda: worker.log().count("watchdog() scheduled at") >= 2,
        30,
        "both watchdog messages to reach the worker",
    )
    wait_for_requests(log, before + 3)

    # Then the chain was re-seeded once and polls each slot once
    assert worker.log().count("Re-seeded the stalled chain") == 1
    assert counters(client)["dropped_stale"] == 0
    slots = arrival_slots(log.snapshot(), interval)
    assert len(set(slots)) == len(slots)


def test_killed_worker_resumes_without_repeats(
    http: RecordingServer,
    client: redis.Redis,
    config_path: Path,
    processes: ProcessSet,
    actors: Any,
) -> None:
    # Given a chain whose requests take 0.25 s
    interval = 0.5
    log = http.add_endpoint("/items", delayed(0.25, json_body({"n": 1})))
    configure(
        config_path, http.url("/items"), interval, deadline=0.45, watchdog_grace=0.5
    )
    worker = processes.start_worker()
    start_chain(processes)

    # When the worker is killed with SIGKILL in the middle of a poll
    wait_for_request_in_progress(log, after=2)
    processes.kill(worker)
    killed = log.count()
    # and a new worker starts, with the watchdog's re-seed called until the
    # chain polls again
    processes.start_worker()
    module = actors()

    def resumed() -> bool:
        if log.count() > killed:
            return True
        module.reseed_stalled_chains(module.redis_client())
        return False

    wait_until(resumed, 30, "the chain to poll again", pause_s=0.2)
    wait_for_requests(log, killed + 3)
    run_cli(processes, "stop", NAME)
    wait_until(
        lambda: len(history(client)) >= log.count() - 1,
        10,
        "a history entry for every request but the killed one",
    )

    # Then no slot was polled twice, and only the killed poll is unrecorded
    slots = arrival_slots(log.snapshot(), interval)
    recorded = history_slots(client)
    assert len(set(slots)) == len(slots)
    assert len(set(recorded)) == len(recorded)
    assert len(set(slots) - set(recorded)) == 1


def test_sigterm_finishes_poll_in_progress(
    http: RecordingServer,
    client: redis.Redis,
    config_path: Path,
    processes: ProcessSet,
) -> None:
    # Given a chain whose requests take 0.25 s. With a lead of 0.9 s, the
    # worker always has a claimed slot that is not due yet.
    interval = 0.5
    log = http.add_endpoint("/items", delayed(0.25, json_body({"n": 1})))
    configure(
        config_path, http.url("/items"), interval, deadline=0.45, dispatch_lead=0.9
    )
    worker = processes.start_worker()
    start_chain(processes)

    # When the worker gets SIGTERM in the middle of a poll
    wait_for_request_in_progress(log, after=2)
    exit_code = processes.terminate(worker)
    stopped = log.count()

    # Then it exits cleanly once every poll it started was recorded
    assert exit_code == 0
    assert len(history(client)) == stopped
    assert "Killing worker process" not in worker.log()
    # And a new worker continues the chain by itself
    processes.start_worker()
    wait_for_requests(log, stopped + 3)
    run_cli(processes, "stop", NAME)
    wait_for_recorded(client, log)
    slots = arrival_slots(log.snapshot(), interval)
    assert len(set(slots)) == len(slots)
    assert unaccounted_slots(client, log.snapshot(), interval) == 0


def test_honcho_sigterm_keeps_polls_and_chain(
    http: RecordingServer,
    client: redis.Redis,
    config_path: Path,
    processes: ProcessSet,
    tmp_path: Path,
) -> None:
    # Given the Procfile's worker and scheduler under Honcho, polling a
    # chain whose requests take 0.25 s, with a claimed slot always waiting
    interval = 0.5
    log = http.add_endpoint("/items", delayed(0.25, json_body({"n": 1})))
    configure(
        config_path, http.url("/items"), interval, deadline=0.45, dispatch_lead=0.9
    )
    procfile = Path(__file__).resolve().parent.parent / "Procfile"
    honcho = processes.start(
        "honcho",
        [str(BIN_DIR / "honcho"), "start", "-f", str(procfile), "-d", str(tmp_path)],
    )
    wait_until(
        lambda: "Worker process is ready" in honcho.log(), 30, "the worker to boot"
    )
    start_chain(processes)

    # When Honcho gets SIGTERM in the middle of a poll; it sends SIGTERM to
    # each process group, so Dramatiq's worker processes get it twice
    wait_for_request_in_progress(log, after=2)
    honcho.process.send_signal(signal.SIGTERM)
    honcho.process.wait(30)
    stopped = log.count()

    # Then every poll that started was recorded, and no process was killed
    output = honcho.log()
    assert len(history(client)) == stopped
    assert "Killing worker process" not in output
    assert "SIGKILL" not in output
    # And a new worker continues the chain by itself
    processes.start_worker()
    wait_for_requests(log, stopped + 3)
    run_cli(processes, "stop", NAME)
    wait_for_recorded(client, log)
    slots = arrival_slots(log.snapshot(), interval)
    assert len(set(slots)) == len(slots)
    assert unaccounted_slots(client, log.snapshot(), interval) == 0


# What a poll leaves in Redis.


def canonical_hash(data: Any) -> str:
    """Hash JSON content as the README documents it: SHA-256 of sorted, compact JSON."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def test_change_stream_gets_one_entry_per_change(
    http: RecordingServer,
    client: redis.Redis,
    config_path: Path,
    processes: ProcessSet,
) -> None:
    # Given an endpoint that serves A, A, B, B with its keys reordered, a
    # failure, B, A, and then A for ever
    first = {"price": 1, "name": "a"}
    second = {"price": 2, "name": "b"}
    log = http.add_endpoint(
        "/items",
        json_body(first),
        first=[
            json_body(first),
            json_body(first),
            json_body(second),
            json_body({"name": "b", "price": 2}),
            status_code(500),
            json_body(second),
            json_body(first),
        ],
    )
    configure(config_path, http.url("/items"), interval=0.2)
    processes.start_worker()

    # When its chain runs through that sequence
    start_chain(processes)
    wait_for_requests(log, 9)
    wait_for_recorded(client, log)

    # Then the change stream has one entry per change of content
    entries = client.xrange(store.changes_key(PREFIX))
    hashes = [fields[b"hash"].decode() for _, fields in entries]
    previous = [fields[b"previous_hash"].decode() for _, fields in entries]
    endpoints = {fields[b"endpoint"].decode() for _, fields in entries}
    assert hashes == [
        canonical_hash(first),
        canonical_hash(second),
        canonical_hash(first),
    ]
    assert previous == ["", canonical_hash(first), canonical_hash(second)]
    assert endpoints == {NAME}
    assert counters(client)["changes"] == 3
