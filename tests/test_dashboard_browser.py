"""The dashboard in headless Chromium, against a worker polling real endpoints.

It needs Debian's ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``
and ``/usr/bin/chromedriver``). Without them the test is skipped, except on CI
(``CI`` set), where it fails. The screenshot goes to the test's temporary
folder; with ``BTS_SYNC_UPDATE_SCREENSHOT=1`` it also replaces
``docs/dashboard.png``, which the README shows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import free_port
from pytest_httpserver import HTTPServer
from support import (
    ProcessSet,
    bts_sync_command,
    process_env,
    wait_for_http,
    wait_until,
    write_config,
)

from bts_sync import chain, store

TOKEN = "browser-test-token-0123456789"
PREFIX = "bts_sync"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"

#: Chromium flags for a sandbox-less container without network access.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)


def _require_browser() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if not missing:
        return
    message = f"missing {', '.join(missing)}; install chromium and chromium-driver"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; .ci/run should have installed them.")
    pytest.skip(message)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    service = Service(
        executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")
    )
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def running_chains(
    redis_url: str, httpserver: HTTPServer, tmp_path: Path
) -> Iterator[tuple[str, redis.Redis]]:
    """Serve two endpoints, run a worker and a dashboard, and start both chains."""
    httpserver.expect_request("/orders").respond_with_json({"orders": [1, 2, 3]})
    httpserver.expect_request("/billing").respond_with_json(
        {"error": "maintenance"}, status=503
    )
    endpoints = [
        {"name": "orders", "url": httpserver.url_for("/orders"), "interval": 0.25},
        # Back-off stays off so that the failing endpoint keeps its cadence.
        {
            "name": "billing",
            "url": httpserver.url_for("/billing"),
            "interval": 0.25,
            "backoff": False,
        },
    ]
    config = write_config(tmp_path / "bts-sync.toml", endpoints, alert_after_failures=3)
    port = free_port()
    env = process_env(config, redis_url, BTS_SYNC_DASHBOARD_TOKEN=TOKEN)
    processes = ProcessSet(tmp_path)
    client = redis.Redis.from_url(redis_url)
    try:
        processes.start_worker(env, ready_timeout_s=None)
        processes.start(
            "dashboard", bts_sync_command("dashboard", "--port", str(port)), env
        )
        subprocess.run(
            bts_sync_command("start"),
            env=env,
            check=True,
            timeout=30,
            capture_output=True,
        )
        wait_for_http(f"http://127.0.0.1:{port}/api/status", 20)
        yield f"http://127.0.0.1:{port}", client
    finally:
        processes.close()
        client.close()


def _polls(client: redis.Redis, name: str) -> int:
    return int(client.hget(store.stats_key(PREFIX, name), "polls") or 0)


def _text(driver: Any, selector: str) -> str:
    """Read an element's text in one script, because the page replaces its overview every 2 s."""
    script = (
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';"
    )
    return str(driver.execute_script(script, selector))


def _click(driver: Any, selector: str) -> None:
    """Click an element in one script, for the same reason as ``_text``."""
    driver.execute_script("document.querySelector(arguments[0]).click();", selector)


def test_dashboard_in_browser(
    browser: Any, running_chains: tuple[str, redis.Redis], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    base, client = running_chains
    wait_until(lambda: _polls(client, "orders") >= 12, 30, "orders was polled 12 times")
    wait_until(
        lambda: _polls(client, "billing") >= 12, 30, "billing was polled 12 times"
    )

    browser.get(base + "/")
    assert wait_until(
        lambda: "200" in _text(browser, 'tr[data-endpoint="orders"] td.result'),
        10,
        "orders shows 200",
    )
    assert wait_until(
        lambda: "503" in _text(browser, 'tr[data-endpoint="billing"] td.result'),
        10,
        "billing shows 503",
    )

    # Without signing in, the stop button is rejected and the chain runs on.
    _click(browser, 'tr[data-endpoint="orders"] button.stop')
    notice = wait_until(lambda: _text(browser, "#notice"), 10, "a notice appeared")
    assert notice.startswith("Rejected")
    assert client.hget(chain.chain_key(PREFIX, "orders"), "token") is not None

    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "sign-in").click()
    wait_until(
        lambda: browser.find_elements(By.ID, "signed-in"),
        10,
        "the page shows signed in",
    )
    wait_until(
        lambda: "unhealthy" in _text(browser, 'tr[data-endpoint="billing"]'),
        10,
        "billing shows unhealthy",
    )
    shot_path = _save_screenshot(browser, tmp_path / "dashboard.png")
    assert shot_path.read_bytes().startswith(b"\x89PNG")

    _click(browser, 'tr[data-endpoint="orders"] button.stop')
    wait_until(
        lambda: client.hget(chain.chain_key(PREFIX, "orders"), "token") is None,
        10,
        "the orders chain was stopped in Redis",
    )
    assert wait_until(
        lambda: (
            "stopped" in _text(browser, 'tr[data-endpoint="orders"] td.chain-state')
        ),
        10,
        "the orders row shows stopped",
    )
    assert client.hget(chain.chain_key(PREFIX, "billing"), "token") is not None


def _save_screenshot(driver: Any, path: Path) -> Path:
    driver.save_screenshot(str(path))
    if os.environ.get("BTS_SYNC_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, SCREENSHOT)
    return path
