"""Endpoints and settings from defaults, a TOML file, environment variables and flags.

Precedence, highest first: command line flags, environment variables
(``BTS_SYNC_*`` and ``REDIS_URL``), the TOML file (``--config PATH``, else
``BTS_SYNC_CONFIG``, else ``./bts-sync.toml`` when present), built-in defaults.

Everything is validated at load. All problems are collected and raised together
as one ``ConfigError`` whose lines each name the source, the endpoint, the key,
the value and the fix.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlsplit

from bts_sync.errors import ConfigError
from bts_sync.redact import is_secret_name, mask_text, mask_url, register_secret

#: Endpoint polled when no configuration file exists.
DEFAULT_URL = "https://dummyjson.com/test"

#: Name of the endpoint polled when no configuration file exists.
DEFAULT_ENDPOINT_NAME = "default"

#: File read from the working directory when neither ``--config`` nor
#: ``BTS_SYNC_CONFIG`` names one.
DEFAULT_CONFIG_FILE = "bts-sync.toml"

#: Redis used when neither ``--redis-url``, ``BTS_SYNC_REDIS_URL``, ``REDIS_URL``
#: nor the file names one.
DEFAULT_REDIS_URL = "redis://localhost:6379/0"

#: Seconds between two polls of an endpoint.
DEFAULT_INTERVAL_S = 3.0

#: Shortest interval accepted, in seconds; slots are whole milliseconds.
MIN_INTERVAL_S = 0.01

#: Shortest and longest durations accepted for any setting in seconds.
MIN_SECONDS = 0.001
MAX_SECONDS = 31 * 24 * 3600.0

#: Upper bound of the default total deadline, in seconds.
DEFAULT_MAX_DEADLINE_S = 10.0

#: Share of the interval that the default deadline takes, so that a slow poll
#: ends before the next slot is due.
DEFAULT_DEADLINE_SHARE = 0.8

#: Upper bound of the default connect and read timeouts, in seconds.
DEFAULT_MAX_TIMEOUT_S = 5.0

#: Largest response body kept by default, in bytes (10 MiB).
DEFAULT_MAX_BYTES = 10 * 1024 * 1024

#: Redirects followed by default before the poll fails with ``redirects``.
DEFAULT_MAX_REDIRECTS = 5

#: Entries kept in each endpoint's history stream by default.
DEFAULT_HISTORY_LENGTH = 1000

#: Seconds a chain may go without a claimed slot, beyond one interval, before
#: the watchdog re-seeds it.
DEFAULT_WATCHDOG_GRACE_S = 10.0

#: Maximum pause, in seconds, that a ``Retry-After`` header can impose by default.
DEFAULT_MAX_RETRY_AFTER_S = 600.0

#: Consecutive failures after which polling backs off, by default.
DEFAULT_BACKOFF_AFTER_FAILURES = 1

#: Growth factor of the back-off delay from one failure to the next, by default.
DEFAULT_BACKOFF_MULTIPLIER = 2.0

#: Share of the back-off delay that is randomly taken off, by default.
DEFAULT_BACKOFF_JITTER = 0.2

#: Lower bound, in seconds, of the default cap on the back-off delay. The
#: default cap is this or ten intervals, whichever is longer.
DEFAULT_BACKOFF_MAX_S = 300.0

#: Queue of bts-sync's own poll messages; ``on_change`` may not send to it.
POLL_QUEUE = "bts_sync"

#: Queue that ``on_change`` sends to when it names none; Dramatiq's default.
DEFAULT_CHANGE_QUEUE = "default"

#: Seconds before a slot's due time at which its message is made deliverable.
#: It covers Dramatiq's two polling back-offs of up to ``worker_timeout``
#: (1000 ms by default) each, so that the poll itself can start on time.
DEFAULT_DISPATCH_LEAD_S = 2.5

#: Consecutive failed polls after which an endpoint counts as unhealthy and an
#: alert is sent.
DEFAULT_ALERT_AFTER_FAILURES = 3

_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
_METHODS_WITH_BODY = ("POST", "PUT", "PATCH")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_VARIABLE_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_STATUS_CLASS_RE = re.compile(r"^([1-5])xx$")
# Dramatiq accepts these queue names (dramatiq.actor, version 2.x); actor
# names are kept to the same characters so that a module path is caught.
_QUEUE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]*$")
_ACTOR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class BackoffPolicy:
    """Policy for slowing polling down after consecutive failures.

    After ``after_failures`` consecutive failures, the next poll waits
    ``initial_s`` seconds from the failed slot. Each further failure multiplies
    the wait by ``multiplier``, up to ``max_s``. A random share of up to
    ``jitter`` is taken off each wait.

    Attributes:
        after_failures: Consecutive failures before the first back-off.
        initial_s: First back-off delay, in seconds.
        multiplier: Growth factor from one delay to the next, 1 or more.
        max_s: Maximum delay, in seconds.
        jitter: Share of each delay, from 0 up to (not including) 1, that is
            randomly taken off.
    """

    after_failures: int = DEFAULT_BACKOFF_AFTER_FAILURES
    initial_s: float = 2 * DEFAULT_INTERVAL_S
    multiplier: float = DEFAULT_BACKOFF_MULTIPLIER
    max_s: float = DEFAULT_BACKOFF_MAX_S
    jitter: float = DEFAULT_BACKOFF_JITTER

    def to_public_dict(self) -> dict[str, Any]:
        """Return the policy with the key names of the configuration file."""
        return {
            "after_failures": self.after_failures,
            "initial": self.initial_s,
            "multiplier": self.multiplier,
            "max": self.max_s,
            "jitter": self.jitter,
        }


@dataclass(frozen=True)
class ChangeTarget:
    """The Dramatiq actor of an application that receives an endpoint's changes.

    Attributes:
        actor: Actor name as the application registers it (the function name
            unless the application sets ``actor_name``).
        queue: Queue that the application's worker consumes.
    """

    actor: str
    queue: str = DEFAULT_CHANGE_QUEUE


@dataclass(frozen=True)
class Endpoint:
    """One HTTP JSON endpoint and how to poll it.

    Attributes:
        name: Unique name; it appears in commands, logs and Redis keys.
        url: Absolute ``http`` or ``https`` URL, with variables substituted.
        method: HTTP method. Defaults to ``GET``.
        headers: Request headers, with variables substituted.
        params: Query parameters added to the URL.
        json_body: Body sent as JSON with ``POST``, ``PUT`` or ``PATCH``, or None.
        interval_s: Seconds between two polls. Defaults to 3.
        connect_timeout_s: Seconds to wait for the connection.
        read_timeout_s: Seconds to wait for each read from the socket.
        deadline_s: Seconds the whole request may take, no more than the interval.
        max_bytes: Largest accepted body, in bytes after decompression.
        max_redirects: Redirects followed before the poll fails.
        verify_tls: Whether the server's TLS certificate is checked.
        success_statuses: Status codes that count as success; 2xx by default.
        conditional_requests: Whether polls send ``If-None-Match`` and
            ``If-Modified-Since`` from the last response's validators.
        max_retry_after_s: Maximum pause, in seconds, that a ``Retry-After``
            header of a 429 or 503 response can impose.
        backoff: Policy for slowing polling down after failures, or None to keep the
            interval.
        ignore_paths: JSONPath expressions whose values the content hash leaves out.
        select_paths: JSONPath expressions whose values alone the content hash
            covers; empty for the whole body.
        on_change: Application actor that receives each content change, or None.
    """

    name: str
    url: str
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    json_body: Any = None
    interval_s: float = DEFAULT_INTERVAL_S
    connect_timeout_s: float = DEFAULT_MAX_TIMEOUT_S
    read_timeout_s: float = DEFAULT_MAX_TIMEOUT_S
    deadline_s: float = DEFAULT_INTERVAL_S * DEFAULT_DEADLINE_SHARE
    max_bytes: int = DEFAULT_MAX_BYTES
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    verify_tls: bool = True
    success_statuses: frozenset[int] = frozenset(range(200, 300))
    conditional_requests: bool = True
    max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S
    backoff: BackoffPolicy | None = field(default_factory=BackoffPolicy)
    ignore_paths: tuple[str, ...] = ()
    select_paths: tuple[str, ...] = ()
    on_change: ChangeTarget | None = None

    def to_public_dict(self) -> dict[str, Any]:
        """Return the endpoint as plain data with secrets masked."""
        return {
            "name": self.name,
            "url": mask_url(self.url),
            "method": self.method,
            "headers": {
                k: "***" if is_secret_name(k) or _has_variable_secret(v) else v
                for k, v in self.headers.items()
            },
            "params": {
                k: "***" if is_secret_name(k) else mask_url(v)
                for k, v in self.params.items()
            },
            "json": self.json_body,
            "interval": self.interval_s,
            "timeout": {"connect": self.connect_timeout_s, "read": self.read_timeout_s},
            "deadline": self.deadline_s,
            "max_bytes": self.max_bytes,
            "max_redirects": self.max_redirects,
            "verify_tls": self.verify_tls,
            "success_status": _format_statuses(self.success_statuses),
            "conditional_requests": self.conditional_requests,
            "max_retry_after": self.max_retry_after_s,
            "backoff": self.backoff.to_public_dict() if self.backoff else False,
            "ignore_paths": list(self.ignore_paths),
            "select_paths": list(self.select_paths),
            "on_change": (
                {"actor": self.on_change.actor, "queue": self.on_change.queue}
                if self.on_change
                else None
            ),
        }


@dataclass(frozen=True)
class Settings:
    """The whole resolved configuration.

    Attributes:
        endpoints: Configured endpoints, in file order.
        redis_url: Redis used as broker and store.
        key_prefix: Prefix of every Redis key that bts-sync writes.
        history_length: Entries kept in each endpoint's history stream.
        watchdog_grace_s: Seconds a chain may be late, beyond one interval,
            before the watchdog re-seeds it.
        dispatch_lead_s: Seconds before a slot at which its message is released.
        alert_webhook: URL that alerts are POSTed to as JSON, or None.
        alert_after_failures: Consecutive failed polls that make an endpoint
            unhealthy.
        source: The file the settings came from, or None for defaults only.
    """

    endpoints: tuple[Endpoint, ...]
    redis_url: str = DEFAULT_REDIS_URL
    key_prefix: str = "bts_sync"
    history_length: int = DEFAULT_HISTORY_LENGTH
    watchdog_grace_s: float = DEFAULT_WATCHDOG_GRACE_S
    dispatch_lead_s: float = DEFAULT_DISPATCH_LEAD_S
    alert_webhook: str | None = None
    alert_after_failures: int = DEFAULT_ALERT_AFTER_FAILURES
    source: Path | None = None

    @functools.cached_property
    def _endpoints_by_name(self) -> dict[str, Endpoint]:
        # Each poll looks its endpoint up by name, so a scan of the tuple
        # would cost time in proportion to the number of endpoints.
        return {endpoint.name: endpoint for endpoint in self.endpoints}

    def endpoint(self, name: str) -> Endpoint:
        """Return the endpoint called ``name``.

        Raises:
            UnknownEndpointError: No endpoint has that name.
        """
        from bts_sync.errors import UnknownEndpointError

        endpoint = self._endpoints_by_name.get(name)
        if endpoint is not None:
            return endpoint
        known = ", ".join(e.name for e in self.endpoints) or "none"
        hint = _did_you_mean(name, [e.name for e in self.endpoints])
        raise UnknownEndpointError(
            f"No endpoint is named {name!r}{hint}. Configured endpoints: {known}."
        )

    def to_public_dict(self) -> dict[str, Any]:
        """Return the settings as plain data with secrets masked."""
        return {
            "source": str(self.source) if self.source else None,
            "redis_url": mask_url(self.redis_url),
            "key_prefix": self.key_prefix,
            "history_length": self.history_length,
            "watchdog_grace": self.watchdog_grace_s,
            "dispatch_lead": self.dispatch_lead_s,
            "alert_webhook": mask_webhook_url(self.alert_webhook)
            if self.alert_webhook
            else None,
            "alert_after_failures": self.alert_after_failures,
            "endpoints": [e.to_public_dict() for e in self.endpoints],
        }


# Variable references are tracked so that values substituted from the
# environment are always shown masked, whatever the header is called.
_substituted_values: set[str] = set()


def _has_variable_secret(value: str) -> bool:
    return any(secret in value for secret in _substituted_values)


class _Problems:
    """Collects validation problems, each a line naming where, what and the fix."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def add(self, where: str, key: str, value: Any, problem: str) -> None:
        shown = value
        if isinstance(value, str):
            # mask_url re-assembles what it parses, lower-casing anything before
            # a colon, so only values that look like URLs go through it.
            shown = mask_url(value) if "://" in value else mask_text(value)
        self.lines.append(f"{self.source}: {where}{key} = {shown!r}: {problem}")

    def add_plain(self, message: str) -> None:
        self.lines.append(f"{self.source}: {message}")

    def raise_if_any(self) -> None:
        if self.lines:
            count = len(self.lines)
            heading = "Invalid configuration" + (
                f" ({count} problems)" if count > 1 else ""
            )
            raise ConfigError(heading + ":\n  " + "\n  ".join(self.lines))


