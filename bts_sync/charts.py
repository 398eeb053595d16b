"""SVG geometry of the dashboard's charts: polls scaled into polyline coordinates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bts_sync.overview import PollPoint


@dataclass(frozen=True)
class Chart:
    """An endpoint's latency and lateness as SVG polyline coordinates.

    Attributes:
        latency: ``x,y`` pairs of the request durations.
        lateness: ``x,y`` pairs of the lateness.
        failures: x positions of failed polls.
        top_ms: Value of the chart's top edge, in milliseconds.
        polls: Polls drawn.
        span_s: Seconds between the first and the last poll drawn.
    """

    latency: str
    lateness: str
    failures: list[float]
    top_ms: float
    polls: int
    span_s: float


#: Size of the chart's drawing area in SVG units.
CHART_WIDTH = 480
CHART_HEIGHT = 120


def chart(points: list[PollPoint]) -> Chart:
    """Scale polls into a chart of ``CHART_WIDTH`` by ``CHART_HEIGHT``, from 0 ms at the bottom."""
    if not points:
        return Chart("", "", [], 0.0, 0, 0.0)
    top = max(max(p.elapsed_ms, p.lateness_ms) for p in points) or 1.0
    top = _round_up(top)
    step = CHART_WIDTH / max(1, len(points) - 1)

    def y(value: float) -> float:
        return round(CHART_HEIGHT - max(0.0, value) / top * CHART_HEIGHT, 1)

    latency = " ".join(
        f"{round(i * step, 1)},{y(p.elapsed_ms)}" for i, p in enumerate(points)
    )
    lateness = " ".join(
        f"{round(i * step, 1)},{y(p.lateness_ms)}" for i, p in enumerate(points)
    )
    failures = [round(i * step, 1) for i, p in enumerate(points) if not p.ok]
    return Chart(
        latency=latency,
        lateness=lateness,
        failures=failures,
        top_ms=top,
        polls=len(points),
        span_s=points[-1].time - points[0].time,
    )


def _round_up(value: float) -> float:
    """Round up to 1, 2 or 5 times a power of ten, for a readable axis."""
    magnitude = 1.0
    while magnitude * 10 <= value:
        magnitude *= 10
    while magnitude > value and magnitude > 0.01:
        magnitude /= 10
    for factor in (1, 2, 5, 10):
        if value <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude  # pragma: no cover - the loop returns


def sparkline_points(
    recent: list[dict[str, Any]], width: int = 80, height: int = 20
) -> str:
    """Scale the latencies of the latest polls into polyline points for a small SVG."""
    values = [float(p["elapsed_ms"]) for p in recent]
    if len(values) < 2:
        return ""
    top = max(values) or 1.0
    step = width / (len(values) - 1)
    return " ".join(
        f"{round(i * step, 1)},{round(height - 1 - v / top * (height - 2), 1)}"
        for i, v in enumerate(values)
    )
