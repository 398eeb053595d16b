"""One HTTP request of an endpoint, with urllib3, returned as a ``FetchResult``.

``fetch`` never raises for an endpoint failure: timeouts, refused connections,
TLS errors, unexpected statuses, invalid JSON, bodies over the size cap and
redirect loops all come back as a result with an error kind and a message.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    DecodeError,
    InvalidHeader,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
    ResponseError,
    SSLError,
    TimeoutError,
)

from bts_sync import __version__
from bts_sync.config import Endpoint
from bts_sync.launcher import DEFAULT_POLL_THREADS
from bts_sync.redact import is_secret_name, mask_headers, mask_text, mask_url

logger = logging.getLogger(__name__)

#: Error kinds that a result can carry.
ERROR_KINDS = (
    "timeout",
    "connection",
    "tls",
    "http_status",
    "too_large",
    "invalid_json",
    "redirects",
    "rate_limited",
    "internal",
)

#: Statuses whose ``Retry-After`` header is read: 429 Too Many Requests and
#: 503 Service Unavailable.
RETRY_AFTER_STATUSES = frozenset({429, 503})

#: Request headers that make a request conditional.
_CONDITIONAL_HEADERS = frozenset({"if-none-match", "if-modified-since"})

#: Bytes asked for in one read of the body.
_CHUNK_BYTES = 64 * 1024

_USER_AGENT = f"bts-sync/{__version__}"

_pools: dict[bool, urllib3.PoolManager] = {}
_pools_lock = threading.Lock()


@dataclass(frozen=True)
class FetchResult:
    """What one request of an endpoint produced.

    Attributes:
        endpoint: Name of the endpoint.
        method: HTTP method sent.
        url: Requested URL with secrets masked.
        started_at: Unix time, in seconds, at which the request started.
        elapsed_ms: Milliseconds from the start of the request to the end of the body.
        status: HTTP status code, or None when no response arrived.
        reason: HTTP reason phrase, or an empty string.
        size: Body size in bytes after decompression.
        headers: Response headers with secret values masked.
        content_type: Media type of the body, without parameters.
        body: Decoded JSON value, or the text when the body is not JSON.
        is_json: Whether ``body`` contains decoded JSON.
        raw: Body bytes as received after decompression; empty on failure.
        etag: Value of the ``ETag`` response header, or None.
        last_modified: Value of the ``Last-Modified`` response header, or None.
        error_kind: One of ``ERROR_KINDS``, or None on success.
        error: Human-readable error message with secrets masked, or None.
        not_modified: Whether the server answered a conditional request with
            304 Not Modified, which is a success without a body.
        retry_after_s: Seconds that a 429 or 503 response asked the client to
            wait (its ``Retry-After`` header), or None.
    """

    endpoint: str
    method: str
    url: str
    started_at: float
    elapsed_ms: float
    status: int | None = None
    reason: str = ""
    size: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = ""
    body: Any = None
    is_json: bool = False
    raw: bytes = b""
    etag: str | None = None
    last_modified: str | None = None
    error_kind: str | None = None
    error: str | None = None
    not_modified: bool = False
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        """Whether the poll succeeded."""
        return self.error_kind is None

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-compatible data, without the raw bytes."""
        # A shallow copy: asdict would copy the body recursively, which fails
        # on deeply nested JSON.
        data = {item.name: getattr(self, item.name) for item in fields(self)}
        del data["raw"]
        data["headers"] = dict(self.headers)
        data["ok"] = self.ok
        return data