def _did_you_mean(word: str, choices: list[str]) -> str:
    matches = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def _format_statuses(statuses: frozenset[int]) -> list[str | int]:
    result: list[str | int] = []
    remaining = set(statuses)
    for first_digit in range(1, 6):
        block = set(range(first_digit * 100, first_digit * 100 + 100))
        if block <= remaining:
            result.append(f"{first_digit}xx")
            remaining -= block
    result.extend(sorted(remaining))
    return result


# --- value checks: each returns the converted value or records a problem --------

_Check = Callable[[Any, str, str, _Problems], Any]


def _positive_number(value: Any, where: str, key: str, problems: _Problems) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.add(
            where, key, value, "must be a number of seconds, such as 3 or 0.5."
        )
        return None
    if not math.isfinite(value) or value > MAX_SECONDS:
        problems.add(
            where,
            key,
            value,
            f"must be a finite number of seconds, at most {MAX_SECONDS:.0f} (31 days).",
        )
        return None
    if value <= 0:
        problems.add(where, key, value, "must be greater than 0 seconds.")
        return None
    if value < MIN_SECONDS:
        problems.add(where, key, value, f"must be at least {MIN_SECONDS:g} seconds.")
        return None
    return float(value)


def _interval(value: Any, where: str, key: str, problems: _Problems) -> Any:
    seconds = _positive_number(value, where, key, problems)
    if seconds is not None and seconds < MIN_INTERVAL_S:
        problems.add(where, key, value, f"must be at least {MIN_INTERVAL_S:g} seconds.")
        return None
    return seconds


