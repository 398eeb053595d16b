"""Configuration of polite polling and change delivery: defaults and validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support import write_config

from bts_sync.config import BackoffPolicy, ChangeTarget, load_settings
from bts_sync.errors import ConfigError


def load(tmp_path: Path, **endpoint: Any) -> Any:
    config = write_config(
        tmp_path / "bts-sync.toml",
        [{"name": "api", "url": "http://127.0.0.1:9/api", **endpoint}],
        dispatch_lead=0.3,
    )
    return load_settings(config, env={}).endpoints[0]


def problem(tmp_path: Path, **endpoint: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, **endpoint)
    return str(caught.value)


def test_defaults_are_polite(tmp_path: Path) -> None:
    # Given an endpoint with no politeness keys
    # When it is loaded
    endpoint = load(tmp_path, interval=3)

    # Then conditional requests and back-off are on, and nothing else is set
    assert endpoint.conditional_requests is True
    assert endpoint.max_retry_after_s == 600
    assert endpoint.backoff == BackoffPolicy(
        after_failures=1, initial_s=6, multiplier=2, max_s=300, jitter=0.2
    )
    assert endpoint.ignore_paths == ()
    assert endpoint.on_change is None


def test_backoff_defaults_follow_interval(tmp_path: Path) -> None:
    # Given an endpoint polled every minute
    # When it is loaded
    endpoint = load(tmp_path, interval=60)

    # Then the first delay is two intervals and the cap ten
    assert endpoint.backoff.initial_s == 120
    assert endpoint.backoff.max_s == 600


def test_backoff_table_is_read(tmp_path: Path) -> None:
    # Given a full backoff table
    table = {
        "after_failures": 3,
        "initial": 5,
        "multiplier": 1.5,
        "max": 60,
        "jitter": 0,
    }

    # When it is loaded
    endpoint = load(tmp_path, backoff=table)

    # Then every key is used
    assert endpoint.backoff == BackoffPolicy(
        after_failures=3, initial_s=5, multiplier=1.5, max_s=60, jitter=0
    )


def test_backoff_false_disables(tmp_path: Path) -> None:
    # Given backoff = false
    # When it is loaded
    # Then there is no back-off
    assert load(tmp_path, backoff=False).backoff is None


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"jitter": 1}, "backoff.jitter = 1: must be a number from 0 up to 1"),
        (
            {"multiplier": 0.5},
            "backoff.multiplier = 0.5: must be a number of 1 or more",
        ),
        (
            {"max": 2, "initial": 5},
            "backoff.max = 2.0: is shorter than backoff.initial (5 s)",
        ),
        ({"intial": 5}, "did you mean 'initial'?"),
        ({"after_failures": 0}, "backoff.after_failures = 0: must be a whole number"),
    ],
)
def test_invalid_backoff_is_named(
    tmp_path: Path, table: dict[str, Any], expected: str
) -> None:
    # Given an invalid backoff table
    # When it is loaded
    # Then the error names the key, the value and the fix
    assert expected in problem(tmp_path, backoff=table)


def test_invalid_max_retry_after_is_named(tmp_path: Path) -> None:
    # Given a negative cap
    # When it is loaded
    # Then the error names the key and the value
    assert "max_retry_after = -1: must be greater than 0" in problem(
        tmp_path, max_retry_after=-1
    )


def test_json_paths_are_read(tmp_path: Path) -> None:
    # Given ignored and selected paths
    # When they are loaded
    endpoint = load(
        tmp_path,
        ignore_paths=["$.meta.generated_at"],
        select_paths=["items[*].price"],
    )

    # Then both lists are kept as written
    assert endpoint.ignore_paths == ("$.meta.generated_at",)
    assert endpoint.select_paths == ("items[*].price",)


def test_invalid_json_path_is_named(tmp_path: Path) -> None:
    # Given a path with a syntax error
    # When it is loaded
    text = problem(tmp_path, ignore_paths=["items[*"])

    # Then the error names the key, the path and an example
    assert "ignore_paths = 'items[*'" in text
    assert "write it like $.meta.generated_at" in text


def test_json_paths_must_be_list(tmp_path: Path) -> None:
    # Given a single string where a list belongs
    # When it is loaded
    # Then the error shows the list form
    assert "must be a list of JSONPath expressions" in problem(
        tmp_path, select_paths="items[*].price"
    )


def test_on_change_table_is_read(tmp_path: Path) -> None:
    # Given an on_change table
    # When it is loaded
    endpoint = load(tmp_path, on_change={"actor": "handle_quotes", "queue": "app"})

    # Then it names the actor and the queue
    assert endpoint.on_change == ChangeTarget(actor="handle_quotes", queue="app")


def test_on_change_queue_defaults(tmp_path: Path) -> None:
    # Given an on_change table without a queue
    # When it is loaded
    # Then the queue is Dramatiq's default
    assert load(tmp_path, on_change={"actor": "handle"}).on_change.queue == "default"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("app.actors:handle", "must be a table like { actor ="),
        (
            {"actor": "app.actors:handle"},
            'set only the actor name, like actor = "handle"',
        ),
        ({"queue": "app"}, "is missing the key 'actor'"),
        ({"actor": "handle", "queue": "bts_sync"}, "queue of bts-sync's own poll"),
        ({"actor": "handle", "queue": "9lives"}, "must be a Dramatiq queue name"),
        ({"actor": "handle", "retries": 3}, "on_change.retries = 3: is not a key"),
    ],
)
def test_invalid_on_change_is_named(tmp_path: Path, value: Any, expected: str) -> None:
    # Given an invalid on_change value
    # When it is loaded
    # Then the error message names the problem and shows the fix
    assert expected in problem(tmp_path, on_change=value)


def test_public_dict_shows_new_keys(tmp_path: Path) -> None:
    # Given an endpoint with every new key
    endpoint = load(
        tmp_path,
        backoff=False,
        ignore_paths=["$.a"],
        on_change={"actor": "handle", "queue": "app"},
    )

    # When it is shown
    data = endpoint.to_public_dict()

    # Then the keys appear as in the file
    assert data["backoff"] is False
    assert data["ignore_paths"] == ["$.a"]
    assert data["on_change"] == {"actor": "handle", "queue": "app"}
    assert data["conditional_requests"] is True
