"""Regression tests for hostile input: odd configuration values, secrets in
unusual places, misbehaving servers and chains left behind by old configurations."""

from __future__ import annotations

import base64
import json
import logging
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result
from pytest_httpserver import HTTPServer
from support import forget_actors
from werkzeug import Response

from bts_sync import chain
from bts_sync.cli import cli
from bts_sync.config import Endpoint, load_settings
from bts_sync.errors import ConfigError
from bts_sync.fetch import fetch
from bts_sync.logs import apply_format_from_environment
from bts_sync.redact import RedactingFilter, mask_url

PASSWORD = "S3cretPassw0rd-71"
API_KEY = "apikey-secret-5c2e9"


@pytest.fixture(autouse=True)
def fresh_actors() -> Iterator[None]:
    """Drop ``bts_sync.actors`` around each test, so each command reads its own settings."""
    forget_actors()
    yield
    forget_actors()


def run_cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def write_config(folder: Path, text: str) -> Path:
    path = folder / "bts-sync.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("interval = nan", "interval = nan"),
        ("interval = inf", "interval = inf"),
        ("interval = 0.005", "at least 0.01 seconds"),
        ("interval = 0.0001", "must be at least 0.001 seconds"),
        ("deadline = nan", "deadline = nan"),
        ("timeout = 1e300", "timeout = 1e+300"),
        ('name = "a\\n"', "may use letters"),
    ],
    ids=[
        "interval-nan",
        "interval-inf",
        "interval-tiny",
        "interval-zero-ms",
        "deadline-nan",
        "timeout-huge",
        "name-newline",
    ],
)
def test_config_rejects_unusable_values(
    tmp_path: Path, line: str, expected: str
) -> None:
    name_line = "" if line.startswith("name") else 'name = "items"'
    path = write_config(
        tmp_path,
        f"""
        [[endpoints]]
        {name_line}
        url = "http://127.0.0.1:9/items"
        {line}
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    "redis_url",
    ["redis://:pw@[::1:6379/0", "redis://127.0.0.1:99999/0"],
    ids=["broken-ipv6", "port-out-of-range"],
)
def test_malformed_redis_url_is_config_error(tmp_path: Path, redis_url: str) -> None:
    result = run_cli("--redis-url", redis_url, "status")
    assert result.exit_code == 2
    assert "redis_url" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Unexpected" not in result.stderr


def test_malformed_webhook_url_is_config_error(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        alert_webhook = "http://[::1/hooks"
        [[endpoints]]
        name = "items"
        url = "http://127.0.0.1:9/items"
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert "alert_webhook" in str(caught.value)


def test_unparseable_url_masks_its_password() -> None:
    masked = mask_url(f"http://user:{PASSWORD}@[::1/x")
    assert PASSWORD not in masked
    assert "user:***@" in masked


def test_url_credentials_sent_as_basic_auth(httpserver: HTTPServer) -> None:
    # Given an endpoint whose URL carries a user name and password
    httpserver.expect_request("/private").respond_with_json({"ok": True})
    url = httpserver.url_for("/private").replace("http://", f"http://alice:{PASSWORD}@")

    # When it is fetched
    result = fetch(Endpoint(name="private", url=url))

    # Then the server received them as Basic auth, and the result hides them
    request, _ = httpserver.log[0]
    expected = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert request.headers.get("Authorization") == f"Basic {expected}"
    assert result.ok
    assert PASSWORD not in result.url


def test_secret_header_dropped_on_cross_host_redirect(httpserver: HTTPServer) -> None:
    # Given a server on 127.0.0.1 that redirects to the same port on localhost
    port = httpserver.port
    httpserver.expect_request("/start").respond_with_response(
        Response(status=302, headers={"Location": f"http://localhost:{port}/landing"})
    )
    httpserver.expect_request("/landing").respond_with_json({"ok": True})
    endpoint = Endpoint(
        name="redirected",
        url=f"http://127.0.0.1:{port}/start",
        headers={"X-Api-Key": API_KEY, "Accept-Language": "en"},
    )

    # When the endpoint is fetched
    result = fetch(endpoint)

    # Then the other host got the ordinary header but not the secret one
    assert result.ok
    landing, _ = httpserver.log[-1]
    assert landing.path == "/landing"
    assert landing.headers.get("Accept-Language") == "en"
    assert landing.headers.get("X-Api-Key") is None


def test_nan_in_json_body_is_invalid(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/nan").respond_with_data(
        '{"price": NaN}', content_type="application/json"
    )
    result = fetch(Endpoint(name="nan", url=httpserver.url_for("/nan")))
    assert result.error_kind == "invalid_json"
    assert "NaN" in (result.error or "")


def test_deep_json_prints_without_traceback(httpserver: HTTPServer) -> None:
    # Given a valid JSON body nested 600 levels deep
    depth = 600
    httpserver.expect_request("/deep").respond_with_data(
        "[" * depth + "]" * depth, content_type="application/json"
    )

    # When once prints it for a script and for a person
    as_json = run_cli("once", "--url", httpserver.url_for("/deep"), "--json")
    as_text = run_cli("once", "--url", httpserver.url_for("/deep"))

    # Then both succeed and the JSON document is complete
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout)["ok"] is True
    assert as_text.exit_code == 0
    assert "Traceback" not in as_text.stderr


def test_very_deep_json_is_invalid_not_a_crash(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/deeper").respond_with_data(
        "[" * 100_000, content_type="application/json"
    )
    result = run_cli("once", "--url", httpserver.url_for("/deeper"))
    assert result.exit_code == 1
    assert "invalid_json" in result.stdout
    assert "Traceback" not in result.stderr


def test_worker_handlers_mask_secrets_in_every_format() -> None:
    # Given a handler that Dramatiq set up before bts_sync.actors was imported
    handler = logging.StreamHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        # When the worker applies the environment's format, which is plain here
        apply_format_from_environment({})

        # Then the handler masks secrets anyway
        assert any(isinstance(f, RedactingFilter) for f in handler.filters)
    finally:
        root.removeHandler(handler)


def test_status_next_due_within_one_interval(redis_url: str, tmp_path: Path) -> None:
    # Given a running chain whose last claimed slot lies a lead time ahead
    path = write_config(
        tmp_path,
        """
        dispatch_lead = 2.5
        [[endpoints]]
        name = "fast"
        url = "http://127.0.0.1:9/fast"
        interval = 0.5
        """,
    )
    client = redis.Redis.from_url(redis_url)
    now_ms = int(time.time() * 1000)
    outcome = chain.seed(client, "bts_sync", "fast", 500, now_ms, 10_000, 2500)
    assert outcome.first_slot_ms is not None
    claimed = chain.claim(
        client, "bts_sync", "fast", outcome.token, outcome.first_slot_ms, 0
    )
    assert claimed == "claimed"

    # When status reports it
    result = run_cli(
        "--config", str(path), "--redis-url", redis_url, "status", "--json"
    )

    # Then the next poll is due within one interval, not at the claimed slot
    row = json.loads(result.stdout)["endpoints"][0]
    assert row["next_due_s"] - time.time() <= 0.5 + 0.1
    client.close()


def test_stop_ends_chain_of_removed_endpoint(redis_url: str, tmp_path: Path) -> None:
    # Given a chain that runs for an endpoint the configuration no longer has
    client = redis.Redis.from_url(redis_url)
    outcome = chain.seed(
        client, "bts_sync", "retired", 3000, int(time.time() * 1000), 13_000, 2500
    )
    assert outcome.started
    path = write_config(
        tmp_path,
        """
        [[endpoints]]
        name = "current"
        url = "http://127.0.0.1:9/current"
        """,
    )

    # When stop is run by name
    result = run_cli("--config", str(path), "--redis-url", redis_url, "stop", "retired")

    # Then the chain ends and the output notes that it is not configured
    assert result.exit_code == 0
    assert "not in the configuration" in result.stdout
    assert chain.running_names(client, "bts_sync") == []
    client.close()


def test_redis_error_reply_is_named(redis_url: str) -> None:
    """A database number the server lacks is an error reply, not "did not respond"."""
    base = redis_url.rsplit("/", 1)[0]
    result = run_cli(
        "--redis-url",
        f"redis://default:{PASSWORD}@{base[len('redis://') :]}/999",
        "status",
    )
    assert result.exit_code == 3
    assert PASSWORD not in result.stderr
    assert "returned an error" in result.stderr
    assert "Traceback" not in result.stderr