def _positive_int(value: Any, where: str, key: str, problems: _Problems) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        problems.add(where, key, value, "must be a whole number greater than 0.")
        return None
    return value


def _non_negative_int(value: Any, where: str, key: str, problems: _Problems) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        problems.add(where, key, value, "must be a whole number, 0 or more.")
        return None
    return value


def _boolean(value: Any, where: str, key: str, problems: _Problems) -> Any:
    if not isinstance(value, bool):
        problems.add(where, key, value, "must be true or false.")
        return None
    return value


def _string(value: Any, where: str, key: str, problems: _Problems) -> Any:
    if not isinstance(value, str) or not value:
        problems.add(where, key, value, "must be a non-empty string.")
        return None
    return value


def _string_table(value: Any, where: str, key: str, problems: _Problems) -> Any:
    if not isinstance(value, dict):
        problems.add(
            where,
            key,
            value,
            'must be a table of strings, like { Accept = "application/json" }.',
        )
        return None
    result: dict[str, str] = {}
    for name, item in value.items():
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            problems.add(where, f"{key}.{name}", item, "must be a string or a number.")
            continue
        result[str(name)] = str(item)
    return result


def _method(value: Any, where: str, key: str, problems: _Problems) -> Any:
    if not isinstance(value, str) or value.upper() not in _METHODS:
        problems.add(where, key, value, f"must be one of {', '.join(_METHODS)}.")
        return None
    return value.upper()


