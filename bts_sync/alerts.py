"""Health state of each endpoint, and alerts when it changes.

An endpoint turns **unhealthy** after ``alert_after_failures`` consecutive
failed polls, or when the watchdog finds its chain stalled. It **recovers** at
the next successful poll. The state lives in the hash ``{prefix}:alert:{name}``
(``state``, ``since``, ``reason``) and each change is one Lua script, a
compare-and-set, so however many worker processes record polls of the same
endpoint at once, every change of state is reported exactly once.

A change is logged (WARNING when unhealthy, INFO on recovery) and, when
``alert_webhook`` is configured, POSTed as JSON with a Slack-compatible
``text`` field from a background thread, so a slow webhook never delays a poll.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import redis
import urllib3

from bts_sync.config import mask_webhook_url
from bts_sync.connection import queue_script
from bts_sync.redact import mask_text
from bts_sync.store import stats_key

logger = logging.getLogger(__name__)

#: Attempts to deliver one alert to the webhook.
WEBHOOK_ATTEMPTS = 3

#: Seconds one webhook request may take, connection included.
WEBHOOK_TIMEOUT_S = 5.0

#: Seconds waited after the first failed delivery; doubled after each further one.
WEBHOOK_FIRST_PAUSE_S = 1.0

#: Maximum length of the error text in an alert, in characters.
MAX_REASON_LENGTH = 300


def alert_key(prefix: str, name: str) -> str:
    """Return the key of the endpoint's health hash."""
    return f"{prefix}:alert:{name}"


# KEYS: stats, alert; ARGV: failures threshold, now (s), last error.
# Reads the counter that the record script has just updated, so the decision
# follows the stored sequence of polls, not the order in which workers call.
_HEALTH_CHECK = """
local failures = tonumber(redis.call('HGET', KEYS[1], 'consecutive_failures') or '0')
local state = redis.call('HGET', KEYS[2], 'state')
if failures >= tonumber(ARGV[1]) then
  if state ~= 'unhealthy' then
    local reason = failures .. ' consecutive failed polls; last error: ' .. ARGV[3]
    redis.call('HSET', KEYS[2], 'state', 'unhealthy', 'since', ARGV[2], 'reason', reason)
    return {'unhealthy', reason, ARGV[2]}
  end
elseif failures == 0 and state == 'unhealthy' then
  local reason = redis.call('HGET', KEYS[2], 'reason') or ''
  local since = redis.call('HGET', KEYS[2], 'since') or ARGV[2]
  redis.call('HSET', KEYS[2], 'state', 'healthy', 'since', ARGV[2], 'reason', '')
  return {'recovered', reason, since}
end
return false
"""

# KEYS: alert; ARGV: now (s), reason.
_MARK_STALLED = """
if redis.call('HGET', KEYS[1], 'state') == 'unhealthy' then return false end
redis.call('HSET', KEYS[1], 'state', 'unhealthy', 'since', ARGV[1], 'reason', ARGV[2])
return {'unhealthy', ARGV[2], ARGV[1]}
"""

_scripts_by_client: dict[int, tuple[Any, Any]] = {}


def _scripts(client: redis.Redis) -> tuple[Any, Any]:
    scripts = _scripts_by_client.get(id(client))
    if scripts is None:
        scripts = (
            client.register_script(_HEALTH_CHECK),
            client.register_script(_MARK_STALLED),
        )
        _scripts_by_client[id(client)] = scripts
    return scripts


@dataclass(frozen=True)
class Alert:
    """A change of an endpoint's health.

    Attributes:
        endpoint: Endpoint name.
        event: ``unhealthy`` or ``recovered``.
        reason: Why it turned unhealthy; for a recovery, the reason it had been
            unhealthy.
        time: Unix time of the change.
        unhealthy_since: For a recovery, when the endpoint turned unhealthy.
    """

    endpoint: str
    event: str
    reason: str
    time: float
    unhealthy_since: float | None = None

    def text(self) -> str:
        """Build the one-line message for people, as sent in the webhook's ``text``."""
        if self.event == "unhealthy":
            return f"bts-sync: endpoint {self.endpoint!r} is unhealthy: {self.reason}"
        duration = ""
        if self.unhealthy_since is not None:
            duration = f" after {_format_seconds(self.time - self.unhealthy_since)}"
        return f"bts-sync: endpoint {self.endpoint!r} recovered{duration} (it was unhealthy: {self.reason})"

    def payload(self, url: str) -> dict[str, Any]:
        """Build the JSON body of the webhook request; ``url`` is shown masked."""
        return {
            "text": self.text(),
            "endpoint": self.endpoint,
            "event": self.event,
            "state": "unhealthy" if self.event == "unhealthy" else "healthy",
            "reason": self.reason,
            "url": url,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.time)),
        }


