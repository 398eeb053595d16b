"""Redis connections, and the one-line error when Redis does not answer."""

from __future__ import annotations

import redis

from bts_sync.errors import RedisUnavailableError
from bts_sync.redact import mask_url

#: Seconds to wait for a connection or an answer before Redis counts as down.
SOCKET_TIMEOUT_S = 5.0


def connect(url: str, check: bool = True) -> redis.Redis:
    """Create a client for ``url`` and, with ``check``, make sure Redis answers.

    Raises:
        RedisUnavailableError: Redis did not answer; the message shows the URL
            with its password masked and how to fix it.
    """
    client = redis.Redis.from_url(
        url,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        health_check_interval=30,
    )
    if check:
        try:
            client.ping()
        except redis.RedisError as exc:
            raise unavailable(url, exc) from None
    return client


def unavailable(url: str, exc: BaseException) -> RedisUnavailableError:
    """Build the error for a Redis that did not answer at ``url``."""
    return RedisUnavailableError(
        f"Redis did not answer at {mask_url(url)} ({describe(exc)}). "
        "Start redis-server, or point REDIS_URL or --redis-url at a running Redis."
    )


def describe(exc: BaseException) -> str:
    """Describe a redis-py error in a few words, without secrets."""
    from bts_sync.redact import mask_text

    text = str(exc).strip() or type(exc).__name__
    return mask_text(text.rstrip("."))
