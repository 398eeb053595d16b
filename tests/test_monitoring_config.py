"""Configuration keys of alerts: alert_webhook and alert_after_failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from bts_sync.config import Settings, load_settings, mask_webhook_url
from bts_sync.errors import ConfigError
from bts_sync.redact import mask_text

WEBHOOK = "https://hooks.example.com/services/T000/B000/abcdefSECRET"


def _load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "bts-sync.toml"
    path.write_text(text + '\n[[endpoints]]\nname = "a"\nurl = "http://127.0.0.1:9/"\n')
    return load_settings(path, env=env or {})


def test_alert_settings_default_without_webhook(tmp_path: Path) -> None:
    settings = _load(tmp_path, "")
    assert settings.alert_webhook is None
    assert settings.alert_after_failures == 3


def test_alert_webhook_is_read_from_file(tmp_path: Path) -> None:
    settings = _load(tmp_path, f'alert_webhook = "{WEBHOOK}"\nalert_after_failures = 5')
    assert settings.alert_webhook == WEBHOOK
    assert settings.alert_after_failures == 5


def test_alert_webhook_variable_wins(tmp_path: Path) -> None:
    other = "https://hooks.example.com/other/path-token"
    settings = _load(
        tmp_path, f'alert_webhook = "{WEBHOOK}"', env={"BTS_SYNC_ALERT_WEBHOOK": other}
    )
    assert settings.alert_webhook == other


def test_alert_webhook_is_masked_everywhere(tmp_path: Path) -> None:
    settings = _load(tmp_path, f'alert_webhook = "{WEBHOOK}"')
    public = settings.to_public_dict()
    assert public["alert_webhook"] == "https://hooks.example.com/***"
    assert "abcdefSECRET" not in mask_text(f"POST {WEBHOOK} failed")


def test_alert_webhook_must_be_http(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="alert_webhook"):
        _load(tmp_path, 'alert_webhook = "ftp://hooks.example.com/x"')


def test_alert_after_failures_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="alert_after_failures"):
        _load(tmp_path, "alert_after_failures = 0")


def test_mask_webhook_url_keeps_host_and_port() -> None:
    assert (
        mask_webhook_url("http://u:p@127.0.0.1:8080/a/b") == "http://127.0.0.1:8080/***"
    )
