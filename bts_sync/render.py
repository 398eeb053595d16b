"""Rich output for people: poll results, headers and bodies.

Every string that comes from a server or a configuration goes into ``Text``
objects or ``Syntax``, which never interpret rich markup, so a body containing
``[bold]`` prints as it is. Control characters in server text are shown as
escapes such as ``\\x1b``, because rich passes ESC through to the terminal.
"""

from __future__ import annotations

import json
import re
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from bts_sync.fetch import FetchResult

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


def status_line(result: FetchResult) -> Text:
    """Build the one-line summary: method, URL, status, elapsed time and size."""
    line = Text.assemble(
        (result.method, "bold"), " ", (printable(result.url), "cyan"), " "
    )
    if result.status is not None:
        line.append(
            printable(f"{result.status} {result.reason}".rstrip()),
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
        table.add_row(Text(printable(name)), Text(printable(value)))
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
        body_part = Text(printable(text))
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
                printable(result.error),
            )
        )
    if verbose and result.headers:
        console.print(headers_table(dict(result.headers)))
    if result.body is not None and result.body != "":
        console.print()
        max_lines = None if full or not console.is_terminal else MAX_BODY_LINES
        console.print(body_renderable(result.body, result.is_json, max_lines))