def _timeout(value: Any, where: str, key: str, problems: _Problems) -> Any:
    if isinstance(value, dict):
        unknown = set(value) - {"connect", "read"}
        for name in sorted(unknown):
            problems.add(
                where,
                f"{key}.{name}",
                value[name],
                'is not a key of timeout; use "connect" and "read".',
            )
        connect = _positive_number(
            value.get("connect", DEFAULT_MAX_TIMEOUT_S),
            where,
            f"{key}.connect",
            problems,
        )
        read = _positive_number(
            value.get("read", DEFAULT_MAX_TIMEOUT_S), where, f"{key}.read", problems
        )
        return (connect, read)
    seconds = _positive_number(value, where, key, problems)
    return (seconds, seconds)


def _statuses(value: Any, where: str, key: str, problems: _Problems) -> Any:
    items = value if isinstance(value, list) else [value]
    statuses: set[int] = set()
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
            statuses.add(item)
            continue
        match = _STATUS_CLASS_RE.match(item) if isinstance(item, str) else None
        if match:
            first = int(match.group(1)) * 100
            statuses.update(range(first, first + 100))
            continue
        problems.add(
            where,
            key,
            item,
            'must be a status code from 100 to 599 or a class like "2xx".',
        )
    return frozenset(statuses) if statuses else None


def _any(value: Any, where: str, key: str, problems: _Problems) -> Any:
    return value


def _multiplier(value: Any, where: str, key: str, problems: _Problems) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 1:
        problems.add(where, key, value, "must be a number of 1 or more, such as 2.")
        return None
    return float(value)


def _share(value: Any, where: str, key: str, problems: _Problems) -> Any:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value < 1
    ):
        problems.add(
            where,
            key,
            value,
            "must be a number from 0 up to 1 (excluded), such as 0.2.",
        )
        return None
    return float(value)


_BACKOFF_KEYS: dict[str, _Check] = {
    "after_failures": _positive_int,
    "initial": _positive_number,
    "multiplier": _multiplier,
    "max": _positive_number,
    "jitter": _share,
}


