"""The live terminal view of ``bts-sync watch``: endpoints, queue depths and workers."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from bts_sync.render import STATE_STYLES, format_age, queue_line, status_style

#: Latest polls drawn in the latency trend.
TREND_POLLS = 12

_BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float | None]) -> Text:
    """Draw values as block characters scaled from 0 to their maximum; None, a failed poll, draws a red x."""
    numbers = [v for v in values if v is not None]
    top = max(numbers, default=0.0)
    line = Text()
    for value in values:
        if value is None:
            line.append("x", style="bold red")
            continue
        index = 0 if top <= 0 else round(value / top * (len(_BLOCKS) - 1))
        line.append(_BLOCKS[index], style="cyan")
    return line


def _latency_cell(row: dict[str, Any]) -> Text:
    latest = row.get("latest", {})
    recent = row.get("recent", [])[-TREND_POLLS:]
    cell = Text()
    if latest.get("elapsed_ms"):
        cell.append(f"{float(latest['elapsed_ms']):>5.0f} ms ")
    else:
        cell.append("    — ", style="dim")
    trend: list[float | None] = [p["elapsed_ms"] if p["ok"] else None for p in recent]
    cell.append_text(sparkline(trend))
    return cell


def _result_cell(latest: dict[str, Any]) -> Text:
    if not (latest.get("status") or latest.get("error_kind")):
        return Text("—", style="dim")
    ok = latest.get("ok") == "1"
    label = latest.get("status") or latest.get("error_kind", "")
    if not ok and latest.get("error_kind") and latest.get("status"):
        label = f"{latest['status']} {latest['error_kind']}"
    status = latest.get("status", "")
    return Text(
        label, style=status_style(int(status) if status.isdigit() else None, ok)
    )


def _rate_cell(rate: float | None) -> Text:
    if rate is None:
        return Text("—", style="dim")
    if rate >= 0.99:
        style = "green"
    elif rate >= 0.9:
        style = "yellow"
    else:
        style = "bold red"
    return Text(f"{rate * 100:.1f} %", style=style)


def _error_cell(row: dict[str, Any], now_s: float) -> Text:
    latest = row.get("latest", {})
    if latest.get("ok") == "0" and latest.get("error"):
        return Text(f"{latest.get('error_kind', '')}: {latest['error']}", style="red")
    failure = row.get("last_failure")
    if failure:
        age = format_age(now_s - failure["time"])
        return Text(f"{age}: {failure['error_kind']}: {failure['error']}", style="dim")
    return Text("—", style="dim")


def endpoints_table(overview: dict[str, Any]) -> Table:
    """Build the table with one row per endpoint."""
    now_s = overview["time"]
    table = Table(expand=False, header_style="bold", pad_edge=False)
    for column in (
        "endpoint",
        "state",
        "health",
        "result",
        "latency and trend",
        "ok 1 h",
        "late",
        "next",
        "fails",
    ):
        table.add_column(column, no_wrap=True)
    table.add_column("last error", no_wrap=True, overflow="ellipsis", max_width=48)

    for row in overview["endpoints"]:
        latest = row.get("latest", {})
        health = row.get("health", {}).get("state", "healthy")
        next_due = row.get("next_due_s")
        failures = row.get("consecutive_failures", 0)
        table.add_row(
            Text(row["name"], style="bold"),
            Text(row["state"], style=STATE_STYLES.get(row["state"], "")),
            Text("ok", style="green")
            if health != "unhealthy"
            else Text("unhealthy", style="bold red"),
            _result_cell(latest),
            _latency_cell(row),
            _rate_cell(row.get("success_rate_1h")),
            f"{float(latest['lateness_ms']):.0f} ms"
            if latest.get("lateness_ms")
            else "—",
            format_age(now_s - next_due) if next_due else "—",
            Text(str(failures), style="bold red" if failures else ""),
            _error_cell(row, now_s),
        )
    return table


def workers_line(workers: list[dict[str, Any]]) -> Text:
    """Build the line that lists the worker processes seen in the last minute."""
    if not workers:
        return Text.assemble(
            ("workers ", "bold"),
            (
                "none seen in the last minute; start one with: dramatiq bts_sync.actors",
                "yellow",
            ),
        )
    listed = ", ".join(f"{w['id']} ({w['threads']} threads)" for w in workers)
    return Text.assemble(
        ("workers ", "bold"), f"{len(workers)} seen in the last minute: {listed}"
    )


def watch_view(
    overview: dict[str, Any],
    problem: str = "",
    hint: str = "Ctrl+C quits; the chains go on.",
) -> RenderableType:
    """Build the whole view: endpoints, queue depths, workers and a hint."""
    clock = time.strftime("%H:%M:%S", time.localtime(overview["time"]))
    parts: list[RenderableType] = [
        Text.assemble(("bts-sync watch", "bold"), f"  {clock}"),
        endpoints_table(overview),
        queue_line(overview["queue"]),
        workers_line(overview.get("workers", [])),
    ]
    if problem:
        parts.append(Text(problem, style="bold red"))
    parts.append(Text(hint, style="dim"))
    return Group(*parts)