def _format_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _alert_from_reply(name: str, reply: Any, now_s: float) -> Alert | None:
    if not reply:
        return None
    event, reason, since = (
        item.decode() if isinstance(item, bytes) else str(item) for item in reply
    )
    return Alert(
        endpoint=name,
        event=event,
        reason=reason,
        time=now_s,
        unhealthy_since=float(since) if event == "recovered" else None,
    )


def queue_health_check(
    pipe: Any,
    client: redis.Redis,
    prefix: str,
    name: str,
    threshold: int,
    now_s: float,
    last_error: str,
) -> None:
    """Queue, on ``pipe``, the script that flips the endpoint's health after a poll.

    Its reply, read with ``alert_from_reply``, is the change or nothing.
    """
    health_check, _ = _scripts(client)
    error = mask_text(last_error)[:MAX_REASON_LENGTH]
    queue_script(
        pipe,
        health_check,
        [stats_key(prefix, name), alert_key(prefix, name)],
        [threshold, f"{now_s:.3f}", error],
    )


def alert_from_reply(name: str, reply: Any, now_s: float) -> Alert | None:
    """Turn the health check script's reply into an alert, or None when nothing changed."""
    return _alert_from_reply(name, reply, now_s)


def mark_stalled(
    client: redis.Redis, prefix: str, name: str, now_s: float, reason: str
) -> Alert | None:
    """Mark the endpoint unhealthy because its chain stalled; return the change, if any."""
    _, stalled = _scripts(client)
    reply = stalled(keys=[alert_key(prefix, name)], args=[f"{now_s:.3f}", reason])
    return _alert_from_reply(name, reply, now_s)


def read_health(
    client: redis.Redis, prefix: str, names: list[str]
) -> dict[str, dict[str, Any]]:
    """Return each endpoint's health: ``state`` (healthy or unhealthy), ``since`` and ``reason``."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hmget(alert_key(prefix, name), "state", "since", "reason")
    health = {}
    for name, (state, since, reason) in zip(names, pipe.execute(), strict=True):
        health[name] = {
            "state": state.decode() if state else "healthy",
            "since": float(since) if since else None,
            "reason": mask_text(reason.decode(errors="replace")) if reason else "",
        }
    return health


_executor_state: dict[str, ThreadPoolExecutor] = {}


def _executor() -> ThreadPoolExecutor:
    executor = _executor_state.get("executor")
    if executor is None:
        executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="bts-sync-alert"
        )
        _executor_state["executor"] = executor
    return executor


def report(
    alert: Alert, webhook_url: str | None, endpoint_url: str
) -> Future[bool] | None:
    """Log the alert and, with a webhook, send it in the background.

    Returns:
        The pending delivery, whose result is whether the webhook accepted
        it, or None without a webhook.
    """
    fields = {"endpoint": alert.endpoint, "alert": alert.event, "reason": alert.reason}
    if alert.event == "unhealthy":
        logger.warning(
            "Endpoint %r is unhealthy: %s", alert.endpoint, alert.reason, extra=fields
        )
    else:
        logger.info("%s", alert.text().removeprefix("bts-sync: "), extra=fields)
    if not webhook_url:
        return None
    payload = alert.payload(endpoint_url)
    return _executor().submit(send_webhook, webhook_url, payload)


def send_webhook(
    url: str, payload: dict[str, Any], attempts: int = WEBHOOK_ATTEMPTS
) -> bool:
    """POST ``payload`` as JSON, retrying connection failures, 429 and 5xx responses.

    It never raises; failures are logged with the URL masked.
    """
    body = json.dumps(payload).encode()
    shown_url = mask_webhook_url(url)
    pause_s = WEBHOOK_FIRST_PAUSE_S
    for attempt in range(1, attempts + 1):
        retryable = True
        try:
            response = urllib3.request(
                "POST",
                url,
                body=body,
                headers={"Content-Type": "application/json"},
                timeout=urllib3.Timeout(total=WEBHOOK_TIMEOUT_S),
                retries=False,
            )
            if 200 <= response.status < 300:
                logger.debug("Alert delivered to %s.", shown_url)
                return True
            problem = f"status {response.status}"
            retryable = response.status == 429 or response.status >= 500
        except urllib3.exceptions.HTTPError as exc:
            problem = mask_text(f"{type(exc).__name__}: {exc}")
        if attempt >= attempts or not retryable:
            logger.warning(
                "Alert webhook %s failed (%s); the alert for endpoint %r was not delivered.",
                shown_url,
                problem,
                payload.get("endpoint"),
            )
            return False
        logger.info(
            "Alert webhook %s failed (%s); retrying in %.0f s.",
            shown_url,
            problem,
            pause_s,
        )
        time.sleep(pause_s)
        pause_s *= 2
    return False  # pragma: no cover - the loop returns