def _backoff(value: Any, where: str, key: str, problems: _Problems) -> Any:
    """Check a ``backoff`` table; return its checked keys, or False when disabled."""
    if isinstance(value, bool):
        return {} if value else False
    if not isinstance(value, dict):
        problems.add(
            where,
            key,
            value,
            "must be a table like { initial = 6, max = 300 }, or false to keep polling at the interval after failures.",
        )
        return None
    checked: dict[str, Any] = {}
    for name, item in value.items():
        check = _BACKOFF_KEYS.get(name)
        if check is None:
            hint = _did_you_mean(name, list(_BACKOFF_KEYS))
            problems.add(
                where,
                f"{key}.{name}",
                item,
                f"is not a key of backoff{hint}; use {', '.join(_BACKOFF_KEYS)}.",
            )
            continue
        result = check(item, where, f"{key}.{name}", problems)
        if result is not None:
            checked[name] = result
    return checked


def _json_paths(value: Any, where: str, key: str, problems: _Problems) -> Any:
    from bts_sync.changes import PathSyntaxError, compile_path

    if not isinstance(value, list):
        problems.add(
            where,
            key,
            value,
            'must be a list of JSONPath expressions, like ["$.meta.generated_at", "items[*].updated_at"].',
        )
        return None
    paths: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            problems.add(
                where,
                key,
                item,
                "must be a JSONPath expression as a string, like $.meta.generated_at.",
            )
            continue
        try:
            compile_path(item)
        except PathSyntaxError as exc:
            problems.add(where, key, item, f"{exc}")
            continue
        paths.append(item)
    return tuple(paths)


def _change_target(value: Any, where: str, key: str, problems: _Problems) -> Any:
    example = '{ actor = "handle_quotes", queue = "app" }'
    if not isinstance(value, dict):
        problems.add(
            where,
            key,
            value,
            f"must be a table like {example}; bts-sync sends by actor name and queue, so it never imports your module.",
        )
        return None
    for name in sorted(set(value) - {"actor", "queue"}):
        problems.add(
            where,
            f"{key}.{name}",
            value[name],
            'is not a key of on_change; use "actor" and "queue".',
        )
    if "actor" not in value:
        problems.add_plain(
            f"{where}{key} is missing the key 'actor'; write {key} = {example}."
        )
        return None

    actor = value["actor"]
    if isinstance(actor, str) and ":" in actor:
        problems.add(
            where,
            f"{key}.actor",
            actor,
            f'names a module too; set only the actor name, like actor = "{actor.rsplit(":", 1)[-1]}".',
        )
        return None
    if not isinstance(actor, str) or not _ACTOR_RE.match(actor):
        problems.add(
            where,
            f"{key}.actor",
            actor,
            "must be a Dramatiq actor name: letters, digits, '_', '.' and '-', starting with a letter or '_'.",
        )
        return None

    queue = value.get("queue", DEFAULT_CHANGE_QUEUE)
    if not isinstance(queue, str) or not _QUEUE_RE.match(queue):
        problems.add(
            where,
            f"{key}.queue",
            queue,
            "must be a Dramatiq queue name: letters, digits, '_', '.' and '-', starting with a letter or '_'.",
        )
        return None
    if queue == POLL_QUEUE:
        problems.add(
            where,
            f"{key}.queue",
            queue,
            "is the queue of bts-sync's own poll messages; name a queue of your application.",
        )
        return None
    return ChangeTarget(actor=actor, queue=queue)


#: Endpoint keys accepted in the file, with their check and the field they set.
_ENDPOINT_KEYS: dict[str, tuple[_Check, str]] = {
    "name": (_string, "name"),
    "url": (_string, "url"),
    "method": (_method, "method"),
    "headers": (_string_table, "headers"),
    "params": (_string_table, "params"),
    "json": (_any, "json_body"),
    "interval": (_interval, "interval_s"),
    "timeout": (_timeout, "timeout"),
    "deadline": (_positive_number, "deadline_s"),
    "max_bytes": (_positive_int, "max_bytes"),
    "max_redirects": (_non_negative_int, "max_redirects"),
    "verify_tls": (_boolean, "verify_tls"),
    "success_status": (_statuses, "success_statuses"),
    "conditional_requests": (_boolean, "conditional_requests"),
    "max_retry_after": (_positive_number, "max_retry_after_s"),
    "backoff": (_backoff, "backoff"),
    "ignore_paths": (_json_paths, "ignore_paths"),
    "select_paths": (_json_paths, "select_paths"),
    "on_change": (_change_target, "on_change"),
}

_TOP_LEVEL_KEYS = {
    "redis_url",
    "key_prefix",
    "history_length",
    "watchdog_grace",
    "dispatch_lead",
    "alert_webhook",
    "alert_after_failures",
    "defaults",
    "endpoints",
}


