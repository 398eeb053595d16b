"""Fetch results for conditional requests, rate limits and Retry-After headers."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest
from pytest_httpserver import HTTPServer

from bts_sync.config import Endpoint
from bts_sync.fetch import fetch


def endpoint_for(httpserver: HTTPServer, **overrides: object) -> Endpoint:
    return Endpoint(
        name="api",
        url=httpserver.url_for("/api"),
        deadline_s=2.0,
        connect_timeout_s=1.0,
        read_timeout_s=1.0,
        **overrides,  # type: ignore[arg-type]
    )


def test_304_to_conditional_request_is_success(httpserver: HTTPServer) -> None:
    # Given a server that responds 304 to a matching If-None-Match
    httpserver.expect_request(
        "/api", headers={"If-None-Match": '"v1"'}
    ).respond_with_data("", status=304, headers={"ETag": '"v1"'})

    # When the request carries the ETag
    result = fetch(endpoint_for(httpserver), {"If-None-Match": '"v1"'})

    # Then the result is a success without a body
    assert result.ok
    assert result.not_modified
    assert result.status == 304
    assert result.raw == b""
    assert result.etag == '"v1"'


def test_listed_304_is_still_not_modified(httpserver: HTTPServer) -> None:
    # Given an endpoint that lists 304 among its success statuses
    httpserver.expect_request("/api").respond_with_data("", status=304)
    endpoint = endpoint_for(httpserver, success_statuses=frozenset({200, 304}))

    # When the server responds 304 to a conditional request
    result = fetch(endpoint, {"If-Modified-Since": "Wed, 21 Oct 2015 07:28:00 GMT"})

    # Then the result keeps the stored body instead of replacing it with nothing
    assert result.not_modified


def test_304_to_plain_request_fails(httpserver: HTTPServer) -> None:
    # Given a server that responds 304 to every request
    httpserver.expect_request("/api").respond_with_data("", status=304)

    # When the request is not conditional
    result = fetch(endpoint_for(httpserver))

    # Then the 304 is an unexpected status
    assert result.error_kind == "http_status"
    assert not result.not_modified


def test_429_is_rate_limited(httpserver: HTTPServer) -> None:
    # Given a server that rate-limits with Retry-After in seconds
    httpserver.expect_request("/api").respond_with_json(
        {"message": "too many"}, status=429, headers={"Retry-After": "7"}
    )

    # When it is polled
    result = fetch(endpoint_for(httpserver))

    # Then the result is rate-limited and carries the wait
    assert result.error_kind == "rate_limited"
    assert result.retry_after_s == 7
    assert result.error is not None
    assert "requested a wait of 7 s" in result.error


def test_429_with_invalid_json_is_rate_limited(httpserver: HTTPServer) -> None:
    # Given a server that rate-limits with a body that is not the JSON it declares
    httpserver.expect_request("/api").respond_with_data(
        "<html>slow down</html>", status=429, content_type="application/json"
    )

    # When it is polled
    result = fetch(endpoint_for(httpserver))

    # Then the status decides the error kind
    assert result.error_kind == "rate_limited"
    assert result.retry_after_s is None


def test_retry_after_http_date_is_parsed(httpserver: HTTPServer) -> None:
    # Given a 503 whose Retry-After is a date 30 s ahead
    httpserver.expect_request("/api").respond_with_data(
        "down",
        status=503,
        headers={"Retry-After": formatdate(time.time() + 30, usegmt=True)},
    )

    # When it is polled
    result = fetch(endpoint_for(httpserver))

    # Then the wait is about 30 s and the 503 is a failure
    assert result.error_kind == "http_status"
    assert result.retry_after_s == pytest.approx(30, abs=2)


def test_invalid_retry_after_is_ignored(httpserver: HTTPServer) -> None:
    # Given a 429 with a Retry-After that is neither seconds nor a date
    httpserver.expect_request("/api").respond_with_data(
        "", status=429, headers={"Retry-After": "soon"}
    )

    # When it is polled
    result = fetch(endpoint_for(httpserver))

    # Then it is rate-limited without a wait
    assert result.error_kind == "rate_limited"
    assert result.retry_after_s is None


def test_retry_after_ignored_on_other_statuses(httpserver: HTTPServer) -> None:
    # Given a 500 with Retry-After
    httpserver.expect_request("/api").respond_with_data(
        "", status=500, headers={"Retry-After": "9"}
    )

    # When it is polled
    result = fetch(endpoint_for(httpserver))

    # Then no wait is taken from it
    assert result.retry_after_s is None


def test_listed_429_stays_success(httpserver: HTTPServer) -> None:
    # Given an endpoint that lists 429 among its success statuses
    httpserver.expect_request("/api").respond_with_json({"ok": True}, status=429)

    # When it is polled
    result = fetch(endpoint_for(httpserver, success_statuses=frozenset({200, 429})))

    # Then the configuration wins
    assert result.ok
