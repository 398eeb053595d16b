"""Change events end to end: JSON paths decide them, ``on_change`` delivers them.

A real bts-sync worker polls a local server. For delivery, a second Dramatiq
worker runs ``tests/change_receiver.py``, a module that does not import
bts-sync, and stores each message it receives in Redis.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import redis
from pytest_httpserver import HTTPServer
from support import (
    TESTS,
    ProcessSet,
    ScriptedEndpoint,
    json_response,
    process_env,
    run_cli,
    wait_until,
    write_config,
)
from werkzeug import Request, Response

from bts_sync import store

pytestmark = pytest.mark.slow

PREFIX = "bts_sync"
RECEIVED_LIST = "test:received"


def serve_sequence(bodies: list[Any]) -> ScriptedEndpoint:
    """Serve ``bodies`` in order, then the last one for every later request."""

    def respond(index: int, request: Request) -> Response:
        return json_response(bodies[min(index, len(bodies) - 1)])

    return ScriptedEndpoint(respond)


def counters(client: redis.Redis, name: str) -> dict[str, Any]:
    return store.read_stats(client, PREFIX, [name])[name]


def change_entries(client: redis.Redis, name: str) -> list[dict[bytes, bytes]]:
    entries = client.xrange(store.changes_key(PREFIX))
    return [fields for _, fields in entries if fields[b"endpoint"] == name.encode()]


def test_json_paths_decide_change_events(
    tmp_path: Path,
    redis_url: str,
    httpserver: HTTPServer,
    client: redis.Redis,
    workers: ProcessSet,
) -> None:
    # Given one endpoint that ignores its timestamp and one that selects its price
    def quote(price: int, stamp: str, request_id: str) -> dict[str, Any]:
        return {
            "meta": {"generated_at": stamp, "request_id": request_id},
            "items": [{"symbol": "ACME", "price": price}],
        }

    ignoring = serve_sequence(
        [
            quote(10, "t1", "a"),
            quote(10, "t2", "a"),
            quote(10, "t3", "a"),
            quote(11, "t4", "a"),
        ]
    )
    selecting = serve_sequence(
        [
            quote(10, "t1", "a"),
            quote(10, "t2", "b"),
            quote(10, "t3", "c"),
            quote(12, "t4", "d"),
        ]
    )
    httpserver.expect_request("/ignoring").respond_with_handler(ignoring)
    httpserver.expect_request("/selecting").respond_with_handler(selecting)
    config = write_config(
        tmp_path / "bts-sync.toml",
        [
            {
                "name": "ignoring",
                "url": httpserver.url_for("/ignoring"),
                "interval": 0.5,
                "ignore_paths": ["$.meta.generated_at"],
            },
            {
                "name": "selecting",
                "url": httpserver.url_for("/selecting"),
                "interval": 0.5,
                "select_paths": ["items[*].price"],
            },
        ],
        dispatch_lead=0.3,
    )

    # When both are polled past the end of their sequences
    workers.start_worker(process_env(config, redis_url), ready_timeout_s=None)
    assert run_cli(config, redis_url, "start").returncode == 0
    for name in ("ignoring", "selecting"):
        wait_until(
            lambda name=name: counters(client, name)["successes"] >= 5,
            20,
            f"five polls of {name}",
        )

    # Then each emitted a change for its first body and for the price change only
    assert counters(client, "ignoring")["changes"] == 2
    assert counters(client, "selecting")["changes"] == 2
    assert len(change_entries(client, "ignoring")) == 2
    assert len(change_entries(client, "selecting")) == 2
    # And the latest body is the newest one, ignored fields included
    latest = store.read_latest(client, PREFIX, "ignoring")
    assert json.loads(latest["body"])["meta"]["generated_at"] == "t4"


def test_on_change_actor_receives_each_change_once(
    tmp_path: Path,
    redis_url: str,
    httpserver: HTTPServer,
    client: redis.Redis,
    workers: ProcessSet,
) -> None:
    # Given an endpoint whose body changes twice, with repeats in between
    bodies = [{"v": 1}, {"v": 1}, {"v": 2}, {"v": 2}, {"v": 2}, {"v": 3}]
    server = serve_sequence(bodies)
    httpserver.expect_request("/quotes").respond_with_handler(server)
    config = write_config(
        tmp_path / "bts-sync.toml",
        [
            {
                "name": "quotes",
                "url": httpserver.url_for("/quotes"),
                "interval": 0.5,
                "on_change": {"actor": "record_change", "queue": "app"},
            }
        ],
        dispatch_lead=0.3,
    )
    # And an application worker with the receiving actor
    receiver_env = {
        **os.environ,
        "RECEIVER_REDIS_URL": redis_url,
        "RECEIVER_NAMESPACE": f"{PREFIX}:dramatiq",
        "RECEIVER_QUEUE": "app",
        "RECEIVER_LIST": RECEIVED_LIST,
        "dramatiq_worker_timeout": "100",
    }
    workers.start_worker(
        receiver_env,
        module="change_receiver",
        extra_args=["--path", str(TESTS)],
        name="receiver",
        ready_timeout_s=None,
    )

    # When the endpoint is polled two polls past the end of the sequence
    workers.start_worker(process_env(config, redis_url), ready_timeout_s=None)
    assert run_cli(config, redis_url, "start").returncode == 0
    wait_until(
        lambda: counters(client, "quotes")["successes"] >= len(bodies) + 2,
        20,
        "the whole sequence to be polled",
    )
    wait_until(lambda: client.llen(RECEIVED_LIST) >= 3, 10, "three received changes")
    wait_until(
        lambda: counters(client, "quotes")["successes"] >= len(bodies) + 4,
        10,
        "two more polls of the unchanged body",
    )

    # Then the actor received exactly one message per change, in order, with the body
    received = [json.loads(item) for item in client.lrange(RECEIVED_LIST, 0, -1)]
    assert [change["body"] for change in received] == [{"v": 1}, {"v": 2}, {"v": 3}]
    # And each message names the endpoint and status, and links to the change stream
    stream_ids = [
        entry_id.decode() for entry_id, _ in client.xrange(store.changes_key(PREFIX))
    ]
    assert [change["change_id"] for change in received] == stream_ids
    assert {change["endpoint"] for change in received} == {"quotes"}
    assert {change["status"] for change in received} == {200}
    assert received[0]["previous_hash"] is None
    assert received[1]["previous_hash"] == received[0]["hash"]
    assert received[2]["previous_hash"] == received[1]["hash"]
