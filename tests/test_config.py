"""Loading, merging and validating the configuration."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bts_sync.config import (
    DEFAULT_REDIS_URL,
    DEFAULT_URL,
    ad_hoc_endpoint,
    load_settings,
)
from bts_sync.errors import ConfigError, UnknownEndpointError


def write_config(folder: Path, text: str, name: str = "bts-sync.toml") -> Path:
    """Write a TOML file into ``folder`` and return its path."""
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    """Load ``path`` with no environment variables, expect a ConfigError, and return its message."""
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    return str(caught.value)


# Each case: the file, loaded with no environment variables, and the fragments
# its error must contain besides the file's path: the endpoint, the key, the
# value and the fix.
INVALID_CONFIGURATIONS = [
    pytest.param(
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/items"
        intervall = 3
        """,
        ["endpoint 'api'", "intervall = 3", "did you mean 'interval'?"],
        id="unknown-endpoint-key",
    ),
    pytest.param(
        """
        endpoint = []
        """,
        ["endpoint = []", "not a known top-level key", "did you mean 'endpoints'?"],
        id="unknown-top-level-key",
    ),
    pytest.param(
        """
        [[endpoints]]
        name = "api"
        url = "127.0.0.1/items"
        """,
        ["endpoint 'api'", "url = '127.0.0.1/items'", "must start with http://"],
        id="url-without-scheme",
    ),
    pytest.param(
        """
        [[endpoints]]
        name = "api"
        url = "ftp://127.0.0.1/items"
        """,
        ["endpoint 'api'", "url = 'ftp://127.0.0.1/items'", "must start with http://"],
        id="url-with-other-scheme",
    ),
    pytest.param(
        """
        [[endpoints]]
        name = "api"
        url = "http:///items"
        """,
        ["endpoint 'api'", "url = 'http:///items'", "has no host"],
        id="url-without-host",
    ),
    pytest.param(
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1:99999/items"
        """,
        ["endpoint 'api'", "url = 'http://127.0.0.1:99999/items'", "not a valid URL"],
        id="url-with-bad-port",
    ),
    pytest.param(
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/items"
        interval = 0
        """,
        ["endpoint 'api'", "interval = 0", "must be greater than 0 seconds"],
        id="zero-interval",
    ),
    pytest.param(
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/items"
        interval = -2.5
        """,
        ["endpoint 'api'", "interval = -2.5", "must be greater than 0 seconds"],
        id="negative-interval",
    ),
    pytest.param(
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/items"
        interval = 2
        deadline = 5
        """,
        [
            "endpoint 'api'",
            "deadline = 5.0",
            "longer than the interval (2 s)",
            "set deadline to at most 2",
        ],
        id="deadline-over-interval",
    ),
    pytest.param(
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/a"

        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/b"
        """,
        ["endpoint name 'api' is used twice", "give each endpoint its own name"],
        id="duplicate-names",
    ),
    pytest.param(
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/items"
        interval = "3"
        """,
        ["endpoint 'api'", "interval = '3'", "must be a number of seconds"],
        id="interval-as-string",
    ),
    pytest.param(
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/items"
        max_bytes = 1.5
        """,
        ["endpoint 'api'", "max_bytes = 1.5", "must be a whole number"],
        id="max-bytes-as-float",
    ),
    pytest.param(
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/items"
        verify_tls = "yes"
        """,
        ["endpoint 'api'", "verify_tls = 'yes'", "must be true or false"],
        id="verify-tls-as-string",
    ),
    pytest.param(
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/items"
        headers = "Accept: application/json"
        """,
        ["endpoint 'api'", "headers = 'Accept: application/json'", "must be a table"],
        id="headers-as-string",
    ),
    pytest.param(
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/items"
        headers = { X-Retry = true }
        """,
        ["endpoint 'api'", "headers.X-Retry = True", "must be a string or a number"],
        id="header-value-as-boolean",
    ),
    pytest.param(
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/items"
        method = "FETCH"
        """,
        ["endpoint 'api'", "method = 'FETCH'", "must be one of GET, POST"],
        id="unknown-method",
    ),
    pytest.param(
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/items"
        success_status = [200, 600]
        """,
        ["endpoint 'api'", "success_status = 600", 'a class like "2xx"'],
        id="status-out-of-range",
    ),
    pytest.param(
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/items"
        timeout = { connect = "1s" }
        """,
        ["endpoint 'api'", "timeout.connect = '1s'", "must be a number of seconds"],
        id="timeout-as-string",
    ),
    pytest.param(
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/items"
        timeout = { conect = 1 }
        """,
        ["endpoint 'api'", "timeout.conect = 1", 'use "connect" and "read"'],
        id="unknown-timeout-key",
    ),
    pytest.param(
        """
        [[endpoints]]
        name = "my api"
        url = "http://127.0.0.1/items"
        """,
        ["endpoint 'my api'", "name = 'my api'", "letters, digits"],
        id="name-with-space",
    ),
    pytest.param(
        """
        [[endpoints]]
        name = "api"
        """,
        ["endpoint 'api'", "missing the key 'url'", 'add url = "..."'],
        id="missing-url",
    ),
    pytest.param(
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/items"
        json = { q = 1 }
        """,
        ["endpoint 'api'", "json", 'set method = "POST"'],
        id="json-body-with-get",
    ),
    pytest.param(
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/items"
        headers = { Authorization = "Bearer ${API_TOKEN}" }
        """,
        [
            "endpoint 'api'",
            "headers.Authorization",
            "environment variable API_TOKEN, which is not set",
            "Set API_TOKEN",
        ],
        id="missing-variable-in-header",
    ),
    pytest.param(
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/${API_PATH}"
        """,
        ["endpoint 'api'", "url refers to", "API_PATH, which is not set"],
        id="missing-variable-in-url",
    ),
    pytest.param(
        """
        [defaults]
        url = "http://127.0.0.1/items"

        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/items"
        """,
        ["[defaults] url", "cannot be shared by all endpoints"],
        id="url-in-defaults",
    ),
    pytest.param(
        """
        history_length = 0
        """,
        ["history_length = 0", "must be a whole number greater than 0"],
        id="zero-history-length",
    ),
    pytest.param(
        """
        redis_url = "http://127.0.0.1:6379"
        """,
        ["redis_url = 'http://127.0.0.1:6379'", "must start with redis://"],
        id="redis-url-with-http-scheme",
    ),
]


@pytest.mark.parametrize(("text", "fragments"), INVALID_CONFIGURATIONS)
def test_invalid_configuration_is_explained(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    path = write_config(tmp_path, text)

    message = config_error(path)

    assert message.startswith("Invalid configuration")
    assert f"{path}: " in message
    for fragment in fragments:
        assert fragment in message


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        [[endpoints]]
        name = "api"
        url = "ftp://127.0.0.1/items"
        interval = 0
        """,
    )

    message = config_error(path)

    assert message.startswith("Invalid configuration (2 problems):")
    assert "url = 'ftp://127.0.0.1/items'" in message
    assert "interval = 0" in message


