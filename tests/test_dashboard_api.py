"""The dashboard's JSON API, actions and /metrics, served by a real ``bts-sync dashboard``."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from conftest import free_port
from dramatiq import Message
from prometheus_client.parser import text_string_to_metric_families
from support import (
    ProcessSet,
    bts_sync_command,
    http_request,
    process_env,
    wait_for_http,
    write_config,
)

from bts_sync import chain, hooks, store
from bts_sync.config import Endpoint, Settings
from bts_sync.dashboard import Access, create_app
from bts_sync.fetch import FetchResult

TOKEN = "test-token-0123456789abcdef"
PREFIX = "bts_sync"
NAMESPACE = f"{PREFIX}:dramatiq"
URL_PASSWORD = "hunter22pass"
QUERY_SECRET = "s3cr3t-query-value"
HEADER_SECRET = "sekrit-header-value"


@dataclass
class Dashboard:
    """A running dashboard and the Redis database it reads."""

    base: str
    client: redis.Redis
    settings: Settings

    def get(self, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        return http_request(self.base + path, headers=headers)

    def post(self, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        return http_request(self.base + path, method="POST", headers=headers, data=b"")

    def json(self, path: str) -> Any:
        status, _, body = self.get(path)
        assert status == 200, body
        return json.loads(body)


@pytest.fixture(scope="module")
def dashboard_process(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dashboard]:
    folder = tmp_path_factory.mktemp("dashboard-api")
    redis_url = f"{redis_server}/5"
    endpoints = [
        {
            "name": "orders",
            "url": f"http://reader:{URL_PASSWORD}@127.0.0.1:9/orders?token={QUERY_SECRET}",
            "headers": {"Authorization": f"Bearer {HEADER_SECRET}"},
        },
        {"name": "billing", "url": "http://127.0.0.1:9/billing"},
    ]
    config = write_config(folder / "bts-sync.toml", endpoints, history_length=50)
    port = free_port()
    env = process_env(config, redis_url, BTS_SYNC_DASHBOARD_TOKEN=TOKEN)
    processes = ProcessSet(folder)
    processes.start(
        "dashboard", bts_sync_command("dashboard", "--port", str(port)), env
    )
    client = redis.Redis.from_url(redis_url)
    settings = Settings(
        endpoints=tuple(Endpoint(name=e["name"], url=e["url"]) for e in endpoints),
        redis_url=redis_url,
        alert_after_failures=2,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/status", 20)
        yield Dashboard(f"http://127.0.0.1:{port}", client, settings)
    finally:
        processes.close()
        client.close()


@pytest.fixture
def dashboard(dashboard_process: Dashboard) -> Dashboard:
    dashboard_process.client.flushdb()
    return dashboard_process


def _result(name: str, ok: bool) -> FetchResult:
    return FetchResult(
        endpoint=name,
        method="GET",
        url="http://127.0.0.1:9/",
        started_at=time.time(),
        elapsed_ms=30.0 if ok else 12.0,
        status=200 if ok else 502,
        reason="OK" if ok else "Bad Gateway",
        size=2,
        content_type="application/json",
        body={} if ok else None,
        is_json=ok,
        raw=b"{}" if ok else b"",
        error_kind=None if ok else "http_status",
        error=None if ok else "Unexpected status 502 Bad Gateway.",
    )


def _poll(dashboard: Dashboard, name: str, ok: bool) -> None:
    result = _result(name, ok)
    record = store.PollRecord(result, int(time.time() * 1000), lateness_ms=7.0)
    store.record_poll(dashboard.client, PREFIX, name, record, history_length=50)
    hooks.after_poll(dashboard.client, dashboard.settings, name, result, 7.0)


def _seed_chain(dashboard: Dashboard, name: str) -> None:
    chain.seed(
        dashboard.client,
        PREFIX,
        name,
        interval_ms=3000,
        now_ms=int(time.time() * 1000),
        stalled_after_ms=60_000,
        lead_ms=500,
    )


def _chain_token(dashboard: Dashboard, name: str) -> bytes | None:
    token: bytes | None = dashboard.client.hget(chain.chain_key(PREFIX, name), "token")
    return token


def _session_cookie(dashboard: Dashboard) -> str:
    status, headers, body = http_request(
        dashboard.base + "/login", method="POST", data=f"token={TOKEN}".encode()
    )
    assert status in (200, 303), body
    cookie = SimpleCookie(headers.get("Set-Cookie", ""))
    return f"bts_sync_session={cookie['bts_sync_session'].value}"


def _csrf_token(dashboard: Dashboard, cookie: str) -> str:
    _, _, page = dashboard.get("/", Cookie=cookie)
    marker = b'name="csrf-token" content="'
    start = page.index(marker) + len(marker)
    return page[start : page.index(b'"', start)].decode()


def test_status_lists_configured_endpoints(dashboard: Dashboard) -> None:
    status = dashboard.json("/api/status")
    assert [row["name"] for row in status["endpoints"]] == ["orders", "billing"]


def test_status_reports_latest_poll(dashboard: Dashboard) -> None:
    _poll(dashboard, "orders", ok=True)
    _poll(dashboard, "orders", ok=False)
    [orders, _] = dashboard.json("/api/status")["endpoints"]
    assert orders["latest"]["status"] == "502"
    assert orders["success_rate_1h"] == 0.5
    assert orders["consecutive_failures"] == 1
    assert orders["last_failure"]["error"] == "Unexpected status 502 Bad Gateway."


def test_status_reports_health_and_queue(dashboard: Dashboard) -> None:
    for _ in range(2):
        _poll(dashboard, "billing", ok=False)
    status = dashboard.json("/api/status")
    assert status["endpoints"][1]["health"]["state"] == "unhealthy"
    assert status["queue"] == {"ready": 0, "delayed": 0, "dead": 0}
    assert status["workers"] == []


def test_status_masks_url_secrets(dashboard: Dashboard) -> None:
    [orders, _] = dashboard.json("/api/status")["endpoints"]
    assert orders["url"] == "http://reader:***@127.0.0.1:9/orders?token=***"


@pytest.mark.parametrize("path", ["/", "/fragment", "/api/status", "/metrics"])
def test_dashboard_never_shows_secrets(dashboard: Dashboard, path: str) -> None:
    _poll(dashboard, "orders", ok=True)
    _, _, body = dashboard.get(path)
    for secret in (URL_PASSWORD, QUERY_SECRET, HEADER_SECRET):
        assert secret.encode() not in body


def test_history_returns_polls_oldest_first(dashboard: Dashboard) -> None:
    _poll(dashboard, "orders", ok=True)
    _poll(dashboard, "orders", ok=False)
    history = dashboard.json("/api/endpoints/orders/history?count=10")
    assert [point["ok"] for point in history] == [True, False]


def test_history_of_unknown_endpoint_is_404(dashboard: Dashboard) -> None:
    status, _, _ = dashboard.get("/api/endpoints/nope/history")
    assert status == 404


def test_failures_lists_failed_polls(dashboard: Dashboard) -> None:
    _poll(dashboard, "orders", ok=True)
    _poll(dashboard, "billing", ok=False)
    failures = dashboard.json("/api/failures")
    assert [f["endpoint"] for f in failures] == ["billing"]


def test_action_without_token_is_rejected(dashboard: Dashboard) -> None:
    _seed_chain(dashboard, "orders")
    status, _, body = dashboard.post("/api/endpoints/orders/stop")
    assert status == 401
    assert b"dashboard token" in body
    assert _chain_token(dashboard, "orders") is not None


def test_action_with_wrong_token_is_rejected(dashboard: Dashboard) -> None:
    _seed_chain(dashboard, "orders")
    status, _, _ = dashboard.post(
        "/api/endpoints/orders/stop", Authorization="Bearer wrong-token-0123456789"
    )
    assert status == 401
    assert _chain_token(dashboard, "orders") is not None


def test_bearer_action_stops_chain(dashboard: Dashboard) -> None:
    _seed_chain(dashboard, "orders")
    status, _, body = dashboard.post(
        "/api/endpoints/orders/stop", Authorization=f"Bearer {TOKEN}"
    )
    assert status == 200
    assert json.loads(body)["result"] == "stopped"
    assert _chain_token(dashboard, "orders") is None


def test_cross_site_action_is_rejected(dashboard: Dashboard) -> None:
    _seed_chain(dashboard, "orders")
    status, _, _ = dashboard.post(
        "/api/endpoints/orders/stop",
        Authorization=f"Bearer {TOKEN}",
        Origin="http://attacker.example",
    )
    assert status == 403
    assert _chain_token(dashboard, "orders") is not None


def test_cookie_action_without_csrf_is_rejected(dashboard: Dashboard) -> None:
    _seed_chain(dashboard, "orders")
    cookie = _session_cookie(dashboard)
    status, _, body = dashboard.post("/api/endpoints/orders/stop", Cookie=cookie)
    assert status == 403
    assert b"CSRF" in body
    assert _chain_token(dashboard, "orders") is not None


def test_cookie_action_with_csrf_starts_chain(dashboard: Dashboard) -> None:
    cookie = _session_cookie(dashboard)
    csrf = _csrf_token(dashboard, cookie)
    status, _, body = dashboard.post(
        "/api/endpoints/billing/start", Cookie=cookie, **{"X-CSRF-Token": csrf}
    )
    assert status == 200
    assert json.loads(body)["result"] == "started"
    assert _chain_token(dashboard, "billing") is not None
    assert dashboard.json("/api/status")["queue"]["delayed"] == 1


def test_login_with_wrong_token_is_rejected(dashboard: Dashboard) -> None:
    status, headers, _ = http_request(
        dashboard.base + "/login", method="POST", data=b"token=not-the-token"
    )
    assert status == 403
    assert "Set-Cookie" not in headers


def test_page_without_session_has_no_csrf_token(dashboard: Dashboard) -> None:
    _, _, page = dashboard.get("/")
    assert b"csrf-token" not in page


def test_foreign_host_header_is_rejected(dashboard: Dashboard) -> None:
    port = dashboard.base.rsplit(":", 1)[1]
    status, _, _ = dashboard.get("/api/status", Host=f"rebound.example:{port}")
    assert status == 400


def test_action_on_unknown_endpoint_is_404(dashboard: Dashboard) -> None:
    status, _, _ = dashboard.post(
        "/api/endpoints/nope/stop", Authorization=f"Bearer {TOKEN}"
    )
    assert status == 404


def _dead_letter(dashboard: Dashboard) -> None:
    message: Message[object] = Message(
        queue_name="bts_sync",
        actor_name="watchdog",
        args=(),
        kwargs={},
        options={"redis_message_id": "dead-1", "traceback": "Boom: failed"},
    )
    dashboard.client.hset(f"{NAMESPACE}:bts_sync.XQ.msgs", "dead-1", message.encode())
    dashboard.client.zadd(f"{NAMESPACE}:bts_sync.XQ", {"dead-1": 1_800_000_000_000})


def test_dead_letters_are_listed(dashboard: Dashboard) -> None:
    _dead_letter(dashboard)
    [letter] = dashboard.json("/api/dead-letters")
    assert letter["actor"] == "watchdog"
    assert letter["error"] == "Boom: failed"


def test_requeue_action_moves_dead_letter(dashboard: Dashboard) -> None:
    _dead_letter(dashboard)
    status, _, body = dashboard.post(
        "/api/dead-letters/dead-1/requeue", Authorization=f"Bearer {TOKEN}"
    )
    assert status == 200
    assert json.loads(body)["result"] == "requeued"
    assert dashboard.json("/api/status")["queue"] == {
        "ready": 1,
        "delayed": 0,
        "dead": 0,
    }


def test_delete_action_removes_dead_letter(dashboard: Dashboard) -> None:
    _dead_letter(dashboard)
    status, _, _ = dashboard.post(
        "/api/dead-letters/delete-all", Authorization=f"Bearer {TOKEN}"
    )
    assert status == 200
    assert dashboard.json("/api/dead-letters") == []


def _samples(
    dashboard: Dashboard,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, headers, body = dashboard.get("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_metrics_count_polls_by_outcome(dashboard: Dashboard) -> None:
    for ok in (True, True, False):
        _poll(dashboard, "orders", ok)
    samples = _samples(dashboard)
    assert (
        samples[("bts_sync_polls_total", (("endpoint", "orders"), ("outcome", "ok")))]
        == 2
    )
    assert (
        samples[
            (
                "bts_sync_polls_total",
                (("endpoint", "orders"), ("outcome", "http_status")),
            )
        ]
        == 1
    )


def test_metrics_export_histograms(dashboard: Dashboard) -> None:
    _poll(dashboard, "orders", ok=True)
    samples = _samples(dashboard)
    assert (
        samples[("bts_sync_poll_duration_seconds_count", (("endpoint", "orders"),))]
        == 1
    )
    assert (
        samples[
            (
                "bts_sync_poll_duration_seconds_bucket",
                (("endpoint", "orders"), ("le", "0.05")),
            )
        ]
        == 1
    )
    assert (
        samples[
            (
                "bts_sync_poll_lateness_seconds_bucket",
                (("endpoint", "orders"), ("le", "0.01")),
            )
        ]
        == 1
    )


def test_metrics_export_endpoint_state(dashboard: Dashboard) -> None:
    _seed_chain(dashboard, "orders")
    for _ in range(2):
        _poll(dashboard, "billing", ok=False)
    samples = _samples(dashboard)
    assert (
        samples[
            ("bts_sync_chain_state", (("endpoint", "orders"), ("state", "running")))
        ]
        == 1
    )
    assert (
        samples[
            ("bts_sync_chain_state", (("endpoint", "billing"), ("state", "stopped")))
        ]
        == 1
    )
    assert samples[("bts_sync_consecutive_failures", (("endpoint", "billing"),))] == 2
    assert samples[("bts_sync_endpoint_healthy", (("endpoint", "billing"),))] == 0


def test_metrics_export_chain_counters(dashboard: Dashboard) -> None:
    dashboard.client.hset(
        store.stats_key(PREFIX, "orders"),
        mapping={"dropped_duplicates": 3, "missed_slots": 2, "skipped_paused": 5},
    )
    samples = _samples(dashboard)
    assert (
        samples[("bts_sync_dropped_duplicates_total", (("endpoint", "orders"),))] == 3
    )
    assert samples[("bts_sync_missed_slots_total", (("endpoint", "orders"),))] == 2
    assert samples[("bts_sync_skipped_paused_total", (("endpoint", "orders"),))] == 5
    assert samples[("bts_sync_skipped_overlaps_total", (("endpoint", "billing"),))] == 0


def test_metrics_export_queue_and_workers(dashboard: Dashboard) -> None:
    _dead_letter(dashboard)
    samples = _samples(dashboard)
    assert samples[("bts_sync_queue_messages", (("state", "dead_lettered"),))] == 1
    assert samples[("bts_sync_workers", ())] == 0


def _run_dashboard_command(
    tmp_path: Path, redis_server: str, *args: str, token: str = ""
) -> subprocess.CompletedProcess[str]:
    config = write_config(
        tmp_path / "bts-sync.toml", [{"name": "a", "url": "http://127.0.0.1:9/"}]
    )
    env = process_env(config, f"{redis_server}/5")
    if token:
        env["BTS_SYNC_DASHBOARD_TOKEN"] = token
    return subprocess.run(
        bts_sync_command("dashboard", *args),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_public_address_needs_token(tmp_path: Path, redis_server: str) -> None:
    completed = _run_dashboard_command(tmp_path, redis_server, "--host", "0.0.0.0")
    assert completed.returncode == 2
    assert "BTS_SYNC_DASHBOARD_TOKEN" in completed.stderr


def test_short_token_is_rejected(tmp_path: Path, redis_server: str) -> None:
    completed = _run_dashboard_command(tmp_path, redis_server, token="short")
    assert completed.returncode == 2
    assert "at least 16" in completed.stderr


def _private_app() -> Any:
    monitor = SimpleNamespace(overview=lambda: {"time": 0, "endpoints": []})
    return create_app(monitor, Access(token=TOKEN, open_reads=False))  # type: ignore[arg-type]


def test_private_dashboard_reads_need_token() -> None:
    response = _private_app().test_client().get("/api/status")
    assert response.status_code == 401


def test_private_dashboard_page_asks_sign_in() -> None:
    response = _private_app().test_client().get("/")
    assert response.status_code == 401
    assert b"Sign in" in response.data


def test_private_dashboard_accepts_bearer() -> None:
    response = (
        _private_app()
        .test_client()
        .get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"})
    )
    assert response.status_code == 200
