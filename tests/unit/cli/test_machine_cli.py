"""`bramble machine` and `bramble profile` against the real API app (in-process, fake drivers)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from tests.unit.cli.test_cli_contract import real_api  # the fixture: the real app behind the CLI's transport

__all__ = ["real_api"]


def ok(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def test_machine_round_trip(real_api, cli) -> None:  # type: ignore[no-untyped-def]
    ok(cli("profile", "add", "deb", "--kernel", "debian/vmlinuz", "--initrd", "debian/initrd.gz", "--cmdline", "quiet"))
    added = json.loads(
        ok(
            cli(
                "machine",
                "add",
                "web1",
                "--mac",
                "52-54-00-12-34-56",
                "--ip",
                "10.0.0.5",
                "--profile",
                "deb",
                "--group",
                "rack1",
                "--group",
                "web",
                "--wake-at",
                "mon-fri 07:30",
                "--reason",
                "new rack",
                "--json",
            )
        )
    )
    assert (added["mac"], added["groups"], added["wake_at"]) == (
        "52:54:00:12:34:56",
        ["rack1", "web"],
        ["mon-fri 07:30"],
    )
    file = real_api.settings.inventory_path / "machines/web1.toml"
    assert tomllib.loads(file.read_text())["profile"] == "deb"

    listing = ok(cli("machine", "list"))
    assert "web1" in listing and "52:54:00:12:34:56" in listing and "rack1, web" in listing
    shown = ok(cli("machine", "show", "web1"))
    assert "machine web1" in shown and "machines/web1.toml" in shown and "mon-fri 07:30" in shown

    assert "local" in ok(cli("machine", "set-profile", "web1", "local"))
    assert tomllib.loads(file.read_text())["profile"] == "local"
    reset = json.loads(ok(cli("machine", "set-profile", "web1", "--default", "--json")))
    assert reset["profile"] is None and reset["boot_profile"] == "discovered"

    changed = json.loads(ok(cli("machine", "set", "web1", "--ip", "", "--notes", "spare", "--no-groups", "--json")))
    assert (changed["ip"], changed["notes"], changed["groups"]) == (None, "spare", [])

    assert ok(cli("machine", "rm", "web1")) == "machine web1 removed\n"
    assert not file.exists()
    events = json.loads(ok(cli("event", "list", "--target", "machine/web1", "--json")))
    assert [e["action"] for e in events] == [
        "machine.create",
        "machine.set_profile",
        "machine.set_profile",
        "machine.update",
        "machine.delete",
    ]


def test_list_names_broken_files_on_stderr(real_api, cli) -> None:  # type: ignore[no-untyped-def]
    machines = real_api.settings.inventory_path / "machines"
    machines.mkdir(parents=True)
    (machines / "bad.toml").write_text('mac = "52:54:00:00:00:01"\nip = "10.0.0.999"\n')
    result = cli("machine", "list", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["problems"][0]["line"] == 2
    assert result.stderr.strip() == f"warning: {machines / 'bad.toml'}:2: invalid IPv4 address '10.0.0.999'"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("machine", "add", "x", "--mac", "nope"), "invalid MAC address 'nope'"),
        (("machine", "add", "bad name", "--mac", "52:54:00:00:00:01"), "1-63 characters"),
        (("machine", "add", "x", "--mac", "52:54:00:00:00:01", "--profile", "ghost"), "profile 'ghost' does not exist"),
        (("machine", "show", "ghost"), "machine 'ghost' not found"),
        (("machine", "set-profile", "ghost"), "give a PROFILE or --default"),
        (("machine", "set", "ghost"), "nothing to change"),
        (("machine", "wake", "ghost"), "machine 'ghost' not found"),
        (("profile", "add", "p", "--kernel", "k", "--local"), "exactly one of --kernel, --ipxe-file or --local"),
        (("profile", "add", "p", "--local", "--initrd", "i"), "go with --kernel"),
        (("profile", "add", "p", "--kernel", "../etc/passwd"), "relative to the boot files directory"),
        (("profile", "add", "p", "--ipxe-file", "/nonexistent/x.ipxe"), "cannot read /nonexistent/x.ipxe"),
        (("profile", "rm", "local"), "built in"),
    ],
)
def test_errors_are_one_line_exit_2(real_api, cli, error_line, args, fragment) -> None:  # type: ignore[no-untyped-def]
    assert fragment in error_line(cli(*args))


def test_wake_needs_the_boot_role(real_api, cli, error_line) -> None:  # type: ignore[no-untyped-def]
    ok(cli("machine", "add", "web1", "--mac", "52:54:00:12:34:56"))
    assert "boot role is not enabled" in error_line(cli("machine", "wake", "web1"))


def test_profiles(real_api, cli, error_line, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "installer.ipxe"
    script.write_text("#!ipxe\nchain {{ urls.http_base }}/files/installer/{{ mac_hex }}.ipxe\n")
    added = json.loads(
        ok(cli("profile", "add", "installer", "--ipxe-file", str(script), "--description", "d-i", "--json"))
    )
    assert added["kind"] == "ipxe" and added["template"] == script.read_text()
    ok(cli("profile", "add", "tftp-deb", "--kernel", "k", "--initrd", "a", "--initrd", "b", "--transport", "tftp"))
    ok(cli("profile", "add", "disk", "--local"))
    assert "already exists" in error_line(cli("profile", "add", "disk", "--local"))
    ok(cli("profile", "add", "disk", "--local", "--description", "boot the disk", "--replace"))

    listing = ok(cli("profile", "list"))
    for name in ("installer", "tftp-deb", "disk", "discovered *", "local"):
        assert name in listing
    shown = ok(cli("profile", "show", "installer"))
    assert "profile installer" in shown and "chain {{ urls.http_base }}" in shown
    tftp = json.loads(ok(cli("profile", "show", "tftp-deb", "--json")))
    assert (tftp["initrd"], tftp["transport"]) == (["a", "b"], "tftp")

    ok(cli("machine", "add", "web1", "--mac", "52:54:00:12:34:56", "--profile", "disk"))
    assert "used by 1 machine(s): web1" in error_line(cli("profile", "rm", "disk"))
    ok(cli("machine", "rm", "web1"))
    assert ok(cli("profile", "rm", "disk")) == "profile disk removed\n"


def test_set_profile_keeps_the_comments_in_the_file(real_api, cli) -> None:  # type: ignore[no-untyped-def]
    ok(cli("machine", "add", "web1", "--mac", "52:54:00:12:34:56", "--ip", "10.0.0.5"))
    file = real_api.settings.inventory_path / "machines/web1.toml"
    annotated_ip = '\n# reserved in the old DHCP server too\nip = "10.0.0.5"  # rack 3\n'
    header = "# web1: ask ops before reinstalling\n"
    file.write_text(header + file.read_text().replace('ip = "10.0.0.5"\n', annotated_ip))
    ok(cli("machine", "set-profile", "web1", "local"))
    edited = file.read_text()
    assert edited.startswith(header)
    assert annotated_ip in edited
    assert tomllib.loads(edited)["profile"] == "local"