def test_invalid_interval_variable_is_explained() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"BTS_SYNC_INTERVAL": "fast"})

    message = str(caught.value)
    assert "configuration: BTS_SYNC_INTERVAL = 'fast'" in message
    assert "must be a number of seconds" in message


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'name = "unterminated\n')

    message = config_error(path)

    assert str(path) in message
    assert "invalid TOML" in message
    assert "line 1" in message


def test_missing_file_is_explained(tmp_path: Path) -> None:
    message = config_error(tmp_path / "absent.toml")

    assert "absent.toml' was not found" in message
    assert "--config or BTS_SYNC_CONFIG" in message


def test_folder_as_config_is_explained(tmp_path: Path) -> None:
    message = config_error(tmp_path)

    assert "is a folder; name a TOML file" in message


def test_no_file_gives_default_endpoint() -> None:
    settings = load_settings(env={})

    (endpoint,) = settings.endpoints
    assert endpoint.name == "default"
    assert endpoint.url == DEFAULT_URL
    assert endpoint.interval_s == 3.0
    assert endpoint.deadline_s == 2.4
    assert settings.source is None


def test_url_and_interval_variables_change_default_endpoint() -> None:
    env = {"BTS_SYNC_URL": "http://127.0.0.1:8080/ping", "BTS_SYNC_INTERVAL": "60"}

    (endpoint,) = load_settings(env=env).endpoints

    assert endpoint.url == "http://127.0.0.1:8080/ping"
    assert endpoint.interval_s == 60.0
    assert endpoint.deadline_s == 10.0
    assert endpoint.connect_timeout_s == 5.0


