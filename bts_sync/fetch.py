"""One HTTP request of an endpoint, with urllib3, returned as a ``FetchResult``.

``fetch`` never raises for an endpoint failure: timeouts, refused connections,
TLS errors, unexpected statuses, invalid JSON, bodies over the size cap and
redirect loops all come back as a result with an error kind and a message.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlencode

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    DecodeError,
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
from bts_sync.redact import mask_headers, mask_text, mask_url

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
        is_json: Whether ``body`` holds decoded JSON.
        raw: Body bytes as received after decompression; empty on failure.
        etag: Value of the ``ETag`` response header, or None.
        last_modified: Value of the ``Last-Modified`` response header, or None.
        error_kind: One of ``ERROR_KINDS``, or None on success.
        error: Human-readable error message with secrets masked, or None.
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

    @property
    def ok(self) -> bool:
        """Whether the poll succeeded."""
        return self.error_kind is None

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-compatible data, without the raw bytes."""
        data = asdict(self)
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
    masked_url = mask_url(endpoint.url)
    base = {
        "endpoint": endpoint.name,
        "method": endpoint.method,
        "url": masked_url,
        "started_at": started_at,
    }

    response: urllib3.BaseHTTPResponse | None = None
    try:
        response = _send(endpoint, extra_headers)
        raw = _read_body(response, endpoint, deadline)
        result = _build_result(endpoint, response, raw, base, started)
    except _FetchFailure as failure:
        result = _failure(base, started, failure.kind, failure.message, response)
    except Exception as exc:
        kind, message = _classify(exc, endpoint)
        result = _failure(base, started, kind, message, response)
    finally:
        if response is not None:
            response.release_conn()

    _log(result)
    return result


def _send(
    endpoint: Endpoint, extra_headers: Mapping[str, str] | None
) -> urllib3.BaseHTTPResponse:
    headers = {
        "User-Agent": _USER_AGENT,
        "Accept": "application/json",
        "Accept-Encoding": "gzip, deflate",
    }
    headers.update(endpoint.headers)
    if extra_headers:
        headers.update(extra_headers)

    body = None
    if endpoint.json_body is not None:
        body = json.dumps(endpoint.json_body).encode()
        headers.setdefault("Content-Type", "application/json")

    url = endpoint.url
    if endpoint.params:
        url = url + ("&" if "?" in url else "?") + urlencode(dict(endpoint.params))

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
            raise _FetchFailure(
                "timeout",
                f"Response did not finish within the deadline of {endpoint.deadline_s:g} s.",
            )
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


def _build_result(
    endpoint: Endpoint,
    response: urllib3.BaseHTTPResponse,
    raw: bytes,
    base: dict[str, Any],
    started: float,
) -> FetchResult:
    media_type, charset = _media_type(response.headers)
    text = _decode_text(raw, charset)
    body: Any = text
    is_json = False
    error_kind: str | None = None
    error: str | None = None

    if raw and _is_json_type(media_type):
        try:
            body = json.loads(text)
            is_json = True
        except ValueError as exc:
            error_kind, error = (
                "invalid_json",
                f"Body is declared as {media_type} but is not valid JSON: {exc}.",
            )
    elif raw and text.lstrip()[:1] in ("{", "["):
        try:
            body = json.loads(text)
            is_json = True
        except ValueError:
            body = text

    if error_kind is None and response.status not in endpoint.success_statuses:
        error_kind, error = (
            "http_status",
            f"Unexpected status {response.status} {response.reason or ''}".rstrip()
            + ".",
        )

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
    )


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
    # urllib3 2, so they are told apart first.
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

    logger.exception("Fetch of endpoint %r failed in bts-sync itself.", endpoint.name)
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
