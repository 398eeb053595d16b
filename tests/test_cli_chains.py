"""The start, stop, status, show and run commands against a real redis-server.

Most tests invoke the click group in-process with ``CliRunner``. The commands
import ``bts_sync.actors``, which reads its settings at import, so each test
imports it afresh and removes it again. ``run`` starts processes of its own
and is tested as a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import redis
from click.testing import CliRunner, Result
from conftest import free_port
from support import (
    BIN_DIR,
    EndpointLog,
    ProcessSet,
    RecordingServer,
    descendants_of,
    forget_actors,
    import_actors,
    json_body,
    process_env,
    wait_until,
    write_config,
)

from bts_sync import chain
from bts_sync.cli import cli

PREFIX = "bts_sync"
NAME = "items"
BODY = {"items": [1, 2, 3]}


@pytest.fixture
def endpoint_log(http: RecordingServer) -> EndpointLog:
    return http.add_endpoint("/items", json_body(BODY))


@pytest.fixture
def config_path(tmp_path: Path, http: RecordingServer) -> Path:
    return write_config(
        tmp_path / "bts-sync.toml",
        [{"name": NAME, "url": http.url("/items"), "interval": 1}],
    )


@pytest.fixture
def actors(
    config_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    """Return ``bts_sync.actors`` imported with the test's configuration."""
    yield import_actors(monkeypatch, config_path, redis_url)
    forget_actors()


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def poll_once(actors: ModuleType, client: redis.Redis) -> None:
    """Run the chain's next slot in this process, as a worker would."""
    state = chain.read_states(client, PREFIX, [NAME])[NAME]
    slot = chain.next_grid_slot(NAME, actors.now_ms(), 1000)
    actors.run_slot(actors.SETTINGS.endpoint(NAME), state.token, slot)


def test_start_reports_started_then_running(actors: ModuleType) -> None:
    first = invoke("start")
    second = invoke("start", NAME)

    assert first.exit_code == 0
    assert first.output.split() == ["started", NAME, "every", "1", "s"]
    assert second.exit_code == 0
    assert second.output.split() == ["running", NAME, "already", "running"]


def test_start_unknown_endpoint_exits_2(actors: ModuleType) -> None:
    result = invoke("start", "nothing")
    assert result.exit_code == 2
    assert "No endpoint is named 'nothing'" in result.output


def test_stop_reports_stopped_then_idle(actors: ModuleType) -> None:
    invoke("start")

    first = invoke("stop", NAME)
    second = invoke("stop")

    assert first.exit_code == 0
    assert first.output.split() == ["stopped", NAME]
    assert second.exit_code == 0
    assert second.output.split() == ["stopped", NAME, "was", "not", "running"]


def test_status_json_describes_running_endpoint(
    actors: ModuleType, client: redis.Redis, endpoint_log: EndpointLog
) -> None:
    # Given a started chain with one recorded poll
    invoke("start")
    poll_once(actors, client)

    # When the status is asked for as JSON
    result = invoke("status", "--json")

    # Then it describes the endpoint, its last poll and the queue
    assert result.exit_code == 0
    report = json.loads(result.output)
    row = report["endpoints"][0]
    assert row["name"] == NAME
    assert row["state"] == "running"
    assert row["interval_s"] == 1.0
    assert row["polls"] == 1
    assert row["successes"] == 1
    assert row["consecutive_failures"] == 0
    assert row["last_success_at"] is not None
    assert row["latest"]["status"] == "200"
    assert row["latest"]["ok"] == "1"
    assert set(report["queue"]) == {"ready", "delayed", "dead"}
    assert report["queue"]["ready"] + report["queue"]["delayed"] == 1


def test_status_json_marks_stopped_and_stalled(
    actors: ModuleType, client: redis.Redis
) -> None:
    stopped = json.loads(invoke("status", "--json").output)
    chain.seed(
        client,
        PREFIX,
        NAME,
        interval_ms=1000,
        now_ms=actors.now_ms() - 60_000,
        stalled_after_ms=11_000,
        lead_ms=500,
    )
    stalled = json.loads(invoke("status", "--json").output)

    assert stopped["endpoints"][0]["state"] == "stopped"
    assert stalled["endpoints"][0]["state"] == "stalled"


