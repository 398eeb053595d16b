"""Prometheus metrics, read from Redis at scrape time.

Every number lives in Redis, so one scrape of the dashboard's ``/metrics``
covers all worker processes on all machines. The worker adds, after each
recorded poll, the per-outcome counters and the histogram buckets of request
duration and lateness to the hash ``{prefix}:metrics:{name}``. Everything else
comes from the keys that the chain and the store keep anyway: the counters of
``{prefix}:stats:{name}`` (read generically, so a new counter appears as
``bts_sync_<counter>_total`` without a change here), chain states, health,
queue depths and the worker registry.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

#: Upper bounds of the request duration buckets, in seconds.
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Upper bounds of the lateness buckets, in seconds after the slot's due time.
LATENESS_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

#: Chain states exported as 0 or 1, so that each state has a series. A state
#: missing from this list is exported too while an endpoint is in it.
CHAIN_STATES = ("running", "stalled", "stopped", "paused", "backing off")

#: Fields of the stats hash that are not counters, or that other metrics cover.
_NOT_COUNTERS = frozenset(
    {
        "consecutive_failures",
        "last_success_at",
        "last_failure_at",
        "polls",
        "successes",
        "failures",
    }
)

_METRIC_NAME_RE = re.compile(r"[^a-zA-Z0-9_]")


def metrics_key(prefix: str, name: str) -> str:
    """Return the key of the endpoint's outcome counters and histogram buckets."""
    return f"{prefix}:metrics:{name}"


def _bucket_label(bounds: tuple[float, ...], value_s: float) -> str:
    index = bisect.bisect_left(bounds, value_s)
    return repr(bounds[index]) if index < len(bounds) else "+Inf"


def queue_observation(
    pipe: Any,
    prefix: str,
    name: str,
    outcome: str,
    elapsed_ms: float,
    lateness_ms: float,
) -> None:
    """Queue, on ``pipe``, the counter updates for one recorded poll.

    Each histogram bucket counts only the polls that fall into it; the
    collector adds them up into Prometheus's cumulative buckets.

    Args:
        pipe: Redis pipeline; a transaction keeps sum and buckets consistent.
        prefix: Key prefix.
        name: Endpoint name.
        outcome: ``ok``, or the error kind of a failed poll.
        elapsed_ms: Request duration.
        lateness_ms: How late the request started after the slot's due time.
    """
    key = metrics_key(prefix, name)
    elapsed_s = elapsed_ms / 1000
    lateness_s = lateness_ms / 1000
    pipe.hincrby(key, f"outcome:{outcome}", 1)
    pipe.hincrby(key, f"duration:{_bucket_label(DURATION_BUCKETS_S, elapsed_s)}", 1)
    pipe.hincrbyfloat(key, "duration_sum", elapsed_s)
    pipe.hincrby(key, f"lateness:{_bucket_label(LATENESS_BUCKETS_S, lateness_s)}", 1)
    pipe.hincrbyfloat(key, "lateness_sum", lateness_s)


@dataclass
class EndpointSnapshot:
    """Numbers that Redis contains about one endpoint at scrape time.

    Attributes:
        name: Endpoint name.
        state: Chain state, as ``bts-sync status`` shows it.
        interval_s: Configured interval.
        healthy: False while an alert about the endpoint is open.
        stats: Every field of the stats hash, as numbers.
        observations: Every field of the metrics hash, as numbers.
    """

    name: str
    state: str
    interval_s: float
    healthy: bool
    stats: dict[str, float] = field(default_factory=dict)
    observations: dict[str, float] = field(default_factory=dict)


@dataclass
class Snapshot:
    """Everything one scrape exports."""

    endpoints: list[EndpointSnapshot]
    queue: dict[str, int]
    workers: int


def _numbers(mapping: Mapping[bytes, bytes]) -> dict[str, float]:
    numbers = {}
    for key, value in mapping.items():
        try:
            numbers[key.decode()] = float(value)
        except ValueError:
            continue
    return numbers


def read_snapshot(actors: Any, client: redis.Redis) -> Snapshot:
    """Read every exported number from Redis, in a few round trips.

    ``actors`` is the imported ``bts_sync.actors`` module, whose settings and
    queue layout ``collect_status`` uses.
    """
    from bts_sync import alerts, worker_registry
    from bts_sync.commands import collect_status
    from bts_sync.store import stats_key

    report = collect_status(actors, client)
    prefix = actors.SETTINGS.key_prefix
    names = [row["name"] for row in report["endpoints"]]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(stats_key(prefix, name))
        pipe.hgetall(metrics_key(prefix, name))
    replies = pipe.execute()
    health = alerts.read_health(client, prefix, names)
    workers = worker_registry.read_workers(client, prefix, int(report["time"] * 1000))

    endpoints = []
    for index, row in enumerate(report["endpoints"]):
        endpoints.append(
            EndpointSnapshot(
                name=row["name"],
                state=row["state"],
                interval_s=row["interval_s"],
                healthy=health[row["name"]]["state"] != "unhealthy",
                stats=_numbers(replies[2 * index]),
                observations=_numbers(replies[2 * index + 1]),
            )
        )
    return Snapshot(endpoints=endpoints, queue=report["queue"], workers=len(workers))


