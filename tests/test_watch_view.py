"""The live view of ``bts-sync watch``, rendered to a fixed-width console."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from bts_sync.watch import sparkline, watch_view

NOW = 1_800_000_000.0


def _poll(elapsed_ms: float, ok: bool = True) -> dict[str, Any]:
    return {"elapsed_ms": elapsed_ms, "lateness_ms": 2.0, "ok": ok, "time": NOW - 5}


def _overview() -> dict[str, Any]:
    healthy = {
        "name": "orders",
        "state": "running",
        "interval_s": 3.0,
        "next_due_s": NOW + 2,
        "consecutive_failures": 0,
        "latest": {
            "status": "200",
            "ok": "1",
            "elapsed_ms": "41.0",
            "lateness_ms": "3.0",
            "time": str(NOW - 1),
        },
        "health": {"state": "healthy", "since": None, "reason": ""},
        "success_rate_1h": 0.995,
        "recent": [_poll(v) for v in (10, 20, 40, 80)],
        "last_failure": None,
    }
    failing = {
        "name": "billing",
        "state": "stalled",
        "interval_s": 3.0,
        "next_due_s": None,
        "consecutive_failures": 4,
        "latest": {
            "status": "503",
            "ok": "0",
            "error_kind": "http_status",
            "error": "Unexpected status 503 Service Unavailable.",
            "elapsed_ms": "12.0",
            "lateness_ms": "7.0",
            "time": str(NOW - 3),
        },
        "health": {"state": "unhealthy", "since": NOW - 60, "reason": "4 failed"},
        "success_rate_1h": 0.5,
        "recent": [_poll(30), _poll(12, ok=False)],
        "last_failure": None,
    }
    return {
        "time": NOW,
        "endpoints": [healthy, failing],
        "queue": {"ready": 1, "delayed": 2, "dead": 3},
        "workers": [{"id": "host-a:4242", "threads": 4, "last_seen": NOW - 5}],
    }


def _render(overview: dict[str, Any], width: int = 200) -> str:
    console = Console(width=width, record=True, color_system=None, file=None)
    with console.capture() as capture:
        console.print(watch_view(overview))
    return capture.get()


def _line_of(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if name in line)


def test_watch_row_shows_healthy_endpoint() -> None:
    line = _line_of(_render(_overview()), "orders")
    assert "running" in line
    assert "200" in line
    assert "41 ms" in line
    assert "99.5 %" in line
    assert "in 2.0 s" in line


def test_watch_row_shows_failing_endpoint() -> None:
    line = _line_of(_render(_overview()), "billing")
    assert "stalled" in line
    assert "unhealthy" in line
    assert "503 http_status" in line
    assert "50.0 %" in line
    assert "Unexpected status 503" in line


def test_watch_trend_draws_latest_polls() -> None:
    line = _line_of(_render(_overview()), "orders")
    assert "▂▃▅█" in line


def test_watch_trend_marks_failed_polls() -> None:
    line = _line_of(_render(_overview()), "billing")
    assert "█x" in line


def test_watch_shows_queue_depths() -> None:
    text = _render(_overview())
    assert "ready 1  delayed 2  dead-lettered 3" in text


def test_watch_lists_workers_seen() -> None:
    text = _render(_overview())
    assert "1 seen in the last minute: host-a:4242 (4 threads)" in text


def test_watch_without_workers_says_how_to_start() -> None:
    overview = _overview()
    overview["workers"] = []
    assert "dramatiq bts_sync.actors" in _render(overview)


def test_watch_shows_redis_problem() -> None:
    console = Console(width=200, record=True, color_system=None)
    with console.capture() as capture:
        console.print(watch_view(_overview(), "Redis did not answer."))
    assert "Redis did not answer." in capture.get()


def test_watch_fits_narrow_console() -> None:
    text = _render(_overview(), width=100)
    assert all(len(line) <= 100 for line in text.splitlines())


def test_sparkline_scales_from_zero() -> None:
    assert sparkline([0.0, 50.0, 100.0]).plain == "▁▅█"


def test_sparkline_of_zeros_stays_flat() -> None:
    assert sparkline([0.0, 0.0]).plain == "▁▁"
