"""The command line: ``bts-sync once`` and ``bts-sync config``, run through click's CliRunner."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import free_port
from pytest_httpserver import HTTPServer

from bts_sync.cli import cli

# Secrets of the secret-masking tests. Each is long and unusual, so finding it
# in output can only mean a leak.
SECRET_TOKEN = "sk-live-4f9a1c77e2d0"
SECRET_TENANT = "tenant-5e8d21b3c6"
SECRET_KEY = "qk-93b7d04e55a1"
SECRETS = (SECRET_TOKEN, SECRET_TENANT, SECRET_KEY)


def run_cli(*args: str, env: Mapping[str, str] | None = None) -> Result:
    """Run ``bts-sync ARGS`` in-process and return its exit code, stdout and stderr."""
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def write_config(folder: Path, text: str) -> Path:
    """Write ``bts-sync.toml`` into ``folder`` and return its path."""
    path = folder / "bts-sync.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def run_in_terminal(args: list[str], env: Mapping[str, str]) -> bytes:
    """Run ``args`` attached to a pseudo-terminal and return everything it printed."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        args, stdin=terminal, stdout=terminal, stderr=terminal, env=dict(env)
    )
    os.close(terminal)
    output = bytearray()
    give_up_at = time.monotonic() + 30
    try:
        while time.monotonic() < give_up_at:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
    return bytes(output)


def terminal_environment(**extra: str) -> dict[str, str]:
    """Return the environment for ``run_in_terminal``: this one, with a colour terminal."""
    return {**os.environ, "TERM": "xterm-256color", **extra}


# --- once: success and output ---------------------------------------------------


