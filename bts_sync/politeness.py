"""Polite polling: conditional request headers, Retry-After pauses and back-off.

This module makes the decisions. ``bts_sync.chain`` stores them in Redis, and
its fire-time script skips the slots that fall inside a pause or a back-off,
so every worker process, and every restart, applies the same decision.

* A **pause** comes from the server: a 429 or 503 response with
  ``Retry-After``. It lasts as long as the header requests, capped by the
  endpoint's ``max_retry_after``.
* A **back-off** comes from bts-sync: after ``after_failures`` consecutive
  unsuccessful polls the next poll waits ``initial`` seconds from the failed
  slot, and each further one ``multiplier`` times longer, up to ``max``. The
  streak counts failures and 429 responses without ``Retry-After``; a 429 with
  ``Retry-After`` pauses instead and leaves the streak as it is. The first
  success ends the back-off.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from bts_sync.config import BackoffPolicy, Endpoint
from bts_sync.fetch import FetchResult

logger = logging.getLogger(__name__)


def conditional_headers(
    endpoint: Endpoint, etag: str | None, last_modified: str | None
) -> dict[str, str]:
    """Return the ``If-None-Match`` and ``If-Modified-Since`` headers for the next poll.

    They repeat the validators of the last good response, and are left out
    when the endpoint turns ``conditional_requests`` off.
    """
    if not endpoint.conditional_requests:
        return {}
    headers: dict[str, str] = {}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    return headers


def backoff_delay_s(
    policy: BackoffPolicy, streak: int, draw: Callable[[], float] = random.random
) -> float | None:
    """Return the back-off delay after ``streak`` consecutive unsuccessful polls.

    Args:
        policy: The endpoint's back-off settings.
        streak: Consecutive unsuccessful polls, this one included.
        draw: Source of uniform numbers in [0, 1), replaced in tests.

    Returns:
        Seconds to wait from the failed slot, or None while the streak is
        shorter than ``after_failures``.
    """
    steps = streak - policy.after_failures
    if steps < 0:
        return None
    # Compared in logarithms, so a long streak cannot overflow the power.
    if policy.multiplier > 1 and steps * math.log(policy.multiplier) >= math.log(
        policy.max_s / policy.initial_s
    ):
        delay = policy.max_s
    else:
        delay = min(policy.max_s, policy.initial_s * policy.multiplier**steps)
    return delay * (1 - policy.jitter * draw())


@dataclass(frozen=True)
class Hold:
    """When an endpoint may be polled again, as decided from one poll.

    Attributes:
        paused_until_ms: End of a pause that the server requested, in
            milliseconds since the epoch, or None when it requested none.
        backoff_streak: Consecutive unsuccessful polls after this one.
        backoff_until_ms: End of the back-off, or None when there is none.
    """

    paused_until_ms: int | None
    backoff_streak: int
    backoff_until_ms: int | None


def decide_hold(
    endpoint: Endpoint,
    result: FetchResult,
    streak_before: int,
    slot_ms: int,
    now_ms: int,
    draw: Callable[[], float] = random.random,
) -> Hold:
    """Decide how long an endpoint waits after a poll's result.

    Args:
        endpoint: The polled endpoint.
        result: The poll's result.
        streak_before: Consecutive unsuccessful polls before this one.
        slot_ms: The poll's slot; a back-off counts from it.
        now_ms: The current time; a pause counts from it.
        draw: Source of uniform numbers in [0, 1) for the jitter.
    """
    if result.ok:
        return Hold(paused_until_ms=None, backoff_streak=0, backoff_until_ms=None)

    paused_until_ms = None
    if result.retry_after_s is not None:
        pause_s = result.retry_after_s
        if pause_s > endpoint.max_retry_after_s:
            logger.warning(
                "Endpoint %r requested a wait of %g s (Retry-After), more than max_retry_after; pausing %g s instead.",
                endpoint.name,
                pause_s,
                endpoint.max_retry_after_s,
            )
            pause_s = endpoint.max_retry_after_s
        paused_until_ms = now_ms + math.ceil(pause_s * 1000)
        if result.error_kind == "rate_limited":
            return Hold(
                paused_until_ms=paused_until_ms,
                backoff_streak=streak_before,
                backoff_until_ms=None,
            )

    streak = streak_before + 1
    delay_s = (
        backoff_delay_s(endpoint.backoff, streak, draw) if endpoint.backoff else None
    )
    backoff_until_ms = None if delay_s is None else slot_ms + round(delay_s * 1000)
    return Hold(
        paused_until_ms=paused_until_ms,
        backoff_streak=streak,
        backoff_until_ms=backoff_until_ms,
    )
