"""``bts-sync once`` against httpbin, an HTTP server written outside this project."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from bts_sync.cli import cli


def run_once(*args: str) -> Result:
    """Run ``bts-sync once ARGS`` in-process."""
    return CliRunner().invoke(cli, ["once", *args], catch_exceptions=False)


def once_json(url: str) -> tuple[int, dict[str, Any]]:
    """Run ``bts-sync once --json --url URL``; return the exit code and the document."""
    result = run_once("--json", "--url", url)
    return result.exit_code, json.loads(result.stdout)


def test_json_route_succeeds(httpbin_url: str) -> None:
    exit_code, document = once_json(f"{httpbin_url}/json")

    assert exit_code == 0
    assert document["is_json"] is True
    assert document["body"]["slideshow"]["title"] == "Sample Slide Show"


def test_json_route_prints_body(httpbin_url: str) -> None:
    result = run_once("--url", f"{httpbin_url}/json")

    assert result.exit_code == 0
    assert result.stdout.startswith(f"GET {httpbin_url}/json 200 OK  ")
    assert '"title": "Sample Slide Show"' in result.stdout


def test_service_unavailable_fails(httpbin_url: str) -> None:
    exit_code, document = once_json(f"{httpbin_url}/status/503")

    assert exit_code == 1
    assert document["status"] == 503
    assert document["error_kind"] == "http_status"


def test_short_delay_fits_deadline(httpbin_url: str) -> None:
    exit_code, document = once_json(f"{httpbin_url}/delay/0.2")

    assert exit_code == 0
    assert document["elapsed_ms"] >= 200


def test_long_delay_times_out(httpbin_url: str, tmp_path: Path) -> None:
    # Given an endpoint whose reads may take 0.3 s and whole request 0.5 s
    config = tmp_path / "bts-sync.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [[endpoints]]
            name = "slow"
            url = "{httpbin_url}/delay/3"
            interval = 1
            timeout = 0.3
            deadline = 0.5
            """
        )
    )

    # When it is polled
    result = run_once("--json")

    # Then the poll fails as a timeout long before the server responds
    document = json.loads(result.stdout)
    assert result.exit_code == 1
    assert document["error_kind"] == "timeout"
    assert document["elapsed_ms"] < 2000


def test_redirects_are_followed(httpbin_url: str) -> None:
    exit_code, document = once_json(f"{httpbin_url}/redirect/3")

    assert exit_code == 0
    assert document["body"]["url"] == f"{httpbin_url}/get"


def test_too_many_redirects_fail(httpbin_url: str) -> None:
    exit_code, document = once_json(f"{httpbin_url}/redirect/6")

    assert exit_code == 1
    assert document["error_kind"] == "redirects"


def test_gzip_body_is_decoded(httpbin_url: str) -> None:
    result = run_once("-v", "--url", f"{httpbin_url}/gzip")

    assert result.exit_code == 0
    assert "Content-Encoding: gzip\n" in result.stdout
    assert '"gzipped": true' in result.stdout


def test_binary_body_is_kept_as_text(httpbin_url: str) -> None:
    exit_code, document = once_json(f"{httpbin_url}/bytes/2048")

    assert exit_code == 0
    assert document["size"] == 2048
    assert document["is_json"] is False
    assert document["content_type"] == "application/octet-stream"


def test_binary_body_prints_no_control_characters(httpbin_url: str) -> None:
    result = run_once("--url", f"{httpbin_url}/bytes/4096?seed=7")

    assert result.exit_code == 0
    assert "\x1b" not in result.stdout
    assert "\x00" not in result.stdout


def test_response_headers_print_literally(httpbin_url: str) -> None:
    url = f"{httpbin_url}/response-headers?X-Bts-Note=[bold]kept[/bold]"

    result = run_once("-v", "--url", url)

    assert result.exit_code == 0
    assert "X-Bts-Note: [bold]kept[/bold]\n" in result.stdout


def test_secret_response_header_is_masked(httpbin_url: str) -> None:
    url = f"{httpbin_url}/response-headers?Set-Cookie=session%3Dcookie-value-61"

    result = run_once("-v", "--url", url)

    assert result.exit_code == 0
    assert "Set-Cookie: ***\n" in result.stdout