def test_once_prints_status_line_and_body(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items").respond_with_json({"items": [1, 2]})
    url = httpserver.url_for("/items")

    result = run_cli("once", "--url", url)

    assert result.exit_code == 0
    assert re.fullmatch(
        rf"GET {url} 200 OK  \d+ ms  \d+ B", result.stdout.split("\n")[0]
    )
    assert result.stdout.split("\n", 2)[2] == '{\n  "items": [\n    1,\n    2\n  ]\n}\n'
    assert result.stderr == ""


def test_once_json_prints_whole_result(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items").respond_with_json(
        {"items": []}, headers={"ETag": '"abc"'}
    )

    result = run_cli("once", "--url", httpserver.url_for("/items"), "--json")

    document = json.loads(result.stdout)
    assert result.exit_code == 0
    assert document["ok"] is True
    assert document["status"] == 200
    assert document["body"] == {"items": []}
    assert document["etag"] == '"abc"'
    assert document["endpoint"] == "ad-hoc"
    assert result.stderr == ""


def test_once_verbose_prints_response_headers(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items").respond_with_json(
        {}, headers={"X-Request-Id": "r-17"}
    )

    result = run_cli("once", "-v", "--url", httpserver.url_for("/items"))

    assert result.exit_code == 0
    assert "X-Request-Id: r-17\n" in result.stdout


def test_once_prints_non_ascii_text(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/greeting").respond_with_data(
        "Grüße aus Zürich, 東京", content_type="text/plain; charset=utf-8"
    )

    result = run_cli("once", "--url", httpserver.url_for("/greeting"))

    assert result.stdout.endswith("\n\nGrüße aus Zürich, 東京\n")


def test_once_prints_rich_markup_literally(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items").respond_with_json(
        {"title": "[bold]x[/bold]"}, headers={"X-Note": "[red]y[/red]"}
    )

    result = run_cli("once", "-v", "--url", httpserver.url_for("/items"))

    assert '"title": "[bold]x[/bold]"' in result.stdout
    assert "X-Note: [red]y[/red]" in result.stdout


def test_once_output_has_no_escape_codes(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items").respond_with_data(
        "\x1b[31mred\x1b[0m", content_type="text/plain", headers={"X-A": "b"}
    )

    result = run_cli("once", "-v", "--url", httpserver.url_for("/items"))

    assert "\x1b" not in result.stdout
    assert "\\x1b[31mred\\x1b[0m" in result.stdout


def test_once_polls_first_endpoint_by_default(
    httpserver: HTTPServer, tmp_path: Path
) -> None:
    httpserver.expect_request("/first").respond_with_json({})
    httpserver.expect_request("/second").respond_with_json({})
    write_config(
        tmp_path,
        f"""
        [[endpoints]]
        name = "first"
        url = "{httpserver.url_for("/first")}"

        [[endpoints]]
        name = "second"
        url = "{httpserver.url_for("/second")}"
        """,
    )

    result = run_cli("once")

    assert result.exit_code == 0
    assert [request.path for request, _ in httpserver.log] == ["/first"]


def test_once_polls_named_endpoint(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/first").respond_with_json({})
    httpserver.expect_request("/second").respond_with_json({})
    path = write_config(
        tmp_path,
        f"""
        [[endpoints]]
        name = "first"
        url = "{httpserver.url_for("/first")}"

        [[endpoints]]
        name = "second"
        url = "{httpserver.url_for("/second")}"
        """,
    )

    result = run_cli("--config", str(path), "once", "second")

    assert result.exit_code == 0
    assert [request.path for request, _ in httpserver.log] == ["/second"]


def test_once_url_keeps_named_endpoint_settings(
    httpserver: HTTPServer, tmp_path: Path
) -> None:
    httpserver.expect_request("/other").respond_with_json({})
    write_config(
        tmp_path,
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1:9/unused"
        headers = { X-Team = "ops" }
        """,
    )

    result = run_cli("once", "api", "--url", httpserver.url_for("/other"))

    request, _ = httpserver.log[-1]
    assert result.exit_code == 0
    assert request.headers["X-Team"] == "ops"


def test_url_variable_replaces_default_endpoint(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/ping").respond_with_json({"status": "ok"})

    result = run_cli("once", env={"BTS_SYNC_URL": httpserver.url_for("/ping")})

    assert result.exit_code == 0
    assert len(httpserver.log) == 1


def test_config_variable_names_file(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/items").respond_with_json({})
    path = tmp_path / "elsewhere.toml"
    path.write_text(
        f'[[endpoints]]\nname = "api"\nurl = "{httpserver.url_for("/items")}"\n'
    )

    result = run_cli("once", env={"BTS_SYNC_CONFIG": str(path)})

    assert result.exit_code == 0
    assert len(httpserver.log) == 1


# --- once: failures and exit codes ------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "content_type", "kind"),
    [
        (500, "{}", "application/json", "http_status"),
        (404, "missing", "text/plain", "http_status"),
        (200, '{"broken": ', "application/json", "invalid_json"),
    ],
    ids=["server-error", "not-found", "invalid-json"],
)
def test_endpoint_failure_exits_with_one(
    httpserver: HTTPServer, status: int, body: str, content_type: str, kind: str
) -> None:
    httpserver.expect_request("/items").respond_with_data(
        body, status=status, content_type=content_type
    )

    result = run_cli("once", "--url", httpserver.url_for("/items"))

    assert result.exit_code == 1
    assert f"\nerror {kind}: " in result.stdout
    assert result.stderr == ""


def test_endpoint_failure_json_exits_with_one(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items").respond_with_json({}, status=503)

    result = run_cli("once", "--json", "--url", httpserver.url_for("/items"))

    document = json.loads(result.stdout)
    assert result.exit_code == 1
    assert document["ok"] is False
    assert document["error_kind"] == "http_status"
    assert document["status"] == 503


def test_refused_connection_exits_with_one() -> None:
    url = f"http://127.0.0.1:{free_port()}/items"

    result = run_cli("once", "--url", url)

    assert result.exit_code == 1
    assert result.stdout.startswith(f"GET {url} connection  ")
    assert "Connection refused" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["once", "--url", "ftp://127.0.0.1/items"],
            "Error: Invalid configuration:\n"
            "  --url: url = 'ftp://127.0.0.1/items': must start with http:// or https://.\n",
        ),
        (
            ["--config", "absent.toml", "once"],
            "Error: Configuration file 'absent.toml' was not found. "
            "Check the path given with --config or BTS_SYNC_CONFIG.\n",
        ),
    ],
    ids=["bad-url", "missing-config-file"],
)
def test_usage_error_exits_with_two(args: list[str], message: str) -> None:
    result = run_cli(*args)

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == message


def test_unknown_option_exits_with_two() -> None:
    result = run_cli("once", "--no-such-flag")

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("Usage: cli once [OPTIONS] [NAME]\n")
    assert result.stderr.endswith("\nError: No such option '--no-such-flag'.\n")


def test_invalid_config_exits_with_two(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/items"
        interval = -1
        """,
    )

    result = run_cli("once")

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        "Error: Invalid configuration:\n"
        f"  {path.name}: endpoint 'api': interval = -1: must be greater than 0 seconds.\n"
    )


def test_unknown_endpoint_name_exits_with_two(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        """
        [[endpoints]]
        name = "orders"
        url = "http://127.0.0.1/orders"
        """,
    )

    result = run_cli("once", "order")

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        "Error: No endpoint is named 'order' (did you mean 'orders'?). "
        "Configured endpoints: orders.\n"
    )


