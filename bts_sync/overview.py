"""The monitoring overview that ``watch`` and the dashboard show.

``build_overview`` adds to ``collect_status`` what a person needs at a glance.
It adds the masked URL, health, the success rate over the last hour, the
latest polls for a trend, every counter of the stats hash, and the workers
seen in the last minute. The per-endpoint history streams are read incrementally by a
``HistoryCache``, so a view refreshed every second reads only the polls that
are new since the last refresh.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import redis

from bts_sync import alerts, worker_registry
from bts_sync.redact import mask_text, mask_url
from bts_sync.store import history_key, stats_key

#: Seconds of history behind the success rate.
SUCCESS_WINDOW_S = 3600

#: Latest polls of each endpoint included in the overview, for the trend.
RECENT_POLLS = 30


def _stream_id(text: str) -> tuple[int, int]:
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds), int(sequence or 0)


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


@dataclass(frozen=True)
class PollPoint:
    """One entry of an endpoint's history stream.

    Attributes:
        id: Stream entry id.
        recorded_at: Unix time at which Redis stored the entry.
        time: Unix time at which the request started.
        ok: Whether the poll succeeded.
        status: HTTP status, or None when no response came.
        elapsed_ms: Request duration.
        lateness_ms: How late the request started after its slot's due time.
        error_kind: Kind of failure, empty on success.
        error: Failure message, masked.
        changed: Whether the content changed with this poll.
    """

    id: str
    recorded_at: float
    time: float
    ok: bool
    status: int | None
    elapsed_ms: float
    lateness_ms: float
    error_kind: str
    error: str
    changed: bool

    @classmethod
    def from_entry(cls, entry_id: str, fields: dict[str, str]) -> PollPoint:
        """Parse one stream entry as ``store.record_poll`` writes it."""
        status = fields.get("status", "")
        return cls(
            id=entry_id,
            recorded_at=_stream_id(entry_id)[0] / 1000,
            time=_float(fields.get("time")) or _stream_id(entry_id)[0] / 1000,
            ok=fields.get("ok") == "1",
            status=int(status) if status.isdigit() else None,
            elapsed_ms=_float(fields.get("elapsed_ms")) or 0.0,
            lateness_ms=_float(fields.get("lateness_ms")) or 0.0,
            error_kind=fields.get("error_kind", ""),
            error=mask_text(fields.get("error", "")),
            changed=fields.get("changed") == "1",
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the poll as plain data for JSON."""
        return {
            "id": self.id,
            "time": self.time,
            "ok": self.ok,
            "status": self.status,
            "elapsed_ms": self.elapsed_ms,
            "lateness_ms": self.lateness_ms,
            "error_kind": self.error_kind,
            "error": self.error,
            "changed": self.changed,
        }


def _decode_entries(entries: Any) -> list[tuple[str, dict[str, str]]]:
    return [
        (
            entry_id.decode(),
            {k.decode(): v.decode(errors="replace") for k, v in fields.items()},
        )
        for entry_id, fields in entries
    ]


class HistoryCache:
    """The kept history of each endpoint, in memory, refreshed incrementally.

    Each refresh reads only the entries newer than the last one seen, in one
    pipeline for all endpoints. When the last entry seen is no longer in the
    stream, the endpoint is read anew.
    It is safe to share between threads.
    """

    def __init__(self, prefix: str, length: int) -> None:
        self.prefix = prefix
        self.length = length
        self._points: dict[str, deque[PollPoint]] = {}
        self._lock = threading.Lock()

    def refresh(self, client: redis.Redis, names: list[str]) -> None:
        """Read the new history entries of the named endpoints."""
        with self._lock:
            self._refresh(client, names)

    def _refresh(self, client: redis.Redis, names: list[str]) -> None:
        pipe = client.pipeline(transaction=False)
        for name in names:
            key = history_key(self.prefix, name)
            points = self._points.get(name)
            if points:
                pipe.xrevrange(key, "+", f"({points[-1].id}", count=self.length)
                pipe.xrange(key, points[-1].id, points[-1].id)
            else:
                pipe.xrevrange(key, "+", "-", count=self.length)
                pipe.echo("")
        replies = pipe.execute()

        reload = []
        for index, name in enumerate(names):
            new_entries = _decode_entries(replies[2 * index])
            points = self._points.setdefault(name, deque(maxlen=self.length))
            if points and not replies[2 * index + 1]:
                # The last entry seen is gone: the stream was deleted, or
                # trimmed past it because the cache fell far behind.
                reload.append(name)
                continue
            for entry_id, fields in reversed(new_entries):
                points.append(PollPoint.from_entry(entry_id, fields))
        for name in reload:
            self._points[name] = deque(maxlen=self.length)
        if reload:
            self._refresh(client, reload)

    def points(self, name: str) -> list[PollPoint]:
        """Return the cached polls of the endpoint, oldest first."""
        with self._lock:
            return list(self._points.get(name, ()))


def success_rate(
    points: list[PollPoint], now_s: float, window_s: float = SUCCESS_WINDOW_S
) -> tuple[float | None, int]:
    """Return the share of successful polls within the window, and the polls counted.

    The share is None when no poll lies in the window. Only the kept history
    counts, so with a short ``history_length`` the window is shorter too.
    """
    recent = [p for p in points if p.recorded_at >= now_s - window_s]
    if not recent:
        return None, 0
    return sum(p.ok for p in recent) / len(recent), len(recent)


def recent_failures(
    cache: HistoryCache, names: list[str], limit: int
) -> list[dict[str, Any]]:
    """Return the latest failed polls of all named endpoints, newest first."""
    failures = [
        {"endpoint": name, **point.to_dict()}
        for name in names
        for point in cache.points(name)
        if not point.ok
    ]
    failures.sort(key=lambda item: item["time"], reverse=True)
    return failures[:limit]


def _counters(mapping: Any) -> dict[str, float]:
    counters: dict[str, float] = {}
    for key, value in mapping.items():
        name = key.decode()
        if name.endswith("_at"):
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        counters[name] = int(number) if number.is_integer() else number
    return counters


def build_overview(
    actors: Any, client: redis.Redis, cache: HistoryCache
) -> dict[str, Any]:
    """Gather everything that ``watch`` and the dashboard show, as plain data for JSON.

    ``actors`` is the imported ``bts_sync.actors`` module.
    """
    from bts_sync.commands import collect_status

    settings = actors.SETTINGS
    report = collect_status(actors, client)
    now_s = report["time"]
    names = [row["name"] for row in report["endpoints"]]
    cache.refresh(client, names)
    health = alerts.read_health(client, settings.key_prefix, names)
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(stats_key(settings.key_prefix, name))
    all_counters = pipe.execute()
    workers = worker_registry.read_workers(
        client, settings.key_prefix, int(now_s * 1000)
    )

    for row, counters in zip(report["endpoints"], all_counters, strict=True):
        name = row["name"]
        points = cache.points(name)
        rate, polls = success_rate(points, now_s)
        last_failure = next((p for p in reversed(points) if not p.ok), None)
        row["url"] = mask_url(settings.endpoint(name).url)
        row["health"] = health[name]
        row["success_rate_1h"] = rate
        row["polls_1h"] = polls
        row["recent"] = [p.to_dict() for p in points[-RECENT_POLLS:]]
        row["last_failure"] = last_failure.to_dict() if last_failure else None
        row["counters"] = _counters(counters)
        latest = row.get("latest", {})
        if latest.get("error"):
            latest["error"] = mask_text(latest["error"])
    report["workers"] = [w.to_dict() for w in workers]
    return report
