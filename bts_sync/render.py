"""Rich output for people: poll results, headers and bodies.

Every string that comes from a server or a configuration goes into ``Text``
objects or ``Syntax``, which never interpret rich markup, so a body containing
``[bold]`` prints as it is.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from bts_sync.fetch import FetchResult

#: Body lines printed to a terminal before the rest is cut, unless ``--full``.
MAX_BODY_LINES = 120


def status_style(status: int | None, ok: bool = True) -> str:
    """Return the rich style of a status code: green success, yellow redirect, red failure."""
    if status is None or not ok:
        return "bold red"
    if status < 300:
        return "bold green"
    if status < 400:
        return "bold yellow"
    return "bold red"


def format_size(size: int) -> str:
    """Format a byte count for people, such as ``512 B`` or ``1.4 kB``."""
    value = float(size)
    for unit in ("B", "kB", "MB"):
        if value < 1000 or unit == "MB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"  # pragma: no cover - loop always returns


def status_line(result: FetchResult) -> Text:
    """Build the one-line summary: method, URL, status, elapsed time and size."""
    line = Text.assemble((result.method, "bold"), " ", (result.url, "cyan"), " ")
    if result.status is not None:
        line.append(
            f"{result.status} {result.reason}".rstrip(),
            style=status_style(result.status, result.ok),
        )
    else:
        line.append(result.error_kind or "failed", style="bold red")
    line.append(
        f"  {result.elapsed_ms:.0f} ms  {format_size(result.size)}", style="dim"
    )
    return line


def headers_table(headers: dict[str, str]) -> Table:
    """Build a two-column table of response headers."""
    table = Table(show_header=False, box=None, padding=(0, 1, 0, 0))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in headers.items():
        table.add_row(Text(name), Text(value))
    return table


def body_renderable(body: Any, is_json: bool, max_lines: int | None) -> RenderableType:
    """Pretty-print a body: highlighted JSON, or plain text, cut after ``max_lines``."""
    if is_json:
        text = json.dumps(body, indent=2, ensure_ascii=False)
    else:
        text = "" if body is None else str(body)

    lines = text.splitlines()
    cut_note: Text | None = None
    if max_lines is not None and len(lines) > max_lines:
        hidden = len(lines) - max_lines
        text = "\n".join(lines[:max_lines])
        cut_note = Text(
            f"… {hidden} more lines; use --full to show them, or --json.",
            style="dim italic",
        )

    body_part: RenderableType
    if is_json:
        body_part = Syntax(
            text, "json", theme="ansi_dark", word_wrap=True, background_color="default"
        )
    else:
        body_part = Text(text)
    return Group(body_part, cut_note) if cut_note is not None else body_part


def print_result(
    console: Console, result: FetchResult, verbose: bool = False, full: bool = False
) -> None:
    """Print a poll result for a person.

    Args:
        console: Where to print.
        result: The poll result.
        verbose: Also print the response headers.
        full: Print the whole body even when it is long.
    """
    console.print(status_line(result))
    if result.error:
        console.print(
            Text.assemble(
                ("error ", "bold red"),
                (result.error_kind or "", "red"),
                ": ",
                result.error,
            )
        )
    if verbose and result.headers:
        console.print(headers_table(dict(result.headers)))
    if result.body is not None and result.body != "":
        console.print()
        max_lines = None if full or not console.is_terminal else MAX_BODY_LINES
        console.print(body_renderable(result.body, result.is_json, max_lines))


def format_age(seconds: float | None) -> str:
    """Format a duration in the past for people, such as ``4 s ago``."""
    if seconds is None:
        return "never"
    if seconds < 0:
        return f"in {format_duration(-seconds)}"
    return f"{format_duration(seconds)} ago"


def format_duration(seconds: float) -> str:
    """Format seconds as ``850 ms``, ``4.2 s``, ``12 s``, ``3 min`` or ``2 h``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


_STATE_STYLES = {
    "running": "green",
    "stalled": "bold yellow",
    "stopped": "dim",
    "backing off": "yellow",
    "paused": "yellow",
}


def status_table(rows: list[dict[str, Any]], now_s: float) -> Table:
    """Build the table of endpoint states that ``status`` and ``run`` show.

    Args:
        rows: One dict per endpoint, as built by ``bts_sync.commands.collect_status``.
        now_s: Current Unix time, for ages and due times.
    """
    table = Table(expand=False, header_style="bold", pad_edge=False)
    for column in (
        "endpoint",
        "state",
        "until",
        "every",
        "last poll",
        "result",
        "took",
        "late",
        "next",
        "failed",
        "changes",
    ):
        table.add_column(column, no_wrap=True)

    for row in rows:
        latest = row.get("latest", {})
        ok = latest.get("ok") == "1"
        result = Text("—", style="dim")
        if latest.get("status") or latest.get("error_kind"):
            label = latest.get("status") or latest.get("error_kind", "")
            if not ok and latest.get("error_kind") and latest.get("status"):
                label = f"{latest['status']} {latest['error_kind']}"
            status_number = (
                int(latest["status"]) if latest.get("status", "").isdigit() else None
            )
            result = Text(label, style=status_style(status_number, ok))
        last_time = float(latest["time"]) if latest.get("time") else None
        next_due = row.get("next_due_s")
        held_until = row.get("held_until_s")
        table.add_row(
            Text(row["name"]),
            Text(row["state"], style=_STATE_STYLES.get(row["state"], "")),
            format_age(now_s - held_until) if held_until else "—",
            f"{row['interval_s']:g} s",
            format_age(now_s - last_time if last_time else None),
            result,
            f"{float(latest['elapsed_ms']):.0f} ms"
            if latest.get("elapsed_ms")
            else "—",
            f"{float(latest['lateness_ms']):.0f} ms"
            if latest.get("lateness_ms")
            else "—",
            format_age(now_s - next_due) if next_due else "—",
            f"{row['consecutive_failures']}/{row['failures']}",
            str(row["changes"]),
        )
    return table


def queue_line(depths: dict[str, int]) -> Text:
    """Build the one-line summary of queue depths."""
    return Text.assemble(
        ("queue ", "bold"),
        f"ready {depths.get('ready', 0)}  delayed {depths.get('delayed', 0)}  dead-lettered {depths.get('dead', 0)}",
    )
