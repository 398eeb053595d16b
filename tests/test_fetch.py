"""fetch() against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import free_port
from pytest_httpserver import HTTPServer
from raw_http import FAST_BODY, TrickleServer, running_trickle_server
from werkzeug import Request, Response

from bts_sync.config import Endpoint
from bts_sync.fetch import fetch


def make_endpoint(url: str, **overrides: Any) -> Endpoint:
    """Return an endpoint of ``url`` with short timeouts, so failing tests end fast."""
    settings: dict[str, Any] = {
        "name": "api",
        "url": url,
        "interval_s": 3.0,
        "connect_timeout_s": 1.0,
        "read_timeout_s": 1.0,
        "deadline_s": 2.0,
    }
    settings.update(overrides)
    return Endpoint(**settings)


@pytest.fixture
def release_slow_handlers() -> Iterator[threading.Event]:
    """Return an event that slow handlers wait on; it is set when the test ends."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def trickle_server() -> Iterator[TrickleServer]:
    with running_trickle_server() as server:
        yield server


def test_json_response_is_decoded(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items").respond_with_json({"items": [1, 2, 3]})

    result = fetch(make_endpoint(httpserver.url_for("/items")))

    assert result.ok
    assert result.status == 200
    assert result.is_json
    assert result.body == {"items": [1, 2, 3]}
    assert result.content_type == "application/json"


def test_result_reports_size_and_elapsed_time(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items").respond_with_data(
        b'{"a": 1}', content_type="application/json"
    )

    result = fetch(make_endpoint(httpserver.url_for("/items")))

    assert result.size == 8
    assert result.elapsed_ms > 0


def test_request_sends_default_headers(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items").respond_with_json({})

    fetch(make_endpoint(httpserver.url_for("/items")))

    request, _ = httpserver.log[-1]
    assert request.headers["Accept"] == "application/json"
    assert request.headers["Accept-Encoding"] == "gzip, deflate"
    assert request.headers["User-Agent"].startswith("bts-sync/")


def test_configured_headers_and_params_are_sent(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items").respond_with_json({})
    endpoint = make_endpoint(
        httpserver.url_for("/items") + "?fixed=1",
        headers={"X-Team": "ops"},
        params={"page": "2"},
    )

    fetch(endpoint)

    request, _ = httpserver.log[-1]
    assert request.headers["X-Team"] == "ops"
    assert request.args.to_dict() == {"fixed": "1", "page": "2"}


def test_result_url_includes_configured_params(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items").respond_with_json({})
    endpoint = make_endpoint(httpserver.url_for("/items"), params={"page": "2"})

    result = fetch(endpoint)

    assert result.url == httpserver.url_for("/items") + "?page=2"


def test_post_sends_json_body(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/search", method="POST").respond_with_json({})
    endpoint = make_endpoint(
        httpserver.url_for("/search"), method="POST", json_body={"q": "ä"}
    )

    result = fetch(endpoint)

    request, _ = httpserver.log[-1]
    assert result.ok
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.get_data()) == {"q": "ä"}


def test_non_json_body_is_kept_as_text(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/page").respond_with_data(
        "<p>hello</p>", content_type="text/html"
    )

    result = fetch(make_endpoint(httpserver.url_for("/page")))

    assert result.ok
    assert not result.is_json
    assert result.body == "<p>hello</p>"


def test_json_without_json_content_type_is_decoded(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items").respond_with_data(
        '{"a": 1}', content_type="text/plain"
    )

    result = fetch(make_endpoint(httpserver.url_for("/items")))

    assert result.is_json
    assert result.body == {"a": 1}


def test_broken_json_body_fails_as_invalid_json(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items").respond_with_data(
        '{"a": 1', content_type="application/json"
    )

    result = fetch(make_endpoint(httpserver.url_for("/items")))

    assert result.error_kind == "invalid_json"
    assert result.error is not None
    assert "application/json" in result.error
    assert result.body == '{"a": 1'


def test_no_content_response_succeeds_without_body(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/ping").respond_with_data("", status=204)

    result = fetch(make_endpoint(httpserver.url_for("/ping")))

    assert result.ok
    assert result.status == 204
    assert result.body is None
    assert result.size == 0


@pytest.mark.parametrize(
    ("status", "reason"),
    [(404, "NOT FOUND"), (500, "INTERNAL SERVER ERROR")],
    ids=["not-found", "server-error"],
)
def test_error_status_fails_as_http_status(
    httpserver: HTTPServer, status: int, reason: str
) -> None:
    httpserver.expect_request("/items").respond_with_json(
        {"message": "nope"}, status=status
    )

    result = fetch(make_endpoint(httpserver.url_for("/items")))

    assert result.error_kind == "http_status"
    assert result.status == status
    assert result.error == f"Unexpected status {status} {reason}."
    assert result.body == {"message": "nope"}


def test_configured_success_status_is_accepted(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items").respond_with_json({}, status=404)
    endpoint = make_endpoint(
        httpserver.url_for("/items"), success_statuses=frozenset({200, 404})
    )

    result = fetch(endpoint)

    assert result.ok


def test_redirect_is_followed(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/old").respond_with_data(
        "", status=302, headers={"Location": "/new"}
    )
    httpserver.expect_request("/new").respond_with_json({"moved": True})

    result = fetch(make_endpoint(httpserver.url_for("/old")))

    assert result.ok
    assert result.body == {"moved": True}
    assert [request.path for request, _ in httpserver.log] == ["/old", "/new"]


def test_redirect_loop_fails_as_redirects(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/loop").respond_with_data(
        "", status=302, headers={"Location": "/loop"}
    )

    result = fetch(make_endpoint(httpserver.url_for("/loop"), max_redirects=3))

    assert result.error_kind == "redirects"
    assert len(httpserver.log) == 4


def test_zero_max_redirects_returns_redirect_itself(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/old").respond_with_data(
        "", status=302, headers={"Location": "/new"}
    )

    result = fetch(make_endpoint(httpserver.url_for("/old"), max_redirects=0))

    assert result.status == 302
    assert result.error_kind == "http_status"


def test_slow_response_fails_as_timeout(
    httpserver: HTTPServer, release_slow_handlers: threading.Event
) -> None:
    def respond_late(request: Request) -> Response:
        release_slow_handlers.wait(10)
        return Response("{}", content_type="application/json")

    httpserver.expect_request("/slow").respond_with_handler(respond_late)
    endpoint = make_endpoint(
        httpserver.url_for("/slow"), read_timeout_s=0.3, deadline_s=2.0
    )

    started = time.monotonic()
    result = fetch(endpoint)
    elapsed = time.monotonic() - started

    assert result.error_kind == "timeout"
    assert result.status is None
    assert elapsed < 1.5


def test_trickled_body_is_stopped_at_deadline(trickle_server: TrickleServer) -> None:
    endpoint = make_endpoint(trickle_server.url("/trickle-body"), deadline_s=0.5)

    started = time.monotonic()
    result = fetch(endpoint)
    elapsed = time.monotonic() - started

    assert result.error_kind == "timeout"
    assert result.error == "Response did not finish within the deadline of 0.5 s."
    assert elapsed < 1.5


def test_trickled_headers_are_stopped_at_deadline(
    trickle_server: TrickleServer,
) -> None:
    endpoint = make_endpoint(trickle_server.url("/trickle-headers"), deadline_s=0.5)

    started = time.monotonic()
    result = fetch(endpoint)
    elapsed = time.monotonic() - started

    assert result.error_kind == "timeout"
    assert result.error == "Response did not finish within the deadline of 0.5 s."
    assert elapsed < 1.5


def test_unfinished_response_does_not_reach_next_fetch(
    trickle_server: TrickleServer,
) -> None:
    # Given a fetch that gave up halfway through a trickled body
    slow = make_endpoint(trickle_server.url("/trickle-body"), deadline_s=0.3)
    assert fetch(slow).error_kind == "timeout"

    # When the next fetch goes to the same server
    result = fetch(make_endpoint(trickle_server.url("/fast")))

    # Then it reads its own response on a new connection
    assert result.ok
    assert result.body == FAST_BODY
    assert trickle_server.connections == 2


def test_body_declared_over_cap_fails_as_too_large(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/big").respond_with_data(
        b"x" * 2000, content_type="text/plain"
    )

    result = fetch(make_endpoint(httpserver.url_for("/big"), max_bytes=1000))

    assert result.error_kind == "too_large"
    assert result.error is not None
    assert "2000 bytes" in result.error


def test_streamed_body_over_cap_fails_as_too_large(httpserver: HTTPServer) -> None:
    def stream(request: Request) -> Response:
        return Response((b"x" * 500 for _ in range(10)), content_type="text/plain")

    httpserver.expect_request("/big").respond_with_handler(stream)

    result = fetch(make_endpoint(httpserver.url_for("/big"), max_bytes=1000))

    _, response = httpserver.log[-1]
    assert "Content-Length" not in response.headers
    assert result.error_kind == "too_large"


def test_body_at_cap_is_accepted(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/big").respond_with_data(
        b"x" * 1000, content_type="text/plain"
    )

    result = fetch(make_endpoint(httpserver.url_for("/big"), max_bytes=1000))

    assert result.ok
    assert result.size == 1000


def test_gzip_body_is_decompressed(httpserver: HTTPServer) -> None:
    payload = json.dumps({"items": list(range(100))}).encode()
    httpserver.expect_request("/items").respond_with_data(
        gzip.compress(payload),
        content_type="application/json",
        headers={"Content-Encoding": "gzip"},
    )

    result = fetch(make_endpoint(httpserver.url_for("/items")))

    assert result.ok
    assert result.body == {"items": list(range(100))}
    assert result.size == len(payload)


def test_deflate_body_is_decompressed(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items").respond_with_data(
        zlib.compress(b'{"deflated": true}'),
        content_type="application/json",
        headers={"Content-Encoding": "deflate"},
    )

    result = fetch(make_endpoint(httpserver.url_for("/items")))

    assert result.body == {"deflated": True}


def test_gzip_body_over_cap_after_decompression_fails(
    httpserver: HTTPServer,
) -> None:
    compressed = gzip.compress(b" " * 100_000)
    httpserver.expect_request("/bomb").respond_with_data(
        compressed, content_type="text/plain", headers={"Content-Encoding": "gzip"}
    )

    result = fetch(make_endpoint(httpserver.url_for("/bomb"), max_bytes=10_000))

    assert len(compressed) < 10_000
    assert result.error_kind == "too_large"


def test_non_ascii_json_is_decoded(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/city").respond_with_data(
        json.dumps({"name": "Zürich", "jp": "東京"}, ensure_ascii=False).encode(),
        content_type="application/json",
    )

    result = fetch(make_endpoint(httpserver.url_for("/city")))

    assert result.body == {"name": "Zürich", "jp": "東京"}


def test_text_is_decoded_with_declared_charset(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/greeting").respond_with_data(
        "Grüße".encode("latin-1"), content_type="text/plain; charset=iso-8859-1"
    )

    result = fetch(make_endpoint(httpserver.url_for("/greeting")))

    assert result.body == "Grüße"


def test_refused_connection_fails_as_connection() -> None:
    endpoint = make_endpoint(f"http://127.0.0.1:{free_port()}/items")

    result = fetch(endpoint)

    assert result.error_kind == "connection"
    assert result.status is None
    assert result.error is not None
    assert "refused" in result.error


def test_cache_validators_are_kept(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items").respond_with_json(
        {},
        headers={"ETag": '"v1"', "Last-Modified": "Wed, 21 Oct 2026 07:28:00 GMT"},
    )

    result = fetch(make_endpoint(httpserver.url_for("/items")))

    assert result.etag == '"v1"'
    assert result.last_modified == "Wed, 21 Oct 2026 07:28:00 GMT"


def test_extra_headers_are_sent(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items").respond_with_data("", status=304)

    result = fetch(
        make_endpoint(httpserver.url_for("/items"), success_statuses=frozenset({304})),
        extra_headers={"If-None-Match": '"v1"'},
    )

    request, _ = httpserver.log[-1]
    assert request.headers["If-None-Match"] == '"v1"'
    assert result.ok


def test_result_dict_is_json_serialisable(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items").respond_with_json({"a": [1]})

    data = fetch(make_endpoint(httpserver.url_for("/items"))).to_dict()

    assert json.loads(json.dumps(data))["body"] == {"a": [1]}
    assert "raw" not in data
    assert data["ok"] is True
