"""Decisions of polite polling: conditional headers, back-off delays, pauses."""

from __future__ import annotations

import logging

import pytest

from bts_sync.config import BackoffPolicy, Endpoint
from bts_sync.fetch import FetchResult
from bts_sync.politeness import backoff_delay_s, conditional_headers, decide_hold

POLICY = BackoffPolicy(
    after_failures=2, initial_s=1.0, multiplier=2.0, max_s=10.0, jitter=0.0
)
ENDPOINT = Endpoint(name="api", url="http://127.0.0.1/api", backoff=POLICY)


def result(
    status: int | None,
    error_kind: str | None = None,
    retry_after_s: float | None = None,
    not_modified: bool = False,
) -> FetchResult:
    return FetchResult(
        endpoint="api",
        method="GET",
        url="http://127.0.0.1/api",
        started_at=0.0,
        elapsed_ms=1.0,
        status=status,
        error_kind=error_kind,
        retry_after_s=retry_after_s,
        not_modified=not_modified,
    )


def test_conditional_headers_repeat_validators() -> None:
    # Given the validators of the last response
    # When the headers of the next poll are built
    headers = conditional_headers(ENDPOINT, '"v1"', "Wed, 21 Oct 2015 07:28:00 GMT")

    # Then both conditional headers are present
    assert headers["If-None-Match"] == '"v1"'
    assert headers["If-Modified-Since"] == "Wed, 21 Oct 2015 07:28:00 GMT"


def test_conditional_headers_off_sends_none() -> None:
    # Given an endpoint with conditional requests off
    endpoint = Endpoint(name="api", url="http://x/", conditional_requests=False)

    # When the headers are built
    # Then there are none
    assert conditional_headers(endpoint, '"v1"', "date") == {}


def test_backoff_waits_for_enough_failures() -> None:
    # Given a policy that starts after two failures
    # When one failure happened
    # Then there is no back-off
    assert backoff_delay_s(POLICY, 1) is None


def test_backoff_grows_then_caps() -> None:
    # Given a policy from 1 s doubling up to 10 s
    # When the streak grows
    delays = [backoff_delay_s(POLICY, streak) for streak in range(2, 8)]

    # Then the delay doubles and stops at the cap
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_backoff_survives_huge_streak() -> None:
    # Given a streak far beyond what a float power can hold
    # When the delay is computed
    # Then it is the cap
    assert backoff_delay_s(POLICY, 100_000) == 10.0


def test_jitter_takes_off_at_most_its_share() -> None:
    # Given a policy with 25 % jitter
    policy = BackoffPolicy(
        after_failures=1, initial_s=4.0, multiplier=2.0, max_s=10.0, jitter=0.25
    )

    # When the random draw is at its extremes
    longest = backoff_delay_s(policy, 1, draw=lambda: 0.0)
    shortest = backoff_delay_s(policy, 1, draw=lambda: 0.999999)

    # Then the delay stays between 75 % and 100 % of the base
    assert longest == 4.0
    assert shortest == pytest.approx(3.0, abs=1e-3)


def test_success_ends_backoff() -> None:
    # Given a streak of five failures
    # When a poll succeeds
    hold = decide_hold(ENDPOINT, result(200), 5, slot_ms=1_000, now_ms=1_100)

    # Then the streak and the back-off end
    assert hold.backoff_streak == 0
    assert hold.backoff_until_ms is None
    assert hold.paused_until_ms is None


def test_not_modified_ends_backoff() -> None:
    # Given a streak of five failures
    # When the server responds 304 to a conditional poll
    hold = decide_hold(
        ENDPOINT, result(304, not_modified=True), 5, slot_ms=1_000, now_ms=1_100
    )

    # Then the streak ends
    assert hold.backoff_streak == 0


def test_failure_backs_off_from_slot() -> None:
    # Given one failure so far
    # When the second fails
    hold = decide_hold(
        ENDPOINT, result(500, "http_status"), 1, slot_ms=1_000, now_ms=1_300
    )

    # Then the back-off counts from the slot
    assert hold.backoff_streak == 2
    assert hold.backoff_until_ms == 2_000


def test_backoff_off_keeps_interval() -> None:
    # Given an endpoint without back-off
    endpoint = Endpoint(name="api", url="http://x/", backoff=None)

    # When a poll fails again
    hold = decide_hold(endpoint, result(None, "timeout"), 9, slot_ms=0, now_ms=10)

    # Then the streak grows but nothing waits
    assert hold.backoff_streak == 10
    assert hold.backoff_until_ms is None


def test_429_with_retry_after_pauses_only() -> None:
    # Given a streak of one failure
    # When a 429 carries Retry-After: 30
    hold = decide_hold(
        ENDPOINT,
        result(429, "rate_limited", retry_after_s=30),
        1,
        slot_ms=1_000,
        now_ms=1_200,
    )

    # Then the endpoint pauses for 30 s from now and the streak stays
    assert hold.paused_until_ms == 31_200
    assert hold.backoff_streak == 1
    assert hold.backoff_until_ms is None


def test_429_without_retry_after_backs_off() -> None:
    # Given a streak of one failure
    # When a 429 carries no Retry-After
    hold = decide_hold(
        ENDPOINT, result(429, "rate_limited"), 1, slot_ms=1_000, now_ms=1_200
    )

    # Then it lengthens the streak and backs off
    assert hold.paused_until_ms is None
    assert hold.backoff_streak == 2
    assert hold.backoff_until_ms == 2_000


def test_503_with_retry_after_pauses_and_counts() -> None:
    # Given no failure so far
    # When a 503 carries Retry-After: 5
    hold = decide_hold(
        ENDPOINT,
        result(503, "http_status", retry_after_s=5),
        0,
        slot_ms=1_000,
        now_ms=1_200,
    )

    # Then the endpoint pauses and the failure joins the streak
    assert hold.paused_until_ms == 6_200
    assert hold.backoff_streak == 1


def test_retry_after_over_cap_warns(caplog: pytest.LogCaptureFixture) -> None:
    # Given an endpoint that allows pauses of up to 60 s
    endpoint = Endpoint(name="api", url="http://x/", max_retry_after_s=60)

    # When a 429 carries Retry-After: 3600
    with caplog.at_level(logging.WARNING, logger="bts_sync.politeness"):
        hold = decide_hold(
            endpoint,
            result(429, "rate_limited", retry_after_s=3600),
            0,
            slot_ms=0,
            now_ms=0,
        )

    # Then the pause is 60 s and a WARNING names both numbers
    assert hold.paused_until_ms == 60_000
    assert "3600 s" in caplog.text
    assert "60 s" in caplog.text