class _FetchFailure(Exception):
    """Internal signal that ends a fetch with an error kind and a message."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class _DeadlineWatcher:
    """One thread per process that shuts down sockets whose fetch deadline passed.

    A timer thread per request would cost a thread start for every poll, so one
    thread with a heap of deadlines serves every fetch of the process.
    Cancelled entries are marked inactive and dropped when they reach the top.
    """

    def __init__(self) -> None:
        self._heap: list[list[Any]] = []
        self._order = itertools.count()
        self._condition = threading.Condition()
        self._pid: int | None = None

    def add(
        self, deadline: float, guard: _DeadlineGuard, sock: socket.socket
    ) -> list[Any]:
        """Watch ``sock`` until ``deadline`` (monotonic); return the entry to cancel."""
        entry = [deadline, next(self._order), guard, sock, True]
        with self._condition:
            if self._pid != os.getpid():
                # First use, or first use after a fork: the thread is not running here.
                self._heap = []
                self._pid = os.getpid()
                threading.Thread(
                    target=self._run, name="bts-sync-deadlines", daemon=True
                ).start()
            heapq.heappush(self._heap, entry)
            self._condition.notify()
        return entry

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._heap:
                    self._condition.wait()
                entry = self._heap[0]
                if not entry[4]:
                    heapq.heappop(self._heap)
                    continue
                delay = entry[0] - time.monotonic()
                if delay > 0:
                    self._condition.wait(delay)
                    continue
                heapq.heappop(self._heap)
            entry[2].expire(entry[3])


_watcher = _DeadlineWatcher()


class _DeadlineGuard:
    """Shuts the socket of a request down when the request's total deadline passes.

    Socket timeouts bound each read, not their sum, so a server that sends its
    status line, its headers or its body one byte at a time would otherwise
    hold a request far past the deadline. Shutting the socket down from the
    watcher thread makes the blocked read return at once.
    """

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False
        self._entry: list[Any] | None = None

    def watch(self, sock: socket.socket | None) -> None:
        """Watch ``sock`` until the deadline, replacing the socket watched so far."""
        self.cancel()
        if sock is not None:
            self._entry = _watcher.add(self.deadline, self, sock)

    def cancel(self) -> None:
        """Stop watching, if the deadline has not passed yet."""
        if self._entry is not None:
            self._entry[4] = False
            self._entry = None

    def expire(self, sock: socket.socket) -> None:
        """Mark the fetch as expired and shut its socket down."""
        self.expired = True
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


# The guard of the fetch running on this thread, for the connections below.
_current = threading.local()


def _watch_socket(sock: socket.socket | None) -> None:
    guard: _DeadlineGuard | None = getattr(_current, "guard", None)
    if guard is not None:
        guard.watch(sock)


class _HTTPConnection(urllib3.connection.HTTPConnection):
    """HTTP connection whose socket is shut down at the fetch's deadline."""

    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
        _watch_socket(self.sock)
        return super().getresponse()


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
    """HTTPS connection whose socket is shut down at the fetch's deadline."""

    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
        _watch_socket(self.sock)
        return super().getresponse()


class _HTTPConnectionPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


def get_pool(verify_tls: bool) -> urllib3.PoolManager:
    """Return the process-wide connection pool for the given TLS verification.

    Pools are shared by every fetch in the process, so keep-alive connections
    are reused from one poll to the next.
    """
    with _pools_lock:
        pool = _pools.get(verify_tls)
        if pool is None:
            # One kept-alive connection per launcher thread and host: with
            # fewer, polls of endpoints on one host open and close a new
            # connection each time the pool is full.
            pool = urllib3.PoolManager(
                num_pools=256,
                maxsize=DEFAULT_POLL_THREADS,
                cert_reqs="CERT_REQUIRED" if verify_tls else "CERT_NONE",
            )
            pool.pool_classes_by_scheme = {
                "http": _HTTPConnectionPool,
                "https": _HTTPSConnectionPool,
            }
            _pools[verify_tls] = pool
        return pool


