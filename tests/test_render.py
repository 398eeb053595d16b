"""Output for people: rich on a fixed-width console, and plain text."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest
from rich.console import Console

from bts_sync.fetch import FetchResult
from bts_sync.render import (
    MAX_BODY_LINES,
    format_size,
    plain_result,
    print_result,
    printable,
    status_style,
)

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def make_result(**fields: Any) -> FetchResult:
    """Return a successful JSON result; ``fields`` override its values."""
    values: dict[str, Any] = {
        "endpoint": "api",
        "method": "GET",
        "url": "http://127.0.0.1:8080/items",
        "started_at": 0.0,
        "elapsed_ms": 12.4,
        "status": 200,
        "reason": "OK",
        "size": 1500,
        "headers": {"Content-Type": "application/json"},
        "content_type": "application/json",
        "body": {"items": [1, 2]},
        "is_json": True,
    }
    values.update(fields)
    return FetchResult(**values)


def render(
    result: FetchResult,
    verbose: bool = False,
    full: bool = False,
    terminal: bool = False,
    color_system: str | None = None,
) -> str:
    """Print ``result`` on a 100-column in-memory console and return the text."""
    output = io.StringIO()
    console = Console(
        file=output,
        width=100,
        color_system=color_system,  # type: ignore[arg-type]
        force_terminal=terminal,
        highlight=False,
        soft_wrap=False,
    )
    print_result(console, result, verbose=verbose, full=full)
    return output.getvalue()


def test_rich_output_shows_status_line_and_body() -> None:
    text = render(make_result())

    assert text.splitlines() == [
        "GET http://127.0.0.1:8080/items 200 OK  12 ms  1.5 kB",
        "",
        "{",
        '  "items": [',
        "    1,",
        "    2",
        "  ]",
        "}",
    ]


def test_rich_output_shows_error_line() -> None:
    result = make_result(
        status=503,
        reason="Service Unavailable",
        error_kind="http_status",
        error="Unexpected status 503 Service Unavailable.",
        body=None,
        size=0,
    )

    lines = render(result).splitlines()

    assert lines == [
        "GET http://127.0.0.1:8080/items 503 Service Unavailable  12 ms  0 B",
        "error http_status: Unexpected status 503 Service Unavailable.",
    ]


def test_rich_output_names_error_kind_without_status() -> None:
    result = make_result(
        status=None, reason="", error_kind="timeout", error="Timed out.", body=None
    )

    first_line = render(result).splitlines()[0]

    assert first_line == "GET http://127.0.0.1:8080/items timeout  12 ms  1.5 kB"


def test_rich_output_lists_headers_when_verbose() -> None:
    result = make_result(headers={"Content-Type": "application/json", "ETag": '"7"'})

    lines = render(result, verbose=True).splitlines()

    assert lines[1].rstrip() == "Content-Type application/json"
    assert lines[2].rstrip() == 'ETag         "7"'


def test_rich_output_hides_headers_by_default() -> None:
    text = render(make_result(headers={"ETag": '"7"'}))

    assert "ETag" not in text


@pytest.mark.parametrize(
    ("fields", "verbose"),
    [
        ({"body": {"title": "[bold]x[/bold]"}}, False),
        ({"body": "[bold]x[/bold]", "is_json": False}, False),
        ({"headers": {"X-Note": "[bold]x[/bold]"}}, True),
        ({"reason": "[bold]x[/bold]"}, False),
        ({"error_kind": "http_status", "error": "[bold]x[/bold]"}, False),
    ],
    ids=["json-body", "text-body", "header", "reason", "error"],
)
def test_rich_markup_from_server_prints_literally(
    fields: dict[str, Any], verbose: bool
) -> None:
    text = render(make_result(**fields), verbose=verbose)

    assert "[bold]x[/bold]" in text


def test_no_escape_codes_without_colour_system() -> None:
    text = render(make_result(headers={"A": "b"}), verbose=True, terminal=True)

    assert "\x1b" not in text


def test_colours_only_add_escape_codes() -> None:
    # Given the same result printed with and without colours
    plain = render(make_result(), terminal=True)
    coloured = render(make_result(), terminal=True, color_system="standard")

    # Then the coloured output has escape codes, and nothing else differs
    assert "\x1b[" in coloured
    assert ANSI_ESCAPE.sub("", coloured) == plain


def test_control_characters_from_server_are_escaped() -> None:
    result = make_result(body="a\x1b[31mred\x07", is_json=False)

    text = render(result)

    assert "\x1b" not in text
    assert "a\\x1b[31mred\\x07" in text


def test_long_body_is_cut_on_terminal() -> None:
    body = list(range(MAX_BODY_LINES * 2))

    lines = render(make_result(body=body), terminal=True).splitlines()

    assert len(lines) == 2 + MAX_BODY_LINES + 1
    assert lines[-1] == (
        f"… {len(body) + 2 - MAX_BODY_LINES} more lines; "
        "use --full to show them, or --json."
    )


def test_full_prints_whole_body_on_terminal() -> None:
    body = list(range(MAX_BODY_LINES * 2))

    lines = render(make_result(body=body), terminal=True, full=True).splitlines()

    assert lines[-1] == "]"
    assert len(lines) == 2 + len(body) + 2


def test_long_body_is_whole_when_not_terminal() -> None:
    body = list(range(MAX_BODY_LINES * 2))

    lines = render(make_result(body=body)).splitlines()

    assert len(lines) == 2 + len(body) + 2


def test_non_ascii_text_is_printed() -> None:
    text = render(make_result(body={"city": "Zürich 東京"}))

    assert '"city": "Zürich 東京"' in text


def test_plain_output_has_same_content() -> None:
    result = make_result(headers={"ETag": '"7"'})

    text = plain_result(result, verbose=True)

    assert text == (
        "GET http://127.0.0.1:8080/items 200 OK  12 ms  1.5 kB\n"
        'ETag: "7"\n'
        "\n" + json.dumps({"items": [1, 2]}, indent=2) + "\n"
    )


def test_plain_output_keeps_long_lines_whole() -> None:
    long_value = "x" * 300

    text = plain_result(make_result(body={"value": long_value}))

    assert f'  "value": "{long_value}"\n' in text


def test_plain_output_shows_error_line() -> None:
    result = make_result(
        status=None, reason="", error_kind="connection", error="Refused.", body=None
    )

    text = plain_result(result)

    assert text == (
        "GET http://127.0.0.1:8080/items connection  12 ms  1.5 kB\n"
        "error connection: Refused.\n"
    )


def test_plain_output_escapes_control_characters() -> None:
    result = make_result(
        body="\x1b]0;title\x07", is_json=False, headers={"X-A": "\x1bb"}
    )

    text = plain_result(result, verbose=True)

    assert "\x1b" not in text
    assert "X-A: \\x1bb" in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("tab\tand\nnewline\r\n", "tab\tand\nnewline\r\n"),
        ("\x1b[2J", "\\x1b[2J"),
        ("\x00\x7f\x9b", "\\x00\\x7f\\x9b"),
        ("Grüße", "Grüße"),
    ],
    ids=["plain", "whitespace", "escape", "c0-del-c1", "non-ascii"],
)
def test_printable_escapes_control_characters(text: str, expected: str) -> None:
    assert printable(text) == expected


@pytest.mark.parametrize(
    ("size", "expected"),
    [(0, "0 B"), (999, "999 B"), (1500, "1.5 kB"), (2_500_000, "2.5 MB")],
    ids=["zero", "bytes", "kilobytes", "megabytes"],
)
def test_format_size_picks_unit(size: int, expected: str) -> None:
    assert format_size(size) == expected


@pytest.mark.parametrize(
    ("status", "ok", "expected"),
    [
        (200, True, "bold green"),
        (304, True, "bold yellow"),
        (404, False, "bold red"),
        (200, False, "bold red"),
        (None, False, "bold red"),
    ],
    ids=["success", "redirect", "client-error", "failed-check", "no-response"],
)
def test_status_style_follows_outcome(
    status: int | None, ok: bool, expected: str
) -> None:
    assert status_style(status, ok) == expected