def _substitute(
    text: str, env: Mapping[str, str], where: str, key: str, problems: _Problems
) -> str:
    """Replace ``${NAME}`` references with environment values, remembering them as secrets."""

    def replace_reference(match: re.Match[str]) -> str:
        variable = match.group(1)
        if variable not in env:
            problems.add_plain(
                f"{where}{key} refers to the environment variable {variable}, which is not set. "
                f"Set {variable} before starting bts-sync, or remove the reference."
            )
            return match.group(0)
        value = env[variable]
        register_secret(value)
        _substituted_values.add(value)
        return value

    return _VARIABLE_RE.sub(replace_reference, text)


def _check_url(url: str, where: str, problems: _Problems) -> None:
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        problems.add(
            where,
            "url",
            url,
            "is not a valid URL; write it like https://api.example.com/items.",
        )
        return
    if parts.scheme not in ("http", "https"):
        problems.add(where, "url", url, "must start with http:// or https://.")
    elif not parts.hostname:
        problems.add(
            where,
            "url",
            url,
            "has no host; write it like https://api.example.com/items.",
        )
    elif not port_ok:
        problems.add(where, "url", url, "has a port outside 1 to 65535.")


def _query_pairs(url: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(urlsplit(url).query)
    except ValueError:
        return []


def _build_endpoint(
    raw: Mapping[str, Any],
    defaults: Mapping[str, Any],
    where: str,
    env: Mapping[str, str],
    problems: _Problems,
) -> Endpoint | None:
    merged = {**defaults, **raw}
    values: dict[str, Any] = {}
    for key, item in merged.items():
        if key not in _ENDPOINT_KEYS:
            hint = _did_you_mean(key, list(_ENDPOINT_KEYS))
            problems.add(where, key, item, f"is not a known endpoint key{hint}.")
            continue
        check, field_name = _ENDPOINT_KEYS[key]
        checked = check(item, where, key, problems)
        if checked is not None:
            values[field_name] = checked

    for required in ("name", "url"):
        if required not in merged:
            problems.add_plain(
                f'{where}is missing the key {required!r}; add {required} = "...".'
            )
    if "name" not in values or "url" not in values:
        return None

    name = values["name"]
    if not _NAME_RE.fullmatch(name):
        problems.add(
            where,
            "name",
            name,
            "may use letters, digits, '.', '_' and '-' only, starting with a letter or digit.",
        )

    values["url"] = _substitute(values["url"], env, where, "url", problems)
    _check_url(values["url"], where, problems)
    url_parts = _split_url(values["url"])
    if url_parts is not None and url_parts.password:
        register_secret(url_parts.password)
    values["headers"] = {
        k: _substitute(v, env, where, f"headers.{k}", problems)
        for k, v in values.get("headers", {}).items()
    }
    values["params"] = {
        k: _substitute(v, env, where, f"params.{k}", problems)
        for k, v in values.get("params", {}).items()
    }
    for header, value in values["headers"].items():
        if is_secret_name(header):
            register_secret(value.split(" ", 1)[-1])
    # Secret-looking query values written into the file are registered too, so
    # that they are masked in urllib3's debug log of the request line.
    for name, value in [*values["params"].items(), *_query_pairs(values["url"])]:
        if is_secret_name(name):
            register_secret(value)

    return _finish_endpoint(values, where, problems)


def _finish_endpoint(
    values: dict[str, Any], where: str, problems: _Problems
) -> Endpoint | None:
    """Derive the defaults that depend on other keys and check keys against each other."""
    interval = values.get("interval_s", DEFAULT_INTERVAL_S)
    deadline = values.pop("deadline_s", None)
    if deadline is None:
        deadline = round(
            min(DEFAULT_MAX_DEADLINE_S, interval * DEFAULT_DEADLINE_SHARE), 3
        )
    elif deadline > interval:
        problems.add(
            where,
            "deadline",
            deadline,
            f"is longer than the interval ({interval:g} s); "
            f"set deadline to at most {interval:g} or raise interval.",
        )

    connect, read = values.pop("timeout", (None, None))
    default_timeout = min(DEFAULT_MAX_TIMEOUT_S, deadline)
    backoff = _finish_backoff(values.pop("backoff", {}), interval, where, problems)
    method = values.get("method", "GET")
    if values.get("json_body") is not None and method not in _METHODS_WITH_BODY:
        problems.add(
            where,
            "json",
            "…",
            f'is only sent with {", ".join(_METHODS_WITH_BODY)}; set method = "POST" or remove json.',
        )

    if problems.lines:
        return None
    return Endpoint(
        **values,
        deadline_s=deadline,
        connect_timeout_s=connect or default_timeout,
        read_timeout_s=read or default_timeout,
        backoff=backoff,
    )


def _finish_backoff(
    given: dict[str, Any] | bool, interval: float, where: str, problems: _Problems
) -> BackoffPolicy | None:
    """Fill in the back-off defaults, which depend on the interval."""
    if given is False:
        return None
    keys: dict[str, Any] = given if isinstance(given, dict) else {}
    initial = keys.get("initial", 2 * interval)
    max_s = keys.get("max", max(DEFAULT_BACKOFF_MAX_S, 10 * interval, initial))
    if max_s < initial:
        problems.add(
            where,
            "backoff.max",
            max_s,
            f"is shorter than backoff.initial ({initial:g} s); raise max or lower initial.",
        )
    return BackoffPolicy(
        after_failures=keys.get("after_failures", DEFAULT_BACKOFF_AFTER_FAILURES),
        initial_s=initial,
        multiplier=keys.get("multiplier", DEFAULT_BACKOFF_MULTIPLIER),
        max_s=max_s,
        jitter=keys.get("jitter", DEFAULT_BACKOFF_JITTER),
    )


def _resolve_config_path(
    config_path: str | os.PathLike[str] | None, env: Mapping[str, str]
) -> Path | None:
    if config_path is not None:
        return Path(config_path)
    if env.get("BTS_SYNC_CONFIG"):
        return Path(env["BTS_SYNC_CONFIG"])
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(
            f"Configuration file {str(path)!r} was not found. "
            "Check the path given with --config or BTS_SYNC_CONFIG."
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            f"Configuration path {str(path)!r} is a folder; name a TOML file."
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{path}: invalid TOML: {exc}. Fix the syntax at that line."
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"Configuration file {str(path)!r} could not be read: {exc.strerror}."
        ) from None


def _default_endpoint_table(
    env: Mapping[str, str], problems: _Problems
) -> dict[str, Any]:
    table: dict[str, Any] = {
        "name": DEFAULT_ENDPOINT_NAME,
        "url": env.get("BTS_SYNC_URL") or DEFAULT_URL,
    }
    interval_text = env.get("BTS_SYNC_INTERVAL")
    if interval_text:
        try:
            table["interval"] = float(interval_text)
        except ValueError:
            problems.add(
                "",
                "BTS_SYNC_INTERVAL",
                interval_text,
                "must be a number of seconds, such as 3.",
            )
    return table


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    redis_url: str | None = None,
) -> Settings:
    """Load, merge and validate the configuration.

    Args:
        config_path: TOML file named by ``--config``, or None to look at
            ``BTS_SYNC_CONFIG`` and then ``./bts-sync.toml``.
        env: Environment variables. Defaults to ``os.environ``.
        redis_url: Redis URL from the command line, which wins over every other source.

    Returns:
        The validated settings.

    Raises:
        ConfigError: The file is missing or invalid, or a value is wrong. The
            message lists every problem found.
    """
    env = os.environ if env is None else env
    path = _resolve_config_path(config_path, env)
    data = _read_toml(path) if path is not None else {}
    problems = _Problems(str(path) if path else "configuration")

    for key in data:
        if key not in _TOP_LEVEL_KEYS:
            hint = _did_you_mean(key, sorted(_TOP_LEVEL_KEYS))
            problems.add("", key, data[key], f"is not a known top-level key{hint}.")

    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        problems.add("", "defaults", defaults, "must be a table, written [defaults].")
        defaults = {}
    for key in ("name", "url"):
        if key in defaults:
            problems.add(
                "[defaults] ",
                key,
                defaults[key],
                "cannot be shared by all endpoints; set it in each [[endpoints]] table.",
            )

    raw_endpoints = data.get("endpoints")
    if raw_endpoints is None:
        raw_endpoints = [_default_endpoint_table(env, problems)]
    elif not isinstance(raw_endpoints, list) or not raw_endpoints:
        problems.add(
            "", "endpoints", raw_endpoints, "must be one or more [[endpoints]] tables."
        )
        raw_endpoints = []

    endpoints: list[Endpoint] = []
    for index, raw in enumerate(raw_endpoints):
        label = (
            raw.get("name", f"#{index + 1}")
            if isinstance(raw, dict)
            else f"#{index + 1}"
        )
        where = f"endpoint {label!r}: "
        if not isinstance(raw, dict):
            problems.add_plain(
                f"endpoints[{index}] must be a table, written [[endpoints]]."
            )
            continue
        endpoint = _build_endpoint(raw, defaults, where, env, problems)
        if endpoint is not None:
            endpoints.append(endpoint)

    seen: set[str] = set()
    for endpoint in endpoints:
        if endpoint.name in seen:
            problems.add_plain(
                f"endpoint name {endpoint.name!r} is used twice; give each endpoint its own name."
            )
        seen.add(endpoint.name)

    settings = _build_settings(data, env, redis_url, problems, tuple(endpoints), path)
    problems.raise_if_any()
    assert settings is not None
    return settings