def fetch(
    endpoint: Endpoint, extra_headers: Mapping[str, str] | None = None
) -> FetchResult:
    """Send one request of ``endpoint`` and read, decode and check the response.

    Args:
        endpoint: The endpoint to request.
        extra_headers: Headers added for this request only, such as
            ``If-None-Match``.

    Returns:
        The result. It carries an error kind instead of raising when the
        endpoint fails.
    """
    started_at = time.time()
    started = time.monotonic()
    deadline = started + endpoint.deadline_s
    masked_url = mask_url(_request_url(endpoint))
    base = {
        "endpoint": endpoint.name,
        "method": endpoint.method,
        "url": masked_url,
        "started_at": started_at,
    }

    response: urllib3.BaseHTTPResponse | None = None
    body_read = False
    guard = _DeadlineGuard(deadline)
    _current.guard = guard
    try:
        response = _send(endpoint, extra_headers)
        raw = _read_body(response, endpoint, deadline)
        if guard.expired:
            # The shut-down socket may have ended the body early without an error.
            raise _FetchFailure("timeout", _deadline_message(endpoint))
        body_read = True
        conditional = any(
            name.lower() in _CONDITIONAL_HEADERS for name in (extra_headers or {})
        )
        result = _build_result(endpoint, response, raw, base, started, conditional)
    except _FetchFailure as failure:
        result = _failure(base, started, failure.kind, failure.message, response)
    except Exception as exc:
        if guard.expired:
            kind, message = "timeout", _deadline_message(endpoint)
        else:
            kind, message = _classify(exc, endpoint)
        result = _failure(base, started, kind, message, response)
    finally:
        guard.cancel()
        _current.guard = None
        if response is not None:
            # The rest of an unread response may still arrive on the connection.
            # Back in the pool, the next request would read it as its own.
            if not body_read:
                response.close()
            response.release_conn()

    _log(result)
    return result


def _request_url(endpoint: Endpoint) -> str:
    """Return the endpoint's URL with its configured query parameters added."""
    if not endpoint.params:
        return endpoint.url
    separator = "&" if "?" in endpoint.url else "?"
    return endpoint.url + separator + urlencode(dict(endpoint.params))


def _split_credentials(url: str) -> tuple[str, str | None]:
    """Remove the ``user:password@`` part of ``url`` and return it for Basic auth.

    urllib3 ignores credentials in a URL and would also log them. They are sent
    as an ``Authorization`` header instead, which is dropped on a redirect to
    another host.
    """
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    return urlunsplit(parts._replace(netloc=host)), credentials


def _send(
    endpoint: Endpoint, extra_headers: Mapping[str, str] | None
) -> urllib3.BaseHTTPResponse:
    headers = {
        "User-Agent": _USER_AGENT,
        "Accept": "application/json",
        "Accept-Encoding": "gzip, deflate",
    }
    url, credentials = _split_credentials(_request_url(endpoint))
    if credentials is not None:
        headers.update(urllib3.make_headers(basic_auth=credentials))
    headers.update(endpoint.headers)
    if extra_headers:
        headers.update(extra_headers)

    body = None
    if endpoint.json_body is not None:
        body = json.dumps(endpoint.json_body).encode()
        headers.setdefault("Content-Type", "application/json")

    timeout = urllib3.Timeout(
        connect=endpoint.connect_timeout_s,
        read=min(endpoint.read_timeout_s, endpoint.deadline_s),
        total=endpoint.deadline_s,
    )
    retries = urllib3.Retry(
        total=None,
        connect=0,
        read=0,
        status=0,
        other=0,
        redirect=endpoint.max_redirects,
        raise_on_redirect=True,
        raise_on_status=False,
        # urllib3 drops only Authorization, Cookie and Proxy-Authorization on a
        # redirect to another host; every other secret header goes too.
        remove_headers_on_redirect=urllib3.Retry.DEFAULT_REMOVE_HEADERS_ON_REDIRECT
        | {name for name in headers if is_secret_name(name)},
    )
    return get_pool(endpoint.verify_tls).request(
        endpoint.method,
        url,
        body=body,
        headers=headers,
        timeout=timeout,
        retries=retries,
        redirect=endpoint.max_redirects > 0,
        preload_content=False,
        decode_content=True,
    )


