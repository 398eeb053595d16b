"""Monitoring work done by the worker: after each recorded poll and in each watchdog run.

After a poll, the metric counters and the health check go in the same Redis
pipeline that records the poll, so they cost no round trip of their own. An
alert, which is rare, is logged and handed to a background thread for the
webhook.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from bts_sync import alerts, metrics
from bts_sync.config import Settings
from bts_sync.connection import describe, execute_pipeline
from bts_sync.errors import UnknownEndpointError
from bts_sync.fetch import FetchResult
from bts_sync.redact import mask_url

logger = logging.getLogger(__name__)


def queue_poll_checks(
    pipe: Any,
    client: redis.Redis,
    settings: Settings,
    name: str,
    result: FetchResult,
    lateness_ms: float,
    now_s: float,
) -> None:
    """Queue, on ``pipe``, the metric counters and the health check of a poll.

    Queue them after the commands that record the poll, whose counters the
    health check reads. The last reply of the pipeline goes to ``report_health``.
    """
    outcome = "ok" if result.ok else (result.error_kind or "failed")
    last_error = f"{result.error_kind}: {result.error}" if not result.ok else ""
    metrics.queue_observation(
        pipe, settings.key_prefix, name, outcome, result.elapsed_ms, lateness_ms
    )
    alerts.queue_health_check(
        pipe,
        client,
        settings.key_prefix,
        name,
        settings.alert_after_failures,
        now_s,
        last_error,
    )


def report_health(
    settings: Settings, name: str, result: FetchResult, reply: Any, now_s: float
) -> alerts.Alert | None:
    """Log and send the alert that the health check's ``reply`` describes, if any."""
    alert = alerts.alert_from_reply(name, reply, now_s)
    if alert is not None:
        alerts.report(alert, settings.alert_webhook, mask_url(result.url))
    return alert


def after_poll(
    client: redis.Redis,
    settings: Settings,
    name: str,
    result: FetchResult,
    lateness_ms: float,
) -> alerts.Alert | None:
    """Count a recorded poll for the metrics and report a change of health.

    The worker queues the same commands in the pipeline that records the poll;
    this stand-alone form costs one round trip of its own. It never raises: a
    Redis failure is logged and the poll's metrics are lost.
    """
    now_s = time.time()
    try:
        pipe = client.pipeline(transaction=True)
        queue_poll_checks(pipe, client, settings, name, result, lateness_ms, now_s)
        replies = execute_pipeline(pipe, client)
    except redis.RedisError as exc:
        logger.warning(
            "Redis failed while counting the poll of endpoint %r for metrics and alerts (%s).",
            name,
            describe(exc),
        )
        return None
    return report_health(settings, name, result, replies[-1], now_s)


def after_watchdog_check(
    client: redis.Redis, settings: Settings, stalled: dict[str, int]
) -> list[alerts.Alert]:
    """Mark each stalled endpoint unhealthy and report the changes.

    Args:
        client: Redis client.
        settings: Settings with the key prefix and the webhook.
        stalled: Name of each stalled endpoint and the milliseconds since its
            chain last claimed a slot.
    """
    reported = []
    now_s = time.time()
    for name, silent_ms in stalled.items():
        reason = f"its chain claimed no slot for {silent_ms / 1000:.0f} s (stalled)"
        try:
            alert = alerts.mark_stalled(
                client, settings.key_prefix, name, now_s, reason
            )
        except redis.RedisError as exc:
            logger.warning(
                "Redis failed while marking endpoint %r as stalled (%s).",
                name,
                describe(exc),
            )
            continue
        if alert is None:
            continue
        try:
            url = mask_url(settings.endpoint(name).url)
        except UnknownEndpointError:
            url = ""
        alerts.report(alert, settings.alert_webhook, url)
        reported.append(alert)
    return reported
