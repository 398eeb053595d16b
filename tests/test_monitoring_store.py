"""Monitoring records in a real Redis: history cache, health, metrics, dead letters, workers."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
import redis
from dramatiq import Message
from prometheus_client.parser import text_string_to_metric_families
from support import wait_until

from bts_sync import alerts, deadletters, hooks, metrics, store, worker_registry
from bts_sync.config import Endpoint, Settings
from bts_sync.fetch import FetchResult
from bts_sync.overview import HistoryCache, PollPoint, success_rate

PREFIX = "bts_sync"
NAMESPACE = deadletters.dramatiq_namespace(PREFIX)
QUEUE = "bts_sync"


def _result(ok: bool, elapsed_ms: float = 20.0) -> FetchResult:
    if ok:
        return FetchResult(
            endpoint="orders",
            method="GET",
            url="http://127.0.0.1:9/orders",
            started_at=time.time(),
            elapsed_ms=elapsed_ms,
            status=200,
            reason="OK",
            size=2,
            content_type="application/json",
            body={},
            is_json=True,
            raw=b"{}",
        )
    return FetchResult(
        endpoint="orders",
        method="GET",
        url="http://127.0.0.1:9/orders",
        started_at=time.time(),
        elapsed_ms=elapsed_ms,
        status=503,
        reason="Service Unavailable",
        error_kind="http_status",
        error="Unexpected status 503 Service Unavailable.",
    )


def _record(client: redis.Redis, ok: bool, elapsed_ms: float = 20.0) -> FetchResult:
    result = _result(ok, elapsed_ms)
    record = store.PollRecord(
        result=result, slot_ms=int(time.time() * 1000), lateness_ms=4.0
    )
    store.record_poll(client, PREFIX, "orders", record, history_length=100)
    return result


def _settings(threshold: int = 3) -> Settings:
    return Settings(
        endpoints=(Endpoint(name="orders", url="http://127.0.0.1:9/orders"),),
        alert_after_failures=threshold,
    )


def test_history_cache_reads_kept_polls(client: redis.Redis) -> None:
    for ok in (True, False, True):
        _record(client, ok)
    cache = HistoryCache(PREFIX, length=100)
    cache.refresh(client, ["orders"])
    assert [p.ok for p in cache.points("orders")] == [True, False, True]


def test_history_cache_adds_only_new_polls(client: redis.Redis) -> None:
    _record(client, True)
    cache = HistoryCache(PREFIX, length=100)
    cache.refresh(client, ["orders"])
    _record(client, False)
    cache.refresh(client, ["orders"])
    points = cache.points("orders")
    assert len(points) == 2
    assert points[-1].error_kind == "http_status"


def test_history_cache_rereads_replaced_stream(client: redis.Redis) -> None:
    _record(client, True)
    _record(client, True)
    cache = HistoryCache(PREFIX, length=100)
    cache.refresh(client, ["orders"])
    client.delete(store.history_key(PREFIX, "orders"))
    client.xadd(store.history_key(PREFIX, "orders"), {"ok": "0"}, id="1-1")
    cache.refresh(client, ["orders"])
    assert [p.id for p in cache.points("orders")] == ["1-1"]


def test_history_cache_keeps_configured_length(client: redis.Redis) -> None:
    for _ in range(5):
        _record(client, True)
    cache = HistoryCache(PREFIX, length=3)
    cache.refresh(client, ["orders"])
    assert len(cache.points("orders")) == 3


def _point(recorded_at: float, ok: bool) -> PollPoint:
    return PollPoint(
        id=f"{int(recorded_at * 1000)}-0",
        recorded_at=recorded_at,
        time=recorded_at,
        ok=ok,
        status=200 if ok else 500,
        elapsed_ms=1.0,
        lateness_ms=1.0,
        error_kind="" if ok else "http_status",
        error="",
        changed=False,
    )


def test_success_rate_counts_last_hour() -> None:
    now = 1_800_000_000.0
    points = [_point(now - 4000, False), _point(now - 60, True), _point(now - 1, False)]
    assert success_rate(points, now) == (0.5, 2)


def test_success_rate_without_polls_is_none() -> None:
    assert success_rate([], 1_800_000_000.0) == (None, 0)


def test_health_turns_unhealthy_once(client: redis.Redis) -> None:
    settings = _settings(threshold=3)
    alerts_seen = []
    for _ in range(6):
        result = _record(client, ok=False)
        alerts_seen.append(hooks.after_poll(client, settings, "orders", result, 4.0))
    events = [a.event for a in alerts_seen if a is not None]
    assert events == ["unhealthy"]
    assert alerts_seen[2] is not None


def test_health_recovers_once(client: redis.Redis) -> None:
    settings = _settings(threshold=2)
    for _ in range(2):
        hooks.after_poll(client, settings, "orders", _record(client, False), 4.0)
    recoveries = [
        hooks.after_poll(client, settings, "orders", _record(client, True), 4.0)
        for _ in range(3)
    ]
    events = [a.event for a in recoveries if a is not None]
    assert events == ["recovered"]


def test_health_flips_once_across_threads(client: redis.Redis) -> None:
    settings = _settings(threshold=3)
    results: list[alerts.Alert | None] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def record_failures() -> None:
        connection = redis.Redis(connection_pool=client.connection_pool)
        start.wait(timeout=10)
        for _ in range(5):
            result = _record(connection, ok=False)
            alert = hooks.after_poll(connection, settings, "orders", result, 4.0)
            with lock:
                results.append(alert)

    threads = [threading.Thread(target=record_failures) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 40
    assert len([a for a in results if a is not None]) == 1


def test_stalled_mark_reports_once(client: redis.Redis) -> None:
    first = alerts.mark_stalled(client, PREFIX, "orders", time.time(), "stalled")
    second = alerts.mark_stalled(client, PREFIX, "orders", time.time(), "stalled")
    assert first is not None
    assert first.event == "unhealthy"
    assert second is None


def test_stalled_endpoint_recovers_on_success(client: redis.Redis) -> None:
    alerts.mark_stalled(client, PREFIX, "orders", time.time(), "stalled")
    result = _record(client, ok=True)
    alert = hooks.after_poll(client, _settings(), "orders", result, 4.0)
    assert alert is not None
    assert alert.event == "recovered"
    assert "stalled" in alert.text()


def test_read_health_defaults_to_healthy(client: redis.Redis) -> None:
    health = alerts.read_health(client, PREFIX, ["orders"])
    assert health["orders"]["state"] == "healthy"


def test_metrics_histograms_are_cumulative(client: redis.Redis) -> None:
    pipe = client.pipeline(transaction=True)
    for elapsed_ms in (3.0, 40.0, 40.0, 20_000.0):
        metrics.queue_observation(pipe, PREFIX, "orders", "ok", elapsed_ms, 2.0)
    pipe.execute()

    observations = metrics._numbers(
        client.hgetall(metrics.metrics_key(PREFIX, "orders"))
    )
    snap = metrics.Snapshot(
        endpoints=[
            metrics.EndpointSnapshot(
                name="orders",
                state="running",
                interval_s=3.0,
                healthy=True,
                observations=observations,
            )
        ],
        queue={"ready": 0, "delayed": 0, "dead": 0},
        workers=0,
    )

    samples = {
        (s.name, s.labels.get("le")): s.value
        for family in text_string_to_metric_families(metrics.render(snap).decode())
        for s in family.samples
        if s.name.startswith("bts_sync_poll_duration_seconds")
    }
    assert samples[("bts_sync_poll_duration_seconds_bucket", "0.005")] == 1
    assert samples[("bts_sync_poll_duration_seconds_bucket", "0.05")] == 3
    assert samples[("bts_sync_poll_duration_seconds_bucket", "10.0")] == 3
    assert samples[("bts_sync_poll_duration_seconds_bucket", "+Inf")] == 4
    assert samples[("bts_sync_poll_duration_seconds_count", None)] == 4
    assert samples[("bts_sync_poll_duration_seconds_sum", None)] == pytest.approx(
        20.083
    )


def _dead_letter(client: redis.Redis, actor: str = "poll_endpoint") -> Message[object]:
    """Put a message on the dead-letter queue the way Dramatiq's nack does."""
    message: Message[object] = Message(
        queue_name=f"{QUEUE}.DQ",
        actor_name=actor,
        args=("orders", "abc123", 1_800_000_000_000),
        kwargs={},
        options={
            "redis_message_id": "r-1",
            "eta": 1_800_000_000_000,
            "traceback": "Traceback …\nTimeLimitExceeded: took too long",
        },
    )
    client.hset(f"{NAMESPACE}:{QUEUE}.XQ.msgs", "r-1", message.encode())
    client.zadd(f"{NAMESPACE}:{QUEUE}.XQ", {"r-1": 1_800_000_000_000})
    return message


