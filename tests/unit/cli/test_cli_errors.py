"""Every failure is one `error:` line on stderr with exit code 2, never a traceback."""

from __future__ import annotations

import socket

import httpx
import pytest

from bramble.cli import client


def test_api_error_message_is_shown(fake_api, cli, error_line) -> None:
    assert error_line(cli("vm", "show", "nope")) == "vm nope not found"


def test_api_error_with_json_prints_nothing_on_stdout(fake_api, cli, error_line) -> None:
    assert error_line(cli("image", "show", "nope", "--json")) == "image nope not found"


def test_server_error_names_the_request(fake_api, cli, error_line) -> None:
    fake_api.hooks[r"GET /v1/vms"] = lambda request: httpx.Response(
        500, json={"error": {"code": "internal", "message": "db\nlocked", "request_id": "req-9"}}
    )
    assert error_line(cli("vm", "list")) == "db locked (request req-9)"


def test_bad_token_hints_at_configuration(fake_api, cli, error_line, monkeypatch) -> None:
    monkeypatch.setenv("BRAMBLE_TOKEN", "wrong")
    assert "BRAMBLE_TOKEN" in error_line(cli("vm", "list"))


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (httpx.Response(200, text="<html>"), "not JSON"),
        (httpx.Response(502, text="Bad Gateway\n<hr>"), "HTTP 502 from the API: Bad Gateway <hr>"),
        (httpx.Response(200, json=[{"name": "x"}]), "unexpected reply from the API"),
    ],
)
def test_malformed_replies(fake_api, cli, error_line, response, expected) -> None:
    fake_api.hooks[r"GET /v1/vms"] = lambda request: response
    assert expected in error_line(cli("vm", "list"))


def test_refused_connection_is_one_line(cli, error_line, monkeypatch) -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("BRAMBLE_TOKEN", "t")
    message = error_line(cli("--url", f"http://127.0.0.1:{port}", "vm", "list"))
    assert message == f"the API at http://127.0.0.1:{port} is unreachable (is brambled running? try `make up`)"


def test_timeout_is_one_line(cli, error_line, monkeypatch) -> None:
    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    monkeypatch.setenv("BRAMBLE_TOKEN", "t")
    monkeypatch.setattr(client, "default_transport", httpx.MockTransport(hang))
    assert "did not answer in time" in error_line(cli("node", "list"))


def test_ctrl_c_exits_130_quietly(fake_api, cli) -> None:
    def interrupt(request: httpx.Request) -> httpx.Response:
        raise KeyboardInterrupt

    fake_api.hooks[r"GET /v1/nodes"] = interrupt
    result = cli("node", "list")
    assert result.exit_code == 130
    assert "Traceback" not in result.output


def test_unexpected_exception_is_still_one_line(fake_api, cli, error_line) -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise ZeroDivisionError("boom")

    fake_api.hooks[r"GET /v1/nodes"] = boom
    assert "ZeroDivisionError: boom" in error_line(cli("node", "list"))


def test_usage_errors_keep_typer_exit_code(fake_api, cli) -> None:
    result = cli("vm", "create", "web")  # --image missing
    assert result.exit_code == 2
    assert fake_api.requests == []