def test_endpoint_defaults_are_filled_in(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/items"
        interval = 1
        """,
    )

    (endpoint,) = load_settings(path, env={}).endpoints

    assert endpoint.method == "GET"
    assert endpoint.deadline_s == 0.8
    assert endpoint.read_timeout_s == 0.8
    assert endpoint.verify_tls is True
    assert endpoint.max_redirects == 5
    assert endpoint.max_bytes == 10 * 1024 * 1024
    assert endpoint.success_statuses == frozenset(range(200, 300))


def test_every_endpoint_key_is_read(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        [[endpoints]]
        name = "search"
        url = "https://127.0.0.1/search"
        method = "post"
        headers = { Accept = "application/json", X-Page-Size = 50 }
        params = { lang = "en" }
        json = { query = "bts" }
        interval = 10
        timeout = { connect = 1, read = 4 }
        deadline = 8
        max_bytes = 2048
        max_redirects = 0
        verify_tls = false
        success_status = ["2xx", 304]
        """,
    )

    (endpoint,) = load_settings(path, env={}).endpoints

    assert endpoint.method == "POST"
    assert endpoint.headers == {"Accept": "application/json", "X-Page-Size": "50"}
    assert endpoint.params == {"lang": "en"}
    assert endpoint.json_body == {"query": "bts"}
    assert endpoint.interval_s == 10.0
    assert endpoint.connect_timeout_s == 1.0
    assert endpoint.read_timeout_s == 4.0
    assert endpoint.deadline_s == 8.0
    assert endpoint.max_bytes == 2048
    assert endpoint.max_redirects == 0
    assert endpoint.verify_tls is False
    assert endpoint.success_statuses == frozenset(range(200, 300)) | {304}


def test_single_timeout_sets_connect_and_read(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/items"
        timeout = 1.5
        """,
    )

    (endpoint,) = load_settings(path, env={}).endpoints

    assert endpoint.connect_timeout_s == 1.5
    assert endpoint.read_timeout_s == 1.5


def test_defaults_table_applies_to_every_endpoint(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        [defaults]
        interval = 10
        headers = { Accept = "application/json" }

        [[endpoints]]
        name = "a"
        url = "http://127.0.0.1/a"

        [[endpoints]]
        name = "b"
        url = "http://127.0.0.1/b"
        interval = 20
        """,
    )

    a, b = load_settings(path, env={}).endpoints

    assert a.interval_s == 10.0
    assert b.interval_s == 20.0
    assert b.headers == {"Accept": "application/json"}