def _build_settings(
    data: Mapping[str, Any],
    env: Mapping[str, str],
    redis_url: str | None,
    problems: _Problems,
    endpoints: tuple[Endpoint, ...],
    path: Path | None,
) -> Settings | None:
    url = (
        redis_url
        or env.get("BTS_SYNC_REDIS_URL")
        or env.get("REDIS_URL")
        or data.get("redis_url")
        or DEFAULT_REDIS_URL
    )
    redis_parts = _split_url(url)
    if redis_parts is None or redis_parts.scheme not in ("redis", "rediss", "unix"):
        problems.add(
            "",
            "redis_url",
            url,
            "must start with redis://, rediss:// or unix:// and be a valid URL, "
            "like redis://localhost:6379/0.",
        )
    elif redis_parts.password:
        register_secret(redis_parts.password)

    prefix = env.get("BTS_SYNC_KEY_PREFIX") or data.get("key_prefix", "bts_sync")
    if not isinstance(prefix, str) or not _NAME_RE.fullmatch(prefix):
        problems.add(
            "",
            "key_prefix",
            prefix,
            "must be letters, digits, '.', '_' or '-', like bts_sync.",
        )

    history = _positive_int(
        data.get("history_length", DEFAULT_HISTORY_LENGTH),
        "",
        "history_length",
        problems,
    )
    grace = _positive_number(
        data.get("watchdog_grace", DEFAULT_WATCHDOG_GRACE_S),
        "",
        "watchdog_grace",
        problems,
    )
    lead = _positive_number(
        data.get("dispatch_lead", DEFAULT_DISPATCH_LEAD_S),
        "",
        "dispatch_lead",
        problems,
    )
    webhook = _alert_webhook(data, env, problems)
    alert_after = _positive_int(
        data.get("alert_after_failures", DEFAULT_ALERT_AFTER_FAILURES),
        "",
        "alert_after_failures",
        problems,
    )
    if problems.lines:
        return None
    return Settings(
        endpoints=endpoints,
        redis_url=url,
        key_prefix=prefix,
        history_length=history,
        watchdog_grace_s=grace,
        dispatch_lead_s=lead,
        alert_webhook=webhook,
        alert_after_failures=alert_after,
        source=path,
    )


