"""``bts-sync once`` against the DummyJSON stand-in, and the stand-in's own behaviour."""

from __future__ import annotations

import http.client
import json
from typing import Any

import pytest
from click.testing import CliRunner, Result
from dummyjson_server import (
    DEFAULT_LIMIT,
    DEFAULT_RATE_LIMIT,
    DummyJsonServer,
    dummyjson_dir,
    load_datasets,
)

from bts_sync.cli import cli
from bts_sync.config import Endpoint
from bts_sync.fetch import fetch

#: Records in each data set of the shared fixtures.
RECORD_COUNTS = {"products": 194, "quotes": 1454, "todos": 254}


def run_once(*args: str) -> Result:
    """Run ``bts-sync once ARGS`` in-process."""
    return CliRunner().invoke(cli, ["once", *args], catch_exceptions=False)


def once_json(url: str) -> tuple[int, dict[str, Any]]:
    """Run ``bts-sync once --json --url URL``; return the exit code and the document."""
    result = run_once("--json", "--url", url)
    return result.exit_code, json.loads(result.stdout)


def get_from(source_address: str, url_path: str, port: int) -> int:
    """Send GET ``url_path`` from ``source_address`` and return the status."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=5, source_address=(source_address, 0)
    )
    try:
        connection.request("GET", url_path)
        return connection.getresponse().status
    finally:
        connection.close()


def test_fixtures_are_found_beside_repository() -> None:
    datasets = load_datasets(dummyjson_dir())

    assert {name: len(records) for name, records in datasets.items()} == RECORD_COUNTS


def test_test_route_answers_ok(dummyjson: DummyJsonServer) -> None:
    exit_code, document = once_json(dummyjson.url("/test"))

    assert exit_code == 0
    assert document["body"] == {"status": "ok", "method": "GET"}


def test_default_endpoint_polls_stand_in(dummyjson: DummyJsonServer) -> None:
    result = CliRunner().invoke(
        cli, ["once"], env={"BTS_SYNC_URL": dummyjson.url("/test")}
    )

    assert result.exit_code == 0
    assert '"status": "ok"' in result.stdout
    assert dummyjson.requests == ["/test"]


@pytest.mark.parametrize("name", sorted(RECORD_COUNTS))
def test_list_is_wrapped_with_default_page(
    dummyjson: DummyJsonServer, name: str
) -> None:
    exit_code, document = once_json(dummyjson.url(f"/{name}"))

    body = document["body"]
    assert exit_code == 0
    assert len(body[name]) == DEFAULT_LIMIT
    assert body["total"] == RECORD_COUNTS[name]
    assert body["skip"] == 0
    assert body["limit"] == DEFAULT_LIMIT


def test_skip_and_limit_page_the_list(dummyjson: DummyJsonServer) -> None:
    exit_code, document = once_json(dummyjson.url("/products?skip=10&limit=5"))

    body = document["body"]
    assert exit_code == 0
    assert [product["id"] for product in body["products"]] == [11, 12, 13, 14, 15]
    assert body["skip"] == 10
    assert body["limit"] == 5


def test_last_page_is_short(dummyjson: DummyJsonServer) -> None:
    _, document = once_json(dummyjson.url("/todos?skip=250&limit=30"))

    assert len(document["body"]["todos"]) == 4
    assert document["body"]["limit"] == 4


def test_zero_limit_returns_every_record(dummyjson: DummyJsonServer) -> None:
    _, document = once_json(dummyjson.url("/quotes?limit=0"))

    assert len(document["body"]["quotes"]) == RECORD_COUNTS["quotes"]


def test_large_list_prints_in_full(dummyjson: DummyJsonServer) -> None:
    result = run_once("--url", dummyjson.url("/products?limit=0"))

    assert result.exit_code == 0
    assert '"title": "Essence Mascara Lash Princess"' in result.stdout
    assert result.stdout.count('"sku": ') == RECORD_COUNTS["products"]


def test_record_is_returned_by_id(dummyjson: DummyJsonServer) -> None:
    _, document = once_json(dummyjson.url("/todos/1"))

    assert document["body"] == {
        "id": 1,
        "todo": "Do something nice for someone you care about",
        "completed": False,
        "userId": 152,
    }


def test_unknown_record_fails_with_message(dummyjson: DummyJsonServer) -> None:
    result = run_once("--url", dummyjson.url("/products/999"))

    assert result.exit_code == 1
    assert "404 Not Found" in result.stdout
    assert "\nerror http_status: Unexpected status 404 Not Found.\n" in result.stdout
    assert '"message": "Product with id \'999\' not found"' in result.stdout


def test_bad_paging_is_rejected(dummyjson: DummyJsonServer) -> None:
    exit_code, document = once_json(dummyjson.url("/products?limit=ten"))

    assert exit_code == 1
    assert document["status"] == 400


def test_rate_limit_answers_429_with_message(dummyjson: DummyJsonServer) -> None:
    # Given a client that used up its requests for the window
    endpoint = Endpoint(name="quota", url=dummyjson.url("/test"))
    statuses = [fetch(endpoint).status for _ in range(DEFAULT_RATE_LIMIT)]
    assert statuses == [200] * DEFAULT_RATE_LIMIT

    # When it polls once more
    exit_code, document = once_json(dummyjson.url("/test"))

    # Then the stand-in responds with 429, a JSON message and a wait time
    assert exit_code == 1
    assert document["status"] == 429
    assert document["error_kind"] == "rate_limited"
    assert document["body"]["message"].startswith("Too many requests.")
    assert 1 <= int(document["headers"]["Retry-After"]) <= 10


def test_rate_limit_counts_each_client_apart(dummyjson: DummyJsonServer) -> None:
    # Given one client address that used up its requests
    port = int(dummyjson.base_url.rsplit(":", 1)[1])
    for _ in range(DEFAULT_RATE_LIMIT):
        get_from("127.0.0.1", "/test", port)
    assert get_from("127.0.0.1", "/test", port) == 429

    # When another loopback address sends a request, then it is served
    assert get_from("127.0.0.2", "/test", port) == 200


def test_rate_limit_can_be_turned_off() -> None:
    with DummyJsonServer(rate_limit=0) as server:
        port = int(server.base_url.rsplit(":", 1)[1])
        statuses = {get_from("127.0.0.1", "/test", port) for _ in range(150)}

    assert statuses == {200}