def test_status_table_names_endpoint(
    actors: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rich cuts table cells to 80 columns when the output is not a terminal.
    monkeypatch.setenv("COLUMNS", "200")
    invoke("start")
    result = invoke("status")
    assert result.exit_code == 0
    assert NAME in result.output
    assert "running" in result.output


def test_show_prints_latest_body(
    actors: ModuleType, client: redis.Redis, endpoint_log: EndpointLog
) -> None:
    invoke("start")
    poll_once(actors, client)

    rendered = invoke("show", NAME)
    raw = invoke("show", NAME, "--raw")

    assert rendered.exit_code == 0
    assert "200" in rendered.output
    assert '"items"' in rendered.output
    assert json.loads(raw.output) == BODY


def test_show_before_first_poll_exits_1(actors: ModuleType) -> None:
    result = invoke("show", NAME)
    assert result.exit_code == 1
    assert "has not been polled yet" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["start"],
        ["stop"],
        ["status"],
        ["status", "--json"],
        ["show", NAME],
        ["run"],
    ],
    ids="-".join,
)
def test_unreachable_redis_prints_one_line(
    args: list[str],
    actors: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a Redis URL with a password, where nothing listens
    port = free_port()
    url = f"redis://user:s3cret-pw@127.0.0.1:{port}/0"
    monkeypatch.setenv("BTS_SYNC_REDIS_URL", url)
    monkeypatch.setenv("BTS_SYNC_STATE_DIR", str(tmp_path / "state"))
    forget_actors()

    # When the command runs
    result = invoke(*args)

    # Then one line names the URL with the password masked, and the exit
    # code is 3
    lines = result.output.strip().splitlines()
    assert result.exit_code == 3
    assert len(lines) == 1
    assert f"redis://user:***@127.0.0.1:{port}/0" in lines[0]
    assert "s3cret-pw" not in result.output
    assert "Traceback" not in result.output
    # And run, given a Redis URL, started no Redis of its own
    assert not (tmp_path / "state" / "redis").exists()


PRIVATE_REDIS_RE = re.compile(
    r"started redis-server at redis://127\.0\.0\.1:(?P<port>\d+)/0 \(pid (?P<pid>\d+)\)"
)


def listening(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=str)
def test_run_starts_private_redis(
    stop_signal: signal.Signals,
    tmp_path: Path,
    config_path: Path,
    redis_url: str,
    endpoint_log: EndpointLog,
) -> None:
    # Given no Redis configured and none listening on the default port
    if listening("127.0.0.1", 6379) or listening("::1", 6379):
        pytest.skip("something listens on port 6379, the default Redis port")
    env = process_env(config_path, redis_url)
    del env["BTS_SYNC_REDIS_URL"]
    env["BTS_SYNC_STATE_DIR"] = str(tmp_path / "state")
    processes = ProcessSet(tmp_path, env)
    run = processes.start("run", [str(BIN_DIR / "bts-sync"), "run"])
    descendants: list[int] = []
    try:
        # When run starts
        message = wait_until(
            lambda: PRIVATE_REDIS_RE.search(" ".join(run.log().split())),
            30,
            "run to say that it started redis-server",
        )
        port = int(message["port"])
        redis_pid = int(message["pid"])

        # Then its worker polls the endpoint through the private Redis
        wait_until(lambda: endpoint_log.count() >= 2, 30, "two polls")
        assert (tmp_path / "state" / "redis").is_dir()
        private = redis.Redis(host="127.0.0.1", port=port)
        assert private.exists(chain.chain_key(PREFIX, NAME)) == 1
        private.close()

        # And Ctrl+C, or SIGTERM, stops it and everything it started
        descendants.extend(descendants_of(run.pid))
        run.process.send_signal(stop_signal)
        assert run.process.wait(60) == 0
        assert redis_pid in descendants
        assert [pid for pid in descendants if pid_alive(pid)] == []
        assert not listening("127.0.0.1", port)
    finally:
        if run.running():
            descendants.extend(descendants_of(run.pid))
        processes.close()
        for pid in descendants:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