def test_dead_letters_are_listed(client: redis.Redis) -> None:
    _dead_letter(client)
    [letter] = deadletters.list_dead_letters(client, NAMESPACE, QUEUE)
    assert letter.id == "r-1"
    assert letter.actor == "poll_endpoint"
    assert letter.error == "TimeLimitExceeded: took too long"


def test_requeue_moves_message_to_ready_queue(client: redis.Redis) -> None:
    original = _dead_letter(client)
    assert deadletters.requeue_dead_letter(client, NAMESPACE, QUEUE, "r-1")
    [new_id] = client.lrange(f"{NAMESPACE}:{QUEUE}", 0, -1)
    requeued = Message.decode(client.hget(f"{NAMESPACE}:{QUEUE}.msgs", new_id))
    assert requeued.message_id == original.message_id
    assert requeued.queue_name == QUEUE
    assert "eta" not in requeued.options
    assert client.zcard(f"{NAMESPACE}:{QUEUE}.XQ") == 0


def test_requeue_twice_moves_once(client: redis.Redis) -> None:
    _dead_letter(client)
    assert deadletters.requeue_dead_letter(client, NAMESPACE, QUEUE, "r-1")
    assert not deadletters.requeue_dead_letter(client, NAMESPACE, QUEUE, "r-1")
    assert client.llen(f"{NAMESPACE}:{QUEUE}") == 1


