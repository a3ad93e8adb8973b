"""Flavors, nodes, events, operations, health and shell completion."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from bramble.cli import client


def test_flavor_create_parses_sizes(fake_api, cli) -> None:
    result = cli("flavor", "create", "small", "--cpus", "1", "--memory", "512M", "--disk", "10", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(fake_api.requests[-1].content) == {"name": "small", "cpus": 1, "memory_mib": 512, "disk_gib": 10}
    assert json.loads(result.stdout)["name"] == "small"


def test_flavor_create_bad_disk(fake_api, cli, error_line) -> None:
    assert "disk size" in error_line(cli("flavor", "create", "s", "--cpus", "1", "--memory", "1G", "--disk", "1.5"))


def test_flavor_list_and_delete(fake_api, cli) -> None:
    cli("flavor", "create", "small", "--cpus", "1", "--memory", "1536", "--disk", "1T")
    listed = cli("flavor", "list")
    assert "small" in listed.stdout
    assert "1536MiB" in listed.stdout
    assert "1TiB" in listed.stdout
    assert cli("flavor", "delete", "small").stdout == "flavor small deleted\n"
    assert fake_api.flavors == {}


def test_node_list(fake_api, cli) -> None:
    result = cli("node", "list")
    assert "n1" in result.stdout
    assert "/dev/kvm missing" in result.stdout
    assert json.loads(cli("node", "list", "--json").stdout)[0]["accel"] == "tcg"


def test_event_list_sends_filters(fake_api, cli) -> None:
    fake_api.events = [
        {
            "id": 1,
            "time": "2024-05-01T12:00:00Z",
            "actor": "admin",
            "action": "vm.start",
            "target": "vm/web",
            "message": "[red]not markup[/red]",
        }
    ]
    before = datetime.now(UTC)
    result = cli("event", "list", "--target", "vm/web", "--since", "2h", "--action", "vm.start", "--limit", "5")
    assert result.exit_code == 0, result.output
    params = fake_api.requests[-1].url.params
    assert params["target"] == "vm/web"
    assert params["action"] == "vm.start"
    assert params["limit"] == "5"
    since = datetime.fromisoformat(params["since"])
    assert before - timedelta(hours=2, seconds=5) < since <= datetime.now(UTC) - timedelta(hours=2)
    assert "[red]not markup[/red]" in result.stdout


def test_event_bad_since(fake_api, cli, error_line) -> None:
    assert error_line(cli("event", "list", "--since", "soon")).startswith("invalid time 'soon'")


def test_operation_show(fake_api, cli) -> None:
    op = fake_api.start_op("vm.start", "vm/web")
    result = cli("operation", "show", op["id"], "--json")
    assert json.loads(result.stdout)["status"] == "running"
    assert "vm/web" in cli("operation", "show", op["id"]).stdout


def test_health(fake_api, cli) -> None:
    assert json.loads(cli("health", "--json").stdout) == {"status": "ok", "version": "0.1.0"}


@pytest.mark.parametrize(
    "args",
    [["vm", "list"], ["image", "list"], ["flavor", "list"], ["node", "list"], ["event", "list"], ["health"]],
)
def test_every_json_output_parses(fake_api, cli, args) -> None:
    fake_api.add_vm("web")
    fake_api.add_image("deb")
    result = cli(*args, "--json")
    assert result.exit_code == 0
    json.loads(result.stdout)


def _complete(cli, words: str) -> list[str]:
    """Ask for completions exactly as the installed bash hook does (env vars, then exit)."""
    cwords = words.split(" ")
    env = {"_BRAMBLE_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(cwords) - 1)}
    result = cli(env=env, prog_name="bramble")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    return result.stdout.split()


def test_completion_of_vm_names(fake_api, cli) -> None:
    fake_api.add_vm("web")
    fake_api.add_vm("db")
    fake_api.add_vm("worker")
    assert sorted(_complete(cli, "bramble vm show w")) == ["web", "worker"]


def test_completion_uses_root_options(fake_api, cli) -> None:
    fake_api.add_image("deb")
    assert _complete(cli, "bramble --url http://elsewhere:1 vm create x --image ") == ["deb"]
    assert str(fake_api.requests[-1].url) == "http://elsewhere:1/v1/images"


def test_completion_is_silent_on_errors(fake_api, cli, monkeypatch) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    monkeypatch.setattr(client, "default_transport", httpx.MockTransport(down))
    assert _complete(cli, "bramble vm show ") == []
    monkeypatch.delenv("BRAMBLE_TOKEN")
    assert _complete(cli, "bramble image delete ") == []
