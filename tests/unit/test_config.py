from __future__ import annotations

from pathlib import Path

import pytest

from bramble.config import ConfigError, load_settings


def test_defaults_need_no_file(tmp_path: Path) -> None:
    settings = load_settings(None, state_dir=tmp_path)
    assert settings.api.port == 8470
    assert settings.effective_database_url.endswith("bramble.db")
    assert settings.roles == ["api", "agent"]


def test_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "brambled.toml"
    config.write_text('state_dir = "/srv/b"\n[api]\nport = 9000\nhost = "0.0.0.0"\n[compute]\naccel = "tcg"\n')
    monkeypatch.setenv("BRAMBLE_API__PORT", "9100")
    settings = load_settings(config)
    assert str(settings.state_dir) == "/srv/b"
    assert settings.api.port == 9100  # the environment wins
    assert settings.api.host == "0.0.0.0"  # the rest of the section survives
    assert settings.compute.accel == "tcg"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[api]\nport = 70000\n", "api.port"),
        ("[compute]\naccel = 'warp'\n", "compute.accel"),
        ("[api\n", "brambled.toml"),
        ("colour = 'red'\n", "colour"),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, text: str, words: str) -> None:
    config = tmp_path / "brambled.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        load_settings(config)


def test_missing_file_given_explicitly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "absent.toml")


def test_audit_retention_defaults_and_a_negative_age_is_refused(tmp_path: Path) -> None:
    settings = load_settings(None, state_dir=tmp_path)
    assert (settings.audit.retention_days, settings.audit.boot_traffic_retention_days) == (365, 30)
    config = tmp_path / "brambled.toml"
    config.write_text("[audit]\nboot_traffic_retention_days = -1\n")
    with pytest.raises(ConfigError, match=r"audit\.boot_traffic_retention_days: .*greater than or equal to 0"):
        load_settings(config)