def test_delete_removes_dead_letter(client: redis.Redis) -> None:
    _dead_letter(client)
    assert deadletters.delete_dead_letter(client, NAMESPACE, QUEUE, "r-1")
    assert deadletters.list_dead_letters(client, NAMESPACE, QUEUE) == []
    assert client.hlen(f"{NAMESPACE}:{QUEUE}.XQ.msgs") == 0


def test_worker_registry_lists_booted_worker(
    client: redis.Redis, redis_url: str
) -> None:
    registry = worker_registry.WorkerRegistry(redis_url, PREFIX)
    registry.after_worker_boot(None, SimpleNamespace(worker_threads=4))
    try:

        def listed() -> list[worker_registry.WorkerInfo]:
            return worker_registry.read_workers(client, PREFIX, int(time.time() * 1000))

        [worker] = wait_until(listed, 5, "the booted worker is listed")
        assert worker.threads == 4
    finally:
        registry.before_worker_shutdown(None, None)
    assert worker_registry.read_workers(client, PREFIX, int(time.time() * 1000)) == []


def test_worker_registry_skips_silent_workers(client: redis.Redis) -> None:
    now_ms = int(time.time() * 1000)
    client.zadd(worker_registry.workers_key(PREFIX), {"old:1": now_ms - 120_000})
    client.zadd(worker_registry.workers_key(PREFIX), {"new:2": now_ms - 1_000})
    workers = worker_registry.read_workers(client, PREFIX, now_ms)
    assert [w.id for w in workers] == ["new:2"]