def _read_body(
    response: urllib3.BaseHTTPResponse, endpoint: Endpoint, deadline: float
) -> bytes:
    """Read the body in chunks, enforcing the size cap and the total deadline.

    ``read1`` returns after one read from the socket, so a server that sends a
    byte at a time is stopped at the deadline instead of when it finishes.
    """
    declared = response.headers.get("Content-Length")
    if (
        declared
        and declared.isdigit()
        and int(declared) > endpoint.max_bytes
        and "gzip" not in response.headers.get("Content-Encoding", "")
    ):
        raise _FetchFailure(
            "too_large",
            f"Body of {int(declared)} bytes is over the cap of {endpoint.max_bytes} bytes (max_bytes).",
        )

    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise _FetchFailure("timeout", _deadline_message(endpoint))
        chunk = response.read1(_CHUNK_BYTES)
        if not chunk:
            break
        size += len(chunk)
        if size > endpoint.max_bytes:
            raise _FetchFailure(
                "too_large",
                f"Body is over the cap of {endpoint.max_bytes} bytes (max_bytes).",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _deadline_message(endpoint: Endpoint) -> str:
    return f"Response did not finish within the deadline of {endpoint.deadline_s:g} s."


def _media_type(headers: Mapping[str, str]) -> tuple[str, str]:
    value = headers.get("Content-Type", "")
    media_type, _, parameters = value.partition(";")
    charset = "utf-8"
    for parameter in parameters.split(";"):
        name, _, param_value = parameter.strip().partition("=")
        if name.lower() == "charset" and param_value:
            charset = param_value.strip('"')
    return media_type.strip().lower(), charset


def _is_json_type(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


def _decode_text(raw: bytes, charset: str) -> str:
    try:
        return raw.decode(charset, errors="replace")
    except LookupError:
        return raw.decode("utf-8", errors="replace")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def decode_json(text: str) -> Any:
    """Decode a JSON document as RFC 8259 defines it.

    Raises:
        ValueError: The text is not JSON, contains ``NaN`` or ``Infinity``, or
            nests too deeply for the decoder.
    """
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("it nests too deeply to decode") from None


def dump_json(value: Any, indent: int | None = 2) -> str:
    """Encode ``value`` as JSON, indented when its nesting allows.

    The indenting encoder is written in Python and recurses once per level, so
    a document a few hundred levels deep is written compact instead.
    """
    try:
        return json.dumps(value, indent=indent, ensure_ascii=False)
    except RecursionError:
        return json.dumps(value, ensure_ascii=False)


def _build_result(
    endpoint: Endpoint,
    response: urllib3.BaseHTTPResponse,
    raw: bytes,
    base: dict[str, Any],
    started: float,
    conditional: bool = False,
) -> FetchResult:
    media_type, charset = _media_type(response.headers)
    text = _decode_text(raw, charset)
    body: Any = text
    is_json = False
    error_kind: str | None = None
    error: str | None = None

    if raw and _is_json_type(media_type):
        try:
            body = decode_json(text)
            is_json = True
        except ValueError as exc:
            error_kind, error = (
                "invalid_json",
                f"Body is declared as {media_type} but is not valid JSON: {exc}.",
            )
    elif raw and text.lstrip()[:1] in ("{", "["):
        try:
            body = decode_json(text)
            is_json = True
        except ValueError:
            body = text

    if error_kind is None and response.status not in endpoint.success_statuses:
        error_kind, error = (
            "http_status",
            f"Unexpected status {response.status} {response.reason or ''}".rstrip()
            + ".",
        )

    # A 304 to a conditional request is always "not modified", because it has
    # no body to store. A 429 is distinguished from other unexpected statuses
    # whatever its body, unless success_status lists it.
    not_modified = response.status == 304 and conditional
    retry_after_s = _retry_after(response)
    if not_modified:
        error_kind, error = None, None
    elif response.status == 429 and 429 not in endpoint.success_statuses:
        error_kind, error = "rate_limited", "Rate limited (429 Too Many Requests)."
    if retry_after_s is not None and error is not None:
        error = f"{error} The server requested a wait of {retry_after_s:g} s."

    return FetchResult(
        **base,
        elapsed_ms=(time.monotonic() - started) * 1000,
        status=response.status,
        reason=response.reason or "",
        size=len(raw),
        headers=mask_headers(dict(response.headers)),
        content_type=media_type,
        body=body if raw else None,
        is_json=is_json,
        raw=raw,
        etag=response.headers.get("ETag"),
        last_modified=response.headers.get("Last-Modified"),
        error_kind=error_kind,
        error=mask_text(error) if error else None,
        not_modified=not_modified,
        retry_after_s=retry_after_s,
    )


def _retry_after(response: urllib3.BaseHTTPResponse) -> float | None:
    """Return the wait in seconds that a 429 or 503 response's ``Retry-After`` requests.

    urllib3 parses both forms, seconds and an HTTP date; a date in the past
    gives 0. urllib3 2.8 caps the result at ``Retry.DEFAULT_RETRY_AFTER_MAX``
    (6 hours). An invalid value is logged and ignored.
    """
    value = response.headers.get("Retry-After")
    if response.status not in RETRY_AFTER_STATUSES or value is None:
        return None
    try:
        return float(urllib3.Retry(total=None).parse_retry_after(value))
    except InvalidHeader:
        logger.info("Ignored an invalid Retry-After header: %r.", mask_text(value))
        return None


def _failure(
    base: dict[str, Any],
    started: float,
    kind: str,
    message: str,
    response: urllib3.BaseHTTPResponse | None,
) -> FetchResult:
    return FetchResult(
        **base,
        elapsed_ms=(time.monotonic() - started) * 1000,
        status=response.status if response is not None else None,
        reason=(response.reason or "") if response is not None else "",
        headers=mask_headers(dict(response.headers)) if response is not None else {},
        error_kind=kind,
        error=mask_text(message),
    )


def _classify(exc: Exception, endpoint: Endpoint) -> tuple[str, str]:
    """Map an exception raised while requesting to an error kind and a message."""
    reason: BaseException = exc
    if isinstance(exc, MaxRetryError):
        if isinstance(exc.reason, ResponseError) and "redirect" in str(exc.reason):
            return (
                "redirects",
                f"More than {endpoint.max_redirects} redirects (max_redirects); the server may be in a redirect loop.",
            )
        reason = exc.reason or exc

    # NameResolutionError and NewConnectionError subclass ConnectTimeoutError in
    # urllib3 2, so they are checked first.
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return "connection", f"Host name could not be resolved: {_short(reason)}."
    if isinstance(reason, NewConnectionError) and "timed out" not in str(reason):
        return "connection", f"Connection failed: {_short(reason)}."
    if isinstance(reason, ConnectTimeoutError):
        return (
            "timeout",
            f"Connection timed out after {endpoint.connect_timeout_s:g} s.",
        )
    if isinstance(reason, ReadTimeoutError | TimeoutError):
        return (
            "timeout",
            f"Read timed out ({endpoint.read_timeout_s:g} s per read, {endpoint.deadline_s:g} s in all).",
        )
    if isinstance(reason, SSLError):
        return "tls", f"TLS failed: {_short(reason)}."
    if isinstance(
        reason, NewConnectionError | ProxyError | ProtocolError | ConnectionError
    ):
        return "connection", f"Connection failed: {_short(reason)}."
    if isinstance(reason, DecodeError):
        return "connection", f"Body could not be decompressed: {_short(reason)}."
    if isinstance(reason, urllib3.exceptions.LocationParseError | ValueError):
        return "connection", f"Request could not be sent: {_short(reason)}."

    # The result carries the error to the caller; the traceback goes to DEBUG
    # so that the command line never prints it.
    logger.debug(
        "Fetch of endpoint %r failed in bts-sync itself.", endpoint.name, exc_info=True
    )
    return (
        "internal",
        f"Internal error in bts-sync: {type(exc).__name__}: {_short(exc)}.",
    )


def _short(exc: BaseException) -> str:
    text = str(exc)
    # urllib3 prefixes the reason with the connection, as "HTTPConnection(host=…): Failed to …".
    for separator in (">: ", "): "):
        if separator in text:
            text = text.split(separator, 1)[1]
            break
    return mask_text(text.rstrip("."))


def _log(result: FetchResult) -> None:
    if result.ok:
        logger.debug(
            "Fetched endpoint %r: %s %s %s in %.0f ms, %d bytes.",
            result.endpoint,
            result.method,
            result.url,
            result.status,
            result.elapsed_ms,
            result.size,
        )
    else:
        logger.debug(
            "Fetch of endpoint %r failed (%s): %s %s: %s",
            result.endpoint,
            result.error_kind,
            result.method,
            result.url,
            result.error,
        )
