"""Alerts and JSON logs of real worker processes."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import redis
from pytest_httpserver import HTTPServer
from support import (
    ProcessSet,
    bts_sync_command,
    process_env,
    wait_until,
    write_config,
)
from werkzeug import Request, Response

from bts_sync import store

PREFIX = "bts_sync"
WEBHOOK_PATH = "/hooks/T000/B000/webhook-secret-path"


class SwitchableEndpoint:
    """An endpoint that fails with 500 until ``recover`` is called."""

    def __init__(self) -> None:
        self.healthy = threading.Event()

    def recover(self) -> None:
        self.healthy.set()

    def __call__(self, request: Request) -> Response:
        if self.healthy.is_set():
            return Response('{"ok": true}', 200, mimetype="application/json")
        return Response('{"error": "down"}', 500, mimetype="application/json")


class WebhookRecorder:
    """Records the JSON body of every webhook request."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> Response:
        with self.lock:
            self.bodies.append(json.loads(request.get_data()))
        return Response("ok", 200)

    def events(self) -> list[str]:
        with self.lock:
            return [body["event"] for body in self.bodies]


def _stats(client: redis.Redis, field: str) -> int:
    return int(client.hget(store.stats_key(PREFIX, "flaky"), field) or 0)


def test_webhook_gets_each_change_once(
    redis_url: str, httpserver: HTTPServer, tmp_path: Path
) -> None:
    endpoint = SwitchableEndpoint()
    webhook = WebhookRecorder()
    httpserver.expect_request("/flaky").respond_with_handler(endpoint)
    httpserver.expect_request(WEBHOOK_PATH, method="POST").respond_with_handler(webhook)
    config = write_config(
        tmp_path / "bts-sync.toml",
        # Back-off stays off: this test counts polls after the alert.
        [
            {
                "name": "flaky",
                "url": httpserver.url_for("/flaky"),
                "interval": 0.2,
                "backoff": False,
            }
        ],
        alert_after_failures=3,
        alert_webhook=httpserver.url_for(WEBHOOK_PATH),
    )
    env = process_env(config, redis_url, BTS_SYNC_LOG_FORMAT="json")
    processes = ProcessSet(tmp_path)
    client = redis.Redis.from_url(redis_url)
    try:
        processes.start_worker(env, processes=2, ready_timeout_s=None)
        subprocess.run(
            bts_sync_command("start"),
            env=env,
            check=True,
            timeout=30,
            capture_output=True,
        )
        wait_until(webhook.events, 30, "the unhealthy alert arrived")
        failures_at_alert = _stats(client, "consecutive_failures")
        wait_until(
            lambda: _stats(client, "consecutive_failures") >= failures_at_alert + 10,
            30,
            "ten more polls failed after the alert",
        )
        endpoint.recover()
        wait_until(lambda: len(webhook.events()) >= 2, 30, "the recovery alert arrived")
        successes_at_recovery = _stats(client, "successes")
        wait_until(
            lambda: _stats(client, "successes") >= successes_at_recovery + 10,
            30,
            "ten more polls succeeded after the recovery",
        )
    finally:
        processes.close()
        client.close()

    assert webhook.events() == ["unhealthy", "recovered"]
    assert "flaky" in webhook.bodies[0]["text"]
    assert "3 consecutive failed polls" in webhook.bodies[0]["text"]
    assert "recovered" in webhook.bodies[1]["text"]
    log = processes.log("worker")
    assert "webhook-secret-path" not in log


def test_worker_logs_json_lines(
    redis_url: str, httpserver: HTTPServer, tmp_path: Path
) -> None:
    httpserver.expect_request("/items").respond_with_json({"items": []})
    config = write_config(
        tmp_path / "bts-sync.toml",
        [{"name": "items", "url": httpserver.url_for("/items"), "interval": 0.2}],
    )
    env = process_env(config, redis_url, BTS_SYNC_LOG_FORMAT="json")
    processes = ProcessSet(tmp_path)
    client = redis.Redis.from_url(redis_url)
    try:
        processes.start_worker(env, ready_timeout_s=None)
        subprocess.run(
            bts_sync_command("start"),
            env=env,
            check=True,
            timeout=30,
            capture_output=True,
        )
        wait_until(
            lambda: (
                int(client.hget(store.stats_key(PREFIX, "items"), "polls") or 0) >= 3
            ),
            30,
            "three polls were recorded",
        )
        wait_until(
            lambda: processes.log("worker").count('"endpoint": "items"') >= 3,
            10,
            "three poll lines were logged",
        )
    finally:
        processes.close()
        client.close()

    lines = processes.log("worker").splitlines()
    # Dramatiq's main process writes its own start-up line before it imports
    # bts-sync; every line of the worker processes is JSON.
    worker_lines = [line for line in lines if "dramatiq.MainProcess" not in line]
    records = [json.loads(line) for line in worker_lines if line.strip()]
    polls = [r for r in records if r.get("endpoint") == "items"]
    assert polls[0]["status"] == 200
    assert isinstance(polls[0]["slot"], int)
    assert isinstance(polls[0]["elapsed_ms"], float)
    assert isinstance(polls[0]["lateness_ms"], float)