def _alert_webhook(
    data: Mapping[str, Any], env: Mapping[str, str], problems: _Problems
) -> str | None:
    """Read and check ``alert_webhook``; ``BTS_SYNC_ALERT_WEBHOOK`` wins over the file.

    The whole URL is registered as a secret, because webhook services such as
    Slack put the credential in the path.
    """
    url = env.get("BTS_SYNC_ALERT_WEBHOOK") or data.get("alert_webhook")
    if url is None or url == "":
        return None
    if not isinstance(url, str):
        problems.add("", "alert_webhook", url, "must be an http:// or https:// URL.")
        return None
    url = _substitute(url, env, "", "alert_webhook", problems)
    register_secret(url)
    parts = _split_url(url)
    if parts is not None and len(parts.path) > 1:
        register_secret(parts.path)
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        problems.add(
            "",
            "alert_webhook",
            mask_webhook_url(url),
            "must be an http:// or https:// URL, like https://hooks.example.com/services/T0/B0/XYZ.",
        )
        return None
    return url


def _split_url(url: Any) -> SplitResult | None:
    """Split ``url``, or return None when it is not a string or not a valid URL.

    The port is read here too, because ``urlsplit`` checks it only on access.
    """
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return None
    return parts


def mask_webhook_url(url: str) -> str:
    """Show only the scheme and host of a webhook URL; its path is often the credential."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "***"
    return f"{parts.scheme}://{host}{port}/***"


def ad_hoc_endpoint(url: str, base: Endpoint | None = None) -> Endpoint:
    """Return an endpoint for a URL given on the command line.

    Args:
        url: The URL to poll.
        base: Endpoint whose other settings are reused, or None for defaults.

    Raises:
        ConfigError: The URL is not an absolute http or https URL.
    """
    problems = _Problems("--url")
    _check_url(url, "", problems)
    problems.raise_if_any()
    if base is not None:
        return replace(base, url=url)
    deadline = round(DEFAULT_INTERVAL_S * DEFAULT_DEADLINE_SHARE, 3)
    return Endpoint(
        name="ad-hoc",
        url=url,
        connect_timeout_s=min(DEFAULT_MAX_TIMEOUT_S, deadline),
        read_timeout_s=min(DEFAULT_MAX_TIMEOUT_S, deadline),
        deadline_s=deadline,
    )
