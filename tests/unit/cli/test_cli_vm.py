"""VM commands: request bodies, operation following, --no-wait, --json and the console."""

from __future__ import annotations

import json

import httpx
import pytest

from bramble.cli import vm


def sent_json(fake_api, method: str, path: str) -> dict:
    request = next(r for r in fake_api.requests if r.method == method and r.url.path == path)
    return json.loads(request.content)


def test_create_with_explicit_sizes_waits_and_shows_the_vm(fake_api, cli) -> None:
    result = cli("vm", "create", "web", "--image", "debian", "--cpus", "2", "--memory", "2G", "--disk-size", "20")
    assert result.exit_code == 0, result.output
    assert sent_json(fake_api, "POST", "/v1/vms") == {
        "name": "web",
        "image": "debian",
        "cpus": 2,
        "memory_mib": 2048,
        "disk_gib": 20,
        "start": True,
    }
    polls = [r for r in fake_api.requests if r.url.path.startswith("/v1/operations/")]
    assert len(polls) == 2  # pending -> running -> succeeded
    for expected in ("vm web", "running", "n1", "kvm", "4242", "127.0.0.1:5900"):
        assert expected in result.stdout


def test_flavor_and_overrides_are_both_sent(fake_api, cli) -> None:
    result = cli("vm", "create", "web", "-i", "debian", "--flavor", "small", "--memory", "4G", "--no-start")
    assert result.exit_code == 0, result.output
    assert sent_json(fake_api, "POST", "/v1/vms") == {
        "name": "web",
        "image": "debian",
        "flavor": "small",
        "memory_mib": 4096,
        "start": False,
    }


def test_create_without_flavor_needs_all_sizes(fake_api, cli, error_line) -> None:
    message = error_line(cli("vm", "create", "web", "-i", "debian", "--cpus", "2"))
    assert "--flavor" in message
    assert fake_api.requests == []


def test_bad_memory_size_is_exit_2_one_line(fake_api, cli, error_line) -> None:
    message = error_line(cli("vm", "create", "web", "-i", "d", "--flavor", "f", "--memory", "lots"))
    assert message.startswith("invalid memory size 'lots'")
    assert fake_api.requests == []


def test_invalid_name_is_caught_before_sending(fake_api, cli, error_line) -> None:
    message = error_line(cli("vm", "create", "bad name", "-i", "d", "--flavor", "f"))
    assert "1-63 characters" in message
    assert fake_api.requests == []


def test_failed_operation_is_exit_2_with_its_error(fake_api, cli, error_line) -> None:
    fake_api.op_steps = [("running", 10.0, "scheduling", None), ("failed", 10.0, None, "no node has room")]
    message = error_line(cli("vm", "create", "web", "-i", "d", "--flavor", "f", "--json"))
    assert message == "vm.create vm/web failed: no node has room"


def test_no_wait_prints_the_operation_and_does_not_poll(fake_api, cli) -> None:
    result = cli("vm", "create", "web", "-i", "d", "--flavor", "f", "--no-wait", "--json")
    assert result.exit_code == 0, result.output
    reply = json.loads(result.stdout)
    assert reply["operation"]["status"] == "pending"
    assert reply["vm"]["name"] == "web"
    assert not [r for r in fake_api.requests if r.url.path.startswith("/v1/operations/")]


def test_no_wait_human_output_names_the_operation(fake_api, cli) -> None:
    fake_api.add_vm("web")
    result = cli("vm", "reboot", "web", "--no-wait")
    assert result.exit_code == 0
    assert "bramble operation show op-" in result.stdout


@pytest.mark.parametrize("action", ["start", "stop", "reboot", "pause", "resume"])
def test_actions_post_and_report_state(fake_api, cli, action) -> None:
    fake_api.add_vm("web", state="paused" if action == "resume" else "running")
    result = cli("vm", action, "web")
    assert result.exit_code == 0, result.output
    assert sent_json(fake_api, "POST", f"/v1/vms/web/actions/{action}") == {"force": False}
    assert result.stdout.startswith("vm web: ")


def test_stop_force(fake_api, cli) -> None:
    fake_api.add_vm("web")
    result = cli("vm", "stop", "web", "--force", "--json")
    assert result.exit_code == 0
    assert sent_json(fake_api, "POST", "/v1/vms/web/actions/stop") == {"force": True}
    assert json.loads(result.stdout)["state"] == "stopped"


def test_names_are_quoted_into_one_path_segment(fake_api, cli) -> None:
    cli("vm", "show", "a/../../images")
    assert fake_api.requests[-1].url.raw_path == b"/v1/vms/a%2F..%2F..%2Fimages"


def test_list_json_is_the_api_response(fake_api, cli) -> None:
    fake_api.add_vm("web")
    fake_api.add_vm("db", state="stopped")
    result = cli("vm", "list", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == list(fake_api.vms.values())


def test_list_table(fake_api, cli) -> None:
    fake_api.add_vm("web")
    result = cli("vm", "list")
    assert "NAME" in result.stdout
    assert "web" in result.stdout
    assert "2GiB" in result.stdout


def test_delete_without_tty_needs_no_prompt(fake_api, cli) -> None:
    fake_api.add_vm("web")
    result = cli("vm", "delete", "web", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "succeeded"
    assert fake_api.vms == {}


@pytest.mark.parametrize(("answer", "code", "left"), [("n\n", 1, 1), ("y\n", 0, 0)])
def test_delete_asks_on_a_terminal(fake_api, cli, monkeypatch, answer, code, left) -> None:
    fake_api.add_vm("web")
    monkeypatch.setattr(vm, "_interactive", lambda: True)
    result = cli("vm", "delete", "web", input=answer)
    assert result.exit_code == code
    assert "Delete vm web" in result.stderr
    assert len(fake_api.vms) == left


def test_console_prints_the_log_raw(fake_api, cli) -> None:
    fake_api.add_vm("web")
    fake_api.console = b"\x1b[1mbold\x1b[0m [not markup]\n"
    result = cli("vm", "console", "web")
    assert result.exit_code == 0
    assert result.stdout == "\x1b[1mbold\x1b[0m [not markup]\n"


def test_console_follow_polls_from_offset_until_ctrl_c(fake_api, cli) -> None:
    fake_api.add_vm("web")
    fake_api.console = b"one\n"
    offsets: list[int] = []

    def console(request: httpx.Request) -> httpx.Response:
        start = int(request.url.params.get("offset", 0))
        if "offset" in request.url.params:
            offsets.append(start)
            if len(offsets) == 3:
                raise KeyboardInterrupt  # the user presses Ctrl-C during the third poll
            fake_api.console += b"more\n"
        size = len(fake_api.console)
        return httpx.Response(200, json={"data": fake_api.console[start:].decode(), "offset": size, "size": size})

    fake_api.hooks[r"GET /v1/vms/web/console"] = console
    result = cli("vm", "console", "web", "--follow")
    assert result.exit_code == 0
    assert result.stdout == "one\nmore\nmore\n"
    assert offsets == [4, 9, 14]


def test_console_json_is_one_object_per_line(fake_api, cli) -> None:
    fake_api.add_vm("web")
    result = cli("vm", "console", "web", "--tail", "3", "--json")
    assert result.exit_code == 0
    assert fake_api.requests[-1].url.params["tail"] == "3"
    assert json.loads(result.stdout) == {"data": "n: ", "offset": 16, "size": 16}