def test_variables_are_substituted(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/${TENANT}/items"
        headers = { Authorization = "Bearer ${API_TOKEN}" }
        params = { region = "${REGION}" }
        """,
    )
    env = {"TENANT": "acme", "API_TOKEN": "tok-substituted-1", "REGION": "eu"}

    (endpoint,) = load_settings(path, env=env).endpoints

    assert endpoint.url == "http://127.0.0.1/acme/items"
    assert endpoint.headers == {"Authorization": "Bearer tok-substituted-1"}
    assert endpoint.params == {"region": "eu"}


@pytest.mark.parametrize(
    ("flag", "env", "file_value", "expected"),
    [
        (
            "redis://flag:6379/0",
            {"BTS_SYNC_REDIS_URL": "redis://bts:6379/0", "REDIS_URL": "redis://r/0"},
            "redis://file:6379/0",
            "redis://flag:6379/0",
        ),
        (
            None,
            {"BTS_SYNC_REDIS_URL": "redis://bts:6379/0", "REDIS_URL": "redis://r/0"},
            "redis://file:6379/0",
            "redis://bts:6379/0",
        ),
        (None, {"REDIS_URL": "redis://r/0"}, "redis://file:6379/0", "redis://r/0"),
        (None, {}, "redis://file:6379/0", "redis://file:6379/0"),
        (None, {}, None, DEFAULT_REDIS_URL),
    ],
    ids=["flag", "bts-sync-variable", "redis-url-variable", "file", "default"],
)
def test_redis_url_precedence(
    tmp_path: Path,
    flag: str | None,
    env: dict[str, str],
    file_value: str | None,
    expected: str,
) -> None:
    text = f'redis_url = "{file_value}"\n' if file_value else ""
    path = write_config(tmp_path, text)

    settings = load_settings(path, env=env, redis_url=flag)

    assert settings.redis_url == expected


def test_key_prefix_variable_overrides_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'key_prefix = "from_file"\n')

    settings = load_settings(path, env={"BTS_SYNC_KEY_PREFIX": "from_env"})

    assert settings.key_prefix == "from_env"


def test_config_variable_names_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'key_prefix = "named"\n', name="elsewhere.toml")

    settings = load_settings(env={"BTS_SYNC_CONFIG": str(path)})

    assert settings.source == path
    assert settings.key_prefix == "named"


def test_file_in_working_folder_is_read(tmp_path: Path) -> None:
    write_config(tmp_path, 'key_prefix = "local"\n')

    settings = load_settings(env={})

    assert settings.source == Path("bts-sync.toml")
    assert settings.key_prefix == "local"


def test_config_argument_wins_over_variable(tmp_path: Path) -> None:
    chosen = write_config(tmp_path, 'key_prefix = "chosen"\n', name="chosen.toml")
    other = write_config(tmp_path, 'key_prefix = "other"\n', name="other.toml")

    settings = load_settings(chosen, env={"BTS_SYNC_CONFIG": str(other)})

    assert settings.key_prefix == "chosen"


def test_public_dict_masks_secrets(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        redis_url = "redis://:redis-pass-77@127.0.0.1:6379/0"

        [[endpoints]]
        name = "api"
        url = "http://user:url-pass-77@127.0.0.1/items?api_key=key-in-url-77"
        headers = { Authorization = "Bearer ${API_TOKEN}", X-Tenant = "${TENANT_KEY}", Accept = "application/json" }
        params = { token = "param-token-77", page = "1" }
        """,
    )
    env = {"API_TOKEN": "header-token-77", "TENANT_KEY": "tenant-key-77"}

    public = load_settings(path, env=env).to_public_dict()

    endpoint = public["endpoints"][0]
    assert public["redis_url"] == "redis://:***@127.0.0.1:6379/0"
    assert endpoint["url"] == "http://user:***@127.0.0.1/items?api_key=***"
    assert endpoint["headers"] == {
        "Authorization": "***",
        "X-Tenant": "***",
        "Accept": "application/json",
    }
    assert endpoint["params"] == {"token": "***", "page": "1"}


def test_unknown_endpoint_name_suggests_close_one(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        [[endpoints]]
        name = "orders"
        url = "http://127.0.0.1/orders"
        """,
    )
    settings = load_settings(path, env={})

    with pytest.raises(UnknownEndpointError) as caught:
        settings.endpoint("order")

    assert str(caught.value) == (
        "No endpoint is named 'order' (did you mean 'orders'?). "
        "Configured endpoints: orders."
    )


def test_ad_hoc_endpoint_rejects_non_http_url() -> None:
    with pytest.raises(ConfigError) as caught:
        ad_hoc_endpoint("file:///etc/passwd")

    assert "--url: url = 'file:///etc/passwd': must start with http://" in str(
        caught.value
    )


def test_ad_hoc_endpoint_keeps_base_settings(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        [[endpoints]]
        name = "api"
        url = "http://127.0.0.1/items"
        headers = { Accept = "text/csv" }
        """,
    )
    base = load_settings(path, env={}).endpoints[0]

    endpoint = ad_hoc_endpoint("http://127.0.0.1:9/other", base=base)

    assert endpoint.url == "http://127.0.0.1:9/other"
    assert endpoint.headers == {"Accept": "text/csv"}
    assert endpoint.name == "api"
