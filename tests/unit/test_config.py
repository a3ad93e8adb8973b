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


def test_storm_hold_settings_reach_the_observation_log_and_must_fit_the_queue(tmp_path: Path) -> None:
    from bramble.core.observations import Observation
    from bramble.daemon import observation_log
    from bramble.db.session import Database

    config = tmp_path / "brambled.toml"
    config.write_text("[audit]\nstorm_hold_rows = 60000\n")
    with pytest.raises(ConfigError, match=r"storm_hold_rows \(60000\) is over observations_max_queued \(50000\)"):
        load_settings(config)

    config.write_text("[audit]\nobservations_max_queued = 1000\nstorm_hold_rows = 500\n")
    settings = load_settings(config, state_dir=tmp_path)
    log = observation_log(settings, Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'b.db'}"))
    for i in range(1001):  # not started: everything queues, and the 1001st is over the configured bound
        log.observe(Observation("t", "boot.dhcp", "mac/x", str(i)))
    assert log.stats["observed"] == 1000 and log.stats["dropped"] == 1


def test_rbd_storage_without_ceph_bindings_stops_brambled_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A node set up with `make up` only (no Ceph packages) but configured for RBD: exit 2 and what to
    install, before any database or port is opened."""
    import sys

    from bramble.daemon import main

    config = tmp_path / "brambled.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n[storage]\ndriver = "rbd"\n')
    monkeypatch.setitem(sys.modules, "rados", None)
    with pytest.raises(SystemExit) as stopped:
        main(["--config", str(config)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("brambled: [storage] driver 'rbd': Ceph RBD storage needs") and "\n" not in err
    assert "install-deps.sh ceph" in err
    assert not (tmp_path / "state" / "bramble.db").exists()