def test_missing_variable_exits_with_two(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/items"
        headers = { Authorization = "Bearer ${API_TOKEN}" }
        """,
    )

    result = run_cli("once")

    assert result.exit_code == 2
    assert "environment variable API_TOKEN, which is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_documents_exit_codes() -> None:
    result = run_cli("--help")

    text = " ".join(result.stdout.split())
    assert result.exit_code == 0
    assert (
        "Exit codes: 0 success, 1 endpoint failed, 2 usage or configuration error"
        in text
    )


def test_version_is_printed() -> None:
    result = run_cli("--version")

    assert result.exit_code == 0
    assert re.fullmatch(r"bts-sync, version \d+\.\d+\.\d+\S*\n", result.stdout)


# --- variable substitution and secrets -----------------------------------------


@pytest.fixture
def secret_endpoint(httpserver: HTTPServer, tmp_path: Path) -> dict[str, str]:
    """Configure an endpoint whose URL, header and parameter come from secret variables.

    The server redirects to a URL that repeats the key, and echoes the key in
    a response header. Returns the environment that the commands need.
    """
    httpserver.expect_request(f"/{SECRET_TENANT}/start").respond_with_data(
        "",
        status=302,
        headers={"Location": f"/{SECRET_TENANT}/items?api_key={SECRET_KEY}"},
    )
    httpserver.expect_request(f"/{SECRET_TENANT}/items").respond_with_json(
        {"items": [1]}, headers={"X-Echo": f"key={SECRET_KEY}"}
    )
    path = write_config(
        tmp_path,
        f"""
        [[endpoints]]
        name = "private"
        url = "{httpserver.url_for("/")}${{TENANT}}/start"
        headers = {{ Authorization = "Bearer ${{API_TOKEN}}" }}
        params = {{ api_key = "${{API_KEY}}" }}
        """,
    )
    return {
        "BTS_SYNC_CONFIG": str(path),
        "TENANT": SECRET_TENANT,
        "API_TOKEN": SECRET_TOKEN,
        "API_KEY": SECRET_KEY,
    }


def test_variables_reach_server(
    httpserver: HTTPServer, secret_endpoint: dict[str, str]
) -> None:
    result = run_cli("once", env=secret_endpoint)

    first, _ = httpserver.log[0]
    assert result.exit_code == 0
    assert first.path == f"/{SECRET_TENANT}/start"
    assert first.args["api_key"] == SECRET_KEY
    assert first.headers["Authorization"] == f"Bearer {SECRET_TOKEN}"


@pytest.mark.parametrize(
    "args",
    [
        ["once"],
        ["once", "-v"],
        ["once", "--json"],
        ["config"],
        ["config", "--json"],
        ["--log-level", "debug", "once", "-v"],
        ["--log-level", "debug", "--log-format", "json", "once", "--json"],
    ],
    ids=[
        "once",
        "once-verbose",
        "once-json",
        "config",
        "config-json",
        "debug-log",
        "json-log",
    ],
)
def test_secrets_never_printed(
    httpserver: HTTPServer, secret_endpoint: dict[str, str], args: list[str]
) -> None:
    result = run_cli(*args, env=secret_endpoint)

    assert result.exit_code == 0
    for secret in SECRETS:
        assert secret not in result.stdout
        assert secret not in result.stderr


def test_file_secrets_masked_in_debug_log(
    httpserver: HTTPServer, tmp_path: Path
) -> None:
    # Given secret-looking query values written into the file itself
    httpserver.expect_request("/items").respond_with_json({})
    write_config(
        tmp_path,
        f"""
        [[endpoints]]
        name = "api"
        url = "{httpserver.url_for("/items")}?access_token=url-literal-5190"
        params = {{ api_key = "param-literal-5190", page = "2" }}
        """,
    )

    # When the command runs with DEBUG logs, which include urllib3's request line
    result = run_cli("--log-level", "debug", "once")

    # Then neither value appears, but the request was logged
    request, _ = httpserver.log[-1]
    assert request.args["api_key"] == "param-literal-5190"
    assert "url-literal-5190" not in result.stderr
    assert "param-literal-5190" not in result.stderr
    assert "page=2" in result.stderr


def test_masked_url_is_printed(
    httpserver: HTTPServer, secret_endpoint: dict[str, str]
) -> None:
    result = run_cli("once", env=secret_endpoint)

    first_line = result.stdout.split("\n")[0]
    assert first_line.startswith(
        f"GET {httpserver.url_for('/')}***/start?api_key=*** 200 OK"
    )


def test_debug_log_goes_to_stderr(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items").respond_with_json({})
    url = httpserver.url_for("/items")

    result = run_cli(
        "--log-level", "debug", "--log-format", "json", "once", "--url", url
    )

    records = [json.loads(line) for line in result.stderr.splitlines()]
    fetch_records = [r for r in records if r["logger"] == "bts_sync.fetch"]
    assert result.exit_code == 0
    assert result.stdout.startswith(f"GET {url} 200 OK")
    assert fetch_records[0]["message"].startswith(
        f"Fetched endpoint 'ad-hoc': GET {url} 200"
    )
    assert fetch_records[0]["level"] == "DEBUG"


# --- config -----------------------------------------------------------------------


def test_config_prints_resolved_configuration(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        key_prefix = "team_a"

        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/items"
        interval = 5
        """,
    )

    result = run_cli("config", "--json")

    document = json.loads(result.stdout)
    endpoint = document["endpoints"][0]
    assert result.exit_code == 0
    assert document["source"] == path.name
    assert document["key_prefix"] == "team_a"
    assert endpoint["interval"] == 5.0
    assert endpoint["deadline"] == 4.0
    assert endpoint["success_status"] == ["2xx"]
    assert result.stderr == ""


