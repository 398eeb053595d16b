"""Redis connections, and the one-line error when Redis does not respond."""

from __future__ import annotations

from typing import Any

import redis

from bts_sync.errors import RedisUnavailableError
from bts_sync.redact import mask_url

#: Seconds to wait for a connection or a reply before Redis counts as down.
SOCKET_TIMEOUT_S = 5.0


def connect(url: str, check: bool = True) -> redis.Redis:
    """Create a client for ``url`` and, with ``check``, make sure Redis responds.

    Raises:
        RedisUnavailableError: Redis did not respond; the message shows the URL
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
    """Build the error for a Redis at ``url`` that failed with ``exc``."""
    if isinstance(exc, redis.AuthenticationError | redis.exceptions.AuthorizationError):
        return RedisUnavailableError(
            f"Redis at {mask_url(url)} rejected the credentials ({describe(exc)}). "
            "Check the user name and password in REDIS_URL or --redis-url."
        )
    if isinstance(exc, redis.ResponseError):
        return RedisUnavailableError(
            f"Redis at {mask_url(url)} returned an error ({describe(exc)}). "
            "Check the database number and options in REDIS_URL or --redis-url."
        )
    return RedisUnavailableError(
        f"Redis did not respond at {mask_url(url)} ({describe(exc)}). "
        "Start redis-server, or point REDIS_URL or --redis-url at a running Redis."
    )


def describe(exc: BaseException) -> str:
    """Describe a redis-py error in a few words, without secrets."""
    from bts_sync.redact import mask_text

    text = str(exc).strip() or type(exc).__name__
    return mask_text(text.rstrip("."))


# Sources of the scripts queued on pipelines, by SHA-1, to load them again after
# Redis lost them (a restart or SCRIPT FLUSH).
_script_sources: dict[str, str | bytes] = {}


def queue_script(pipe: Any, script: Any, keys: list[str], args: list[Any]) -> None:
    """Queue an ``EVALSHA`` of a registered ``script`` on ``pipe``.

    redis-py's own ``script(..., client=pipe)`` makes every ``execute`` send
    ``SCRIPT EXISTS`` first, which is an extra round trip on every poll. Scripts
    queued here are loaded only when Redis reports them missing.
    """
    _script_sources[script.sha] = script.script
    pipe.evalsha(script.sha, len(keys), *keys, *args)


def execute_pipeline(pipe: Any, client: redis.Redis) -> list[Any]:
    """Execute ``pipe`` and return its replies, loading missing scripts on the way.

    A command that failed with ``NOSCRIPT`` did not run, so it is run again
    once its script is loaded. Any other error is raised.
    """
    commands = [args for args, _options in pipe.command_stack]
    replies: list[Any] = pipe.execute(raise_on_error=False)
    for index, reply in enumerate(replies):
        if isinstance(reply, redis.exceptions.NoScriptError):
            sha = commands[index][1]
            client.script_load(_script_sources[sha])
            replies[index] = client.execute_command(*commands[index])  # type: ignore[no-untyped-call]
        elif isinstance(reply, Exception):
            raise reply
    return replies
