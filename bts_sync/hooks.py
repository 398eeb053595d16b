"""Monitoring work done by the worker: after each recorded poll and in each watchdog run.

After a poll, one Redis transaction updates the metric counters and runs the
health check, which costs one round trip on the poll path. An alert, which is
rare, is logged and handed to a background thread for the webhook.
"""

from __future__ import annotations

import logging
import time

import redis

from bts_sync import alerts, metrics
from bts_sync.config import Settings
from bts_sync.connection import describe
from bts_sync.errors import UnknownEndpointError
from bts_sync.fetch import FetchResult
from bts_sync.redact import mask_url

logger = logging.getLogger(__name__)


def after_poll(
    client: redis.Redis,
    settings: Settings,
    name: str,
    result: FetchResult,
    lateness_ms: float,
) -> alerts.Alert | None:
    """Count the recorded poll for the metrics and report a change of health.

    Call it after ``store.record_poll``, whose counters the health check reads.
    It never raises: a Redis failure is logged and the poll's metrics are lost.
    """
    prefix = settings.key_prefix
    now_s = time.time()
    outcome = "ok" if result.ok else (result.error_kind or "failed")
    last_error = f"{result.error_kind}: {result.error}" if not result.ok else ""
    try:
        pipe = client.pipeline(transaction=True)
        metrics.queue_observation(
            pipe, prefix, name, outcome, result.elapsed_ms, lateness_ms
        )
        alerts.queue_health_check(
            pipe,
            client,
            prefix,
            name,
            settings.alert_after_failures,
            now_s,
            last_error,
        )
        replies = pipe.execute()
    except redis.RedisError as exc:
        logger.warning(
            "Redis failed while counting the poll of endpoint %r for metrics and alerts (%s).",
            name,
            describe(exc),
        )
        return None

    alert = alerts.alert_from_reply(name, replies[-1], now_s)
    if alert is not None:
        alerts.report(alert, settings.alert_webhook, mask_url(result.url))
    return alert


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