def test_config_text_shows_each_key(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/items"
        """,
    )

    result = run_cli("config")

    assert result.exit_code == 0
    document = json.loads(result.stdout)
    assert document["endpoints"][0]["url"] == "http://127.0.0.1/items"
    assert document["endpoints"][0]["max_redirects"] == 5
    assert "\x1b" not in result.stdout


def test_config_error_exits_with_two(tmp_path: Path) -> None:
    write_config(tmp_path, "unknown_key = 1\n")

    result = run_cli("config")

    assert result.exit_code == 2
    assert result.stdout == ""
    assert "unknown_key = 1: is not a known top-level key" in result.stderr


# --- processes: imports and terminals -------------------------------------------


def test_once_imports_neither_dramatiq_nor_redis(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items").respond_with_json({})
    command = [sys.executable, "-X", "importtime", "-m", "bts_sync", "once"]

    completed = subprocess.run(
        [*command, "--url", httpserver.url_for("/items")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in completed.stderr.splitlines()
        if line.startswith("import time:")
    }
    top_level = {name.split(".")[0] for name in imported}
    assert completed.returncode == 0
    assert "bts_sync.fetch" in imported
    assert "dramatiq" not in top_level
    assert "redis" not in top_level
    assert "periodiq" not in top_level


def test_terminal_output_is_coloured(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items").respond_with_json({"a": 1})
    command = [sys.executable, "-m", "bts_sync", "once"]

    output = run_in_terminal(
        [*command, "--url", httpserver.url_for("/items")], terminal_environment()
    )

    assert b"\x1b[" in output
    assert b"200 OK" in output


def test_no_color_terminal_gets_no_escape_codes(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items").respond_with_json(
        {"a": 1}, headers={"X-A": "b"}
    )
    command = [sys.executable, "-m", "bts_sync", "once", "-v"]

    output = run_in_terminal(
        [*command, "--url", httpserver.url_for("/items")],
        terminal_environment(NO_COLOR="1"),
    )

    assert b"200 OK" in output
    assert b"\x1b" not in output