def _histogram(
    name: str, documentation: str, kind: str, bounds: tuple[float, ...], snap: Snapshot
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=["endpoint"])
    for endpoint in snap.endpoints:
        cumulative = 0.0
        buckets = []
        for label in [*(repr(b) for b in bounds), "+Inf"]:
            cumulative += endpoint.observations.get(f"{kind}:{label}", 0.0)
            buckets.append((label, cumulative))
        family.add_metric(
            [endpoint.name],
            buckets=buckets,
            sum_value=endpoint.observations.get(f"{kind}_sum", 0.0),
        )
    return family


def _stats_counters(snap: Snapshot) -> Iterator[Metric]:
    from bts_sync.store import COUNTERS

    present = {key for endpoint in snap.endpoints for key in endpoint.stats}
    fields = sorted(
        key
        for key in present | set(COUNTERS)
        if key not in _NOT_COUNTERS and not key.endswith("_at")
    )
    for field_name in fields:
        metric_name = "bts_sync_" + _METRIC_NAME_RE.sub("_", field_name)
        family = CounterMetricFamily(
            metric_name,
            f"Count of {field_name.replace('_', ' ')} per endpoint, from its stats hash.",
            labels=["endpoint"],
        )
        for endpoint in snap.endpoints:
            family.add_metric([endpoint.name], endpoint.stats.get(field_name, 0.0))
        yield family


def families(snap: Snapshot) -> Iterator[Metric]:
    """Build the metric families of a snapshot."""
    polls = CounterMetricFamily(
        "bts_sync_polls",
        "Recorded polls per endpoint and outcome (ok, or the error kind).",
        labels=["endpoint", "outcome"],
    )
    for endpoint in snap.endpoints:
        for key, value in sorted(endpoint.observations.items()):
            if key.startswith("outcome:"):
                polls.add_metric([endpoint.name, key.removeprefix("outcome:")], value)
    yield polls

    yield _histogram(
        "bts_sync_poll_duration_seconds",
        "Duration of the HTTP request of each poll.",
        "duration",
        DURATION_BUCKETS_S,
        snap,
    )
    yield _histogram(
        "bts_sync_poll_lateness_seconds",
        "How late each poll's request started after its slot's due time.",
        "lateness",
        LATENESS_BUCKETS_S,
        snap,
    )

    last_success = GaugeMetricFamily(
        "bts_sync_last_success_timestamp_seconds",
        "Unix time of the endpoint's last successful poll.",
        labels=["endpoint"],
    )
    failures = GaugeMetricFamily(
        "bts_sync_consecutive_failures",
        "Failed polls since the endpoint's last successful one.",
        labels=["endpoint"],
    )
    healthy = GaugeMetricFamily(
        "bts_sync_endpoint_healthy",
        "1 while the endpoint is healthy, 0 while an alert about it is open.",
        labels=["endpoint"],
    )
    interval = GaugeMetricFamily(
        "bts_sync_interval_seconds",
        "Configured seconds between two polls.",
        labels=["endpoint"],
    )
    state = GaugeMetricFamily(
        "bts_sync_chain_state",
        "1 for the chain's current state, 0 for the others.",
        labels=["endpoint", "state"],
    )
    for endpoint in snap.endpoints:
        if "last_success_at" in endpoint.stats:
            last_success.add_metric([endpoint.name], endpoint.stats["last_success_at"])
        failures.add_metric(
            [endpoint.name], endpoint.stats.get("consecutive_failures", 0.0)
        )
        healthy.add_metric([endpoint.name], 1.0 if endpoint.healthy else 0.0)
        interval.add_metric([endpoint.name], endpoint.interval_s)
        states = list(CHAIN_STATES)
        if endpoint.state not in states:
            states.append(endpoint.state)
        for name in states:
            # Label values keep to the identifier style of the other labels.
            state.add_metric(
                [endpoint.name, name.replace(" ", "_")],
                1.0 if name == endpoint.state else 0.0,
            )
    yield from (last_success, failures, healthy, interval, state)
    yield from _stats_counters(snap)

    queue = GaugeMetricFamily(
        "bts_sync_queue_messages",
        "Messages in the bts-sync queue: ready, delayed, or dead-lettered.",
        labels=["state"],
    )
    queue.add_metric(["ready"], snap.queue.get("ready", 0))
    queue.add_metric(["delayed"], snap.queue.get("delayed", 0))
    queue.add_metric(["dead_lettered"], snap.queue.get("dead", 0))
    yield queue
    yield GaugeMetricFamily(
        "bts_sync_workers",
        "Worker processes that sent a heartbeat in the last minute.",
        value=snap.workers,
    )


class _SnapshotCollector(Collector):
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        return families(self.snap)


def render(snap: Snapshot) -> bytes:
    """Render a snapshot in the Prometheus text exposition format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snap))
    return generate_latest(registry)
