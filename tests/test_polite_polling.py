"""Polite polling end to end: a real worker process, Redis and a local HTTP server.

Covers conditional requests (ETag, Last-Modified), Retry-After pauses on 429
and 503 in both header forms, the pause cap, a worker restart during a pause,
and back-off growth and reset with the ``status`` command showing it.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
import redis
from pytest_httpserver import HTTPServer
from support import (
    ProcessSet,
    ScriptedEndpoint,
    json_response,
    process_env,
    run_cli,
    wait_until,
    write_config,
)
from werkzeug import Request, Response

from bts_sync import chain, store

pytestmark = pytest.mark.slow

PREFIX = "bts_sync"


@pytest.fixture
def launch(
    tmp_path: Path,
    redis_url: str,
    httpserver: HTTPServer,
    workers: ProcessSet,
) -> Callable[..., Path]:
    """Return a function that serves a scripted endpoint, starts a worker and its chain."""

    def launch_endpoint(handler: ScriptedEndpoint, **endpoint: Any) -> Path:
        httpserver.expect_request("/api").respond_with_handler(handler)
        config = write_config(
            tmp_path / "bts-sync.toml",
            [{"name": "api", "url": httpserver.url_for("/api"), **endpoint}],
            dispatch_lead=0.3,
        )
        workers.start_worker(process_env(config, redis_url), ready_timeout_s=None)
        started = run_cli(config, redis_url, "start")
        assert started.returncode == 0, started.stderr
        return config

    return launch_endpoint


def stats(client: redis.Redis) -> dict[str, Any]:
    return store.read_stats(client, PREFIX, ["api"])["api"]


def history_slots(client: redis.Redis) -> list[int]:
    return [
        int(entry["slot"]) for entry in store.read_history(client, PREFIX, "api", 100)
    ]


def test_etag_round_trip_ends_in_304(
    launch: Callable[..., Path], client: redis.Redis
) -> None:
    # Given a server that sends an ETag and responds 304 to a matching If-None-Match
    def respond(index: int, request: Request) -> Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return Response(status=304, headers={"ETag": '"v1"'})
        return json_response({"quote": 1}, headers={"ETag": '"v1"'})

    server = ScriptedEndpoint(respond)

    # When the endpoint is polled three times
    launch(server, interval=0.5)
    wait_until(lambda: stats(client)["polls"] >= 3, 15, "three recorded polls")

    # Then later requests carry the ETag and the 304s keep the body without a change
    requests = server.snapshot()
    assert "If-None-Match" not in requests[0].headers
    assert requests[1].headers.get("If-None-Match") == '"v1"'
    counters = stats(client)
    assert counters["not_modified"] >= 2
    assert counters["changes"] == 1
    assert counters["failures"] == 0
    latest = store.read_latest(client, PREFIX, "api")
    assert latest["status"] == "304"
    assert json.loads(latest["body"]) == {"quote": 1}


def test_last_modified_round_trip_ends_in_304(
    launch: Callable[..., Path], client: redis.Redis
) -> None:
    # Given a server that sends Last-Modified and responds 304 to If-Modified-Since
    stamp = "Wed, 21 Oct 2015 07:28:00 GMT"

    def respond(index: int, request: Request) -> Response:
        if request.headers.get("If-Modified-Since") == stamp:
            return Response(status=304)
        return json_response({"quote": 2}, headers={"Last-Modified": stamp})

    server = ScriptedEndpoint(respond)

    # When the endpoint is polled three times
    launch(server, interval=0.5)
    wait_until(lambda: stats(client)["polls"] >= 3, 15, "three recorded polls")

    # Then the second request carries the date and the 304s count as not modified
    requests = server.snapshot()
    assert "If-Modified-Since" not in requests[0].headers
    assert requests[1].headers.get("If-Modified-Since") == stamp
    counters = stats(client)
    assert counters["not_modified"] >= 2
    assert counters["changes"] == 1
    latest = store.read_latest(client, PREFIX, "api")
    assert json.loads(latest["body"]) == {"quote": 2}


def test_conditional_requests_can_be_off(
    launch: Callable[..., Path], client: redis.Redis
) -> None:
    # Given a server that sends an ETag, and an endpoint with conditional requests off
    server = ScriptedEndpoint(
        lambda index, request: json_response({"quote": 3}, headers={"ETag": '"v3"'})
    )

    # When the endpoint is polled twice
    launch(server, interval=0.5, conditional_requests=False)
    wait_until(lambda: server.count() >= 2, 15, "two requests")

    # Then no request carries If-None-Match
    assert all("If-None-Match" not in r.headers for r in server.snapshot())


def rate_limited_once(status: int, retry_after: str) -> ScriptedEndpoint:
    """Serve one response with ``status`` and ``Retry-After``, then 200s."""

    def respond(index: int, request: Request) -> Response:
        if index == 0:
            return json_response(
                {"error": "slow down"},
                status=status,
                headers={"Retry-After": retry_after},
            )
        return json_response({"quote": index})

    return ScriptedEndpoint(respond)


def test_429_retry_after_pauses_then_resumes(
    launch: Callable[..., Path], client: redis.Redis
) -> None:
    # Given a server that responds to the first request with 429 and Retry-After: 2
    server = rate_limited_once(429, "2")

    # When the endpoint is polled every 0.5 s
    launch(server, interval=0.5)
    wait_until(lambda: stats(client)["polls"] >= 4, 20, "four recorded polls")

    # Then no request arrives within 2 s of the first
    requests = server.snapshot()
    assert requests[1].time - requests[0].time >= 2.0
    # And the skipped slots are counted, and the 429 is no failure
    counters = stats(client)
    assert counters["skipped_paused"] >= 2
    assert counters["rate_limited"] == 1
    assert counters["failures"] == 0
    assert counters["consecutive_failures"] == 0
    # And the polls after the pause keep to the grid, one interval apart
    slots = history_slots(client)
    resumed_gaps = [b - a for a, b in itertools.pairwise(slots[1:])]
    assert resumed_gaps == [500] * (len(slots) - 2)
    # And the first slot after the pause is the first grid slot at or after its end
    paused_until = chain.read_states(client, PREFIX, ["api"])["api"].paused_until_ms
    assert paused_until is not None
    assert 0 <= slots[1] - paused_until < 500


def test_429_retry_after_http_date(
    launch: Callable[..., Path], client: redis.Redis
) -> None:
    # Given a server that responds to the first request with a Retry-After date 3 s ahead
    resume_at = int(time.time()) + 3
    server = rate_limited_once(429, formatdate(resume_at, usegmt=True))

    # When the endpoint is polled every 0.5 s
    launch(server, interval=0.5)
    wait_until(lambda: server.count() >= 2, 20, "a request after the pause")

    # Then no request arrives before that date
    assert server.snapshot()[1].time >= resume_at
    assert stats(client)["rate_limited"] == 1


def test_503_retry_after_pauses_as_failure(
    launch: Callable[..., Path], client: redis.Redis
) -> None:
    # Given a server that responds to the first request with 503 and Retry-After: 2
    server = rate_limited_once(503, "2")

    # When the endpoint is polled every 0.5 s
    launch(server, interval=0.5)
    wait_until(lambda: stats(client)["polls"] >= 2, 20, "two recorded polls")

    # Then the pause holds, and the 503 counts as a failure, not a rate limit
    requests = server.snapshot()
    assert requests[1].time - requests[0].time >= 2.0
    counters = stats(client)
    assert counters["failures"] == 1
    assert counters["rate_limited"] == 0
    assert counters["skipped_paused"] >= 2


def test_retry_after_over_cap_is_capped(
    launch: Callable[..., Path], client: redis.Redis, workers: ProcessSet
) -> None:
    # Given a server that requests a 60 s wait and an endpoint that allows at most 1 s
    server = rate_limited_once(429, "60")

    # When the endpoint is polled every 0.5 s
    launch(server, interval=0.5, max_retry_after=1)
    wait_until(lambda: server.count() >= 2, 15, "a request after the capped pause")

    # Then polling resumes after about 1 s, not 60 s
    requests = server.snapshot()
    gap = requests[1].time - requests[0].time
    assert 1.0 <= gap < 5.0
    # And the worker logged a WARNING that names the cap
    wait_until(
        lambda: "max_retry_after" in workers.started[0].log(), 5, "the cap warning"
    )
    warning_lines = [
        line
        for line in workers.started[0].log().splitlines()
        if "max_retry_after" in line
    ]
    assert "WARNING" in warning_lines[0]
    assert "60 s" in warning_lines[0]


def test_worker_restart_keeps_pause(
    launch: Callable[..., Path],
    client: redis.Redis,
    workers: ProcessSet,
    redis_url: str,
) -> None:
    # Given an endpoint paused for 5 s by a 429
    server = rate_limited_once(429, "5")
    config = launch(server, interval=0.5)
    wait_until(lambda: stats(client)["rate_limited"] == 1, 15, "the recorded 429")
    first_request = server.snapshot()[0].time

    # When the worker stops, the chain is stopped and started again, and a new worker runs
    workers.stop(workers.started[0])
    assert run_cli(config, redis_url, "stop").returncode == 0
    assert run_cli(config, redis_url, "start").returncode == 0
    workers.start_worker(process_env(config, redis_url), ready_timeout_s=None)
    wait_until(lambda: server.count() >= 2, 25, "a request after the pause")

    # Then the next request still waits for the end of the pause
    assert server.snapshot()[1].time - first_request >= 5.0


def test_backoff_grows_then_resets(
    launch: Callable[..., Path], client: redis.Redis, redis_url: str
) -> None:
    # Given a server that fails three times, then succeeds
    def respond(index: int, request: Request) -> Response:
        if index < 3:
            return json_response({"error": "down"}, status=500)
        return json_response({"quote": index})

    server = ScriptedEndpoint(respond)

    # When the endpoint backs off from 0.8 s, doubling up to 3.2 s, without jitter
    config = launch(
        server,
        interval=0.4,
        backoff={
            "after_failures": 1,
            "initial": 0.8,
            "multiplier": 2,
            "max": 3.2,
            "jitter": 0,
        },
    )
    wait_until(lambda: stats(client)["failures"] >= 3, 20, "three recorded failures")

    # Then status shows the endpoint backing off, with the time it resumes
    report = json.loads(run_cli(config, redis_url, "status", "--json").stdout)
    row = report["endpoints"][0]
    assert row["state"] == "backing off"
    assert row["held_until_s"] > report["time"]
    table = run_cli(config, redis_url, "status").stdout
    assert "backing off" in table

    # And the slots between polls grow 0.8, 1.6, 3.2 s, then return to 0.4 s
    wait_until(lambda: stats(client)["successes"] >= 3, 20, "three successes")
    slots = history_slots(client)
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert gaps[:5] == [800, 1600, 3200, 400, 400]
    counters = stats(client)
    assert counters["consecutive_failures"] == 0
    assert counters["skipped_backoff"] == 1 + 3 + 7
