"""Where the CLI finds its URL and token, and what it says when it finds none."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bramble.cli import client
from bramble.cli.client import DEFAULT_URL, CliError, config_file, load_config


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_without_anything(tmp_path: Path) -> None:
    config = load_config(environ={"HOME": str(tmp_path)})
    assert config.url == DEFAULT_URL
    assert config.token is None


def test_precedence_option_then_env_then_file(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    write(tmp_path / "xdg" / "bramble" / "cli.toml", 'url = "http://file:1"\ntoken = "from-file"\n')
    assert load_config(environ=env) == client.Config("http://file:1", "from-file")
    env |= {"BRAMBLE_URL": "http://env:2", "BRAMBLE_TOKEN": "from-env"}
    assert load_config(environ=env) == client.Config("http://env:2", "from-env")
    assert load_config("http://opt:3/", "from-opt", environ=env) == client.Config("http://opt:3", "from-opt")


def test_file_fills_only_what_is_missing(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "BRAMBLE_URL": "http://env:2"}
    write(tmp_path / ".config" / "bramble" / "cli.toml", 'url = "http://file:1"\ntoken = "from-file"\n')
    assert load_config(environ=env) == client.Config("http://env:2", "from-file")


def test_xdg_config_home_must_be_absolute(tmp_path: Path) -> None:
    assert config_file({"HOME": str(tmp_path), "XDG_CONFIG_HOME": "relative"}) == (
        tmp_path / ".config" / "bramble" / "cli.toml"
    )
    assert config_file({"HOME": "/h", "XDG_CONFIG_HOME": "/x"}) == Path("/x/bramble/cli.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [("url = ", "not valid TOML"), ("token = 5", "'token' must be a string")],
)
def test_bad_file_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path / ".config" / "bramble" / "cli.toml", text)
    with pytest.raises(CliError, match=message):
        load_config(environ={"HOME": str(tmp_path)})


@pytest.mark.parametrize("url", ["localhost:8470", "ftp://host", "http://"])
def test_bad_url(url: str) -> None:
    with pytest.raises(CliError, match="invalid API URL"):
        load_config(url, "t", environ={})


def test_cli_options_reach_the_request(fake_api, cli) -> None:
    seen: list[httpx.Request] = []
    fake_api.hooks[r"GET /v1/vms"] = lambda request: seen.append(request) or httpx.Response(200, json=[])
    result = cli("--url", "http://other:9999", "--token", "opt-token", "vm", "list", "--json")
    assert result.exit_code == 0, result.output
    assert str(seen[0].url) == "http://other:9999/v1/vms"
    assert seen[0].headers["authorization"] == "Bearer opt-token"


def test_env_token_is_sent(fake_api, cli) -> None:
    assert cli("vm", "list").exit_code == 0
    assert fake_api.requests[-1].headers["authorization"] == f"Bearer {fake_api.token}"
    assert str(fake_api.requests[-1].url).startswith(DEFAULT_URL)


def test_config_file_used_by_cli(fake_api, cli, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("BRAMBLE_TOKEN")
    write(tmp_path / "config" / "bramble" / "cli.toml", f'token = "{fake_api.token}"\n')
    assert cli("vm", "list").exit_code == 0
    assert fake_api.requests[-1].headers["authorization"] == f"Bearer {fake_api.token}"


def test_missing_token_says_what_to_do(fake_api, cli, error_line, monkeypatch) -> None:
    monkeypatch.delenv("BRAMBLE_TOKEN")
    message = error_line(cli("vm", "list"))
    assert "make up" in message
    assert "BRAMBLE_TOKEN" in message
    assert fake_api.requests == []


def test_health_needs_no_token(fake_api, cli, monkeypatch) -> None:
    monkeypatch.delenv("BRAMBLE_TOKEN")
    result = cli("health")
    assert result.exit_code == 0
    assert "ok" in result.stdout
    assert "authorization" not in fake_api.requests[-1].headers
