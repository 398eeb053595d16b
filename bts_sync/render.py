"""Output for people: poll results, headers and bodies.

A terminal gets rich output: colours, a table of headers, wrapped lines and
long bodies cut. Any other output gets the same content as plain text from
``plain_result``, which keeps long lines whole and loads no rich module, so
that ``bts-sync once`` in a script starts sooner.

Every string that comes from a server or a configuration goes into ``Text``
objects, which never interpret rich markup, so a body containing ``[bold]``
prints as it is. Control characters in server text are shown as
escapes such as ``\\x1b``, because rich passes ESC through to the terminal.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from bts_sync.fetch import FetchResult, dump_json

# rich modules are imported in the functions that use them, so that plain
# output never loads them.
if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.table import Table
    from rich.text import Text

#: Body lines printed to a terminal before the rest is cut, unless ``--full``.
MAX_BODY_LINES = 120


# C0 and C1 control characters other than tab, line feed and carriage return,
# which rich handles itself.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Replace control characters with visible escapes, so server text cannot drive the terminal."""
    return _CONTROL_RE.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


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


def _status_text(result: FetchResult) -> str:
    if result.status is None:
        return result.error_kind or "failed"
    return printable(f"{result.status} {result.reason}".rstrip())


def _timing_text(result: FetchResult) -> str:
    return f"  {result.elapsed_ms:.0f} ms  {format_size(result.size)}"


def status_line(result: FetchResult) -> Text:
    """Build the one-line summary: method, URL, status, elapsed time and size."""
    from rich.text import Text

    line = Text.assemble(
        (result.method, "bold"), " ", (printable(result.url), "cyan"), " "
    )
    line.append(_status_text(result), style=status_style(result.status, result.ok))
    line.append(_timing_text(result), style="dim")
    return line


def headers_table(headers: dict[str, str]) -> Table:
    """Build a two-column table of response headers."""
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=False, box=None, padding=(0, 1, 0, 0))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in headers.items():
        table.add_row(Text(printable(name)), Text(printable(value)))
    return table


def _body_text(body: Any, is_json: bool) -> str:
    if is_json:
        return dump_json(body)
    return "" if body is None else str(body)


def body_renderable(
    body: Any, is_json: bool, max_lines: int | None, highlight: bool = True
) -> RenderableType:
    """Pretty-print a body: JSON indented and, with ``highlight``, coloured; text as it is.

    Args:
        body: Decoded JSON value or text.
        is_json: Whether ``body`` is decoded JSON.
        max_lines: Lines shown before the rest is cut, or None for all.
        highlight: Colour JSON syntax. Pass False for a console without
            colours, where highlighting would only cost time.
    """
    from rich.console import Group
    from rich.text import Text

    text = _body_text(body, is_json)
    lines = text.splitlines()
    cut_note: Text | None = None
    if max_lines is not None and len(lines) > max_lines:
        hidden = len(lines) - max_lines
        text = "\n".join(lines[:max_lines])
        cut_note = Text(
            f"… {hidden} more lines; use --full to show them, or --json.",
            style="dim italic",
        )

    body_text = Text(printable(text))
    if is_json and highlight:
        # rich's regular-expression JSON highlighter, which rich.print_json uses.
        # rich.syntax with Pygments looks alike but adds about 7 ms of imports.
        from rich.highlighter import JSONHighlighter

        body_text = JSONHighlighter()(body_text)
    return Group(body_text, cut_note) if cut_note is not None else body_text


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
    from rich.text import Text

    console.print(status_line(result))
    if result.error:
        console.print(
            Text.assemble(
                ("error ", "bold red"),
                (result.error_kind or "", "red"),
                ": ",
                printable(result.error),
            )
        )
    if verbose and result.headers:
        console.print(headers_table(dict(result.headers)))
    if result.body is not None and result.body != "":
        console.print()
        max_lines = None if full or not console.is_terminal else MAX_BODY_LINES
        highlight = console.color_system is not None
        console.print(
            body_renderable(result.body, result.is_json, max_lines, highlight)
        )


def plain_result(result: FetchResult, verbose: bool = False) -> str:
    """Format a poll result as plain text, for output that is not a terminal.

    The content is that of ``print_result``: the status line, the error, the
    headers with ``verbose`` (one ``Name: value`` line each) and the whole body.
    Lines are not wrapped and nothing is styled.
    """
    lines = [
        f"{result.method} {printable(result.url)} {_status_text(result)}"
        + _timing_text(result)
    ]
    if result.error:
        lines.append(f"error {result.error_kind or ''}: {printable(result.error)}")
    if verbose:
        lines += [
            f"{printable(name)}: {printable(value)}"
            for name, value in result.headers.items()
        ]
    if result.body is not None and result.body != "":
        lines += ["", printable(_body_text(result.body, result.is_json))]
    return "\n".join(lines) + "\n"


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


#: Rich style of each chain state in tables.
STATE_STYLES = {
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
    from rich.table import Table
    from rich.text import Text

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
            Text(row["state"], style=STATE_STYLES.get(row["state"], "")),
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
    from rich.text import Text

    return Text.assemble(
        ("queue ", "bold"),
        f"ready {depths.get('ready', 0)}  delayed {depths.get('delayed', 0)}  dead-lettered {depths.get('dead', 0)}",
    )
