"""iPXE scripts from profiles: kernel over HTTP/TFTP, local disk, sandboxed templates, errors."""

from __future__ import annotations

import logging

import pytest

from bramble.boot.ipxe import BootUrls, check_template, render, render_script
from bramble.boot.records import BUILTIN_PROFILES, Machine, Profile

URLS = BootUrls(http_base="http://10.99.0.1:8471/", tftp_server="10.99.0.1")
MAC = "52:54:00:12:34:56"
WEB1 = Machine(name="web1", mac=MAC, ip="10.99.0.50", hostname="web1.lab", arch="x86_64", notes="rack 3")


def lines(text: str) -> list[str]:
    return text.splitlines()


def test_kernel_profile_over_http_names_the_initrd_for_uefi() -> None:
    profile = Profile(
        name="deb", kind="kernel", kernel="debian/vmlinuz", initrd=("debian/initrd.gz",), cmdline="console=ttyS0 quiet"
    )
    script = render_script(WEB1, MAC, profile, URLS)
    assert lines(script)[0] == "#!ipxe"
    assert (
        "kernel http://10.99.0.1:8471/files/debian/vmlinuz initrd=initrd.gz console=ttyS0 quiet || goto failed"
        in lines(script)
    )
    assert "initrd http://10.99.0.1:8471/files/debian/initrd.gz || goto failed" in lines(script)
    assert "boot || goto failed" in lines(script)
    assert lines(script)[-1] == "exit 1"  # only reached when a download or the boot failed


def test_kernel_profile_over_tftp_with_two_initrds_and_an_absolute_url() -> None:
    profile = Profile(
        name="multi",
        kind="kernel",
        kernel="k/vmlinuz",
        initrd=("k/initrd.img", "https://mirror.example/firmware.cpio"),
        transport="tftp",
    )
    script = render_script(None, MAC, profile, URLS)
    assert "kernel tftp://10.99.0.1/k/vmlinuz initrd=initrd.img initrd=firmware.cpio || goto failed" in lines(script)
    assert "initrd tftp://10.99.0.1/k/initrd.img || goto failed" in lines(script)
    assert "initrd https://mirror.example/firmware.cpio || goto failed" in lines(script)


def test_local_profile_exits_to_the_firmware() -> None:
    script = render_script(WEB1, MAC, BUILTIN_PROFILES["local"], URLS)
    assert lines(script) == ["#!ipxe", f"echo Bramble: web1 ({MAC}) boots from its local disk", "exit"]


def test_discovered_builtin_for_known_and_unknown_machines() -> None:
    discovered = BUILTIN_PROFILES["discovered"]
    known = render_script(Machine(name="node-525400123456", mac=MAC, discovered=True), MAC, discovered, URLS)
    assert "bramble machine set-profile node-525400123456 PROFILE" in known
    assert lines(known)[-1] == "exit"
    unknown = render_script(None, MAC, discovered, URLS)
    assert f"machine {MAC} is not in the inventory" in unknown


def test_template_sees_machine_mac_and_urls() -> None:
    template = (
        "#!ipxe\n"
        "kernel {{ files }}/{{ machine.arch }}/vmlinuz hostname={{ hostname }} ip={{ ip }} id={{ mac_hex }}\n"
        "chain {{ urls.http_base }}/boot/{{ machine.name }}.ipxe\n"
        "# {{ machine.notes | upper }} via {{ urls.tftp_server }}\n"
    )
    profile = Profile(name="tpl", kind="ipxe", template=template)
    result = render(WEB1, MAC, profile, URLS)
    assert result.error is None
    assert lines(result.text) == [
        "#!ipxe",
        "kernel http://10.99.0.1:8471/files/x86_64/vmlinuz hostname=web1.lab ip=10.99.0.50 id=525400123456",
        "chain http://10.99.0.1:8471/boot/web1.ipxe",
        "# RACK 3 via 10.99.0.1",
    ]


def test_template_without_header_gets_one() -> None:
    result = render(None, MAC, Profile(name="t", kind="ipxe", template="exit"), URLS)
    assert result.text == "#!ipxe\nexit\n"


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("#!ipxe\necho {{ machine.name }}\n", "has no attribute 'name'"),  # no machine: StrictUndefined
        ("#!ipxe\necho {{ nothing_here }}\n", "'nothing_here' is undefined"),
        ("#!ipxe\n{{ ''.__class__.__mro__[1].__subclasses__() }}\n", "unsafe"),
        ("#!ipxe\n{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}\n", "longer than"),
    ],
)
def test_template_errors_give_a_script_that_says_so_and_exits(
    template: str, fragment: str, caplog: pytest.LogCaptureFixture
) -> None:
    profile = Profile(name="bad", kind="ipxe", template=template)
    result = render(None, MAC, profile, URLS)
    assert result.error is not None and fragment in result.error
    assert lines(result.text)[0] == "#!ipxe"
    assert lines(result.text)[1].startswith(f"echo Bramble: profile bad for {MAC} cannot be rendered")
    assert lines(result.text)[-1] == "exit 1"
    with caplog.at_level(logging.WARNING):
        assert render_script(None, MAC, profile, URLS) == result.text
    assert fragment in caplog.text


def test_syntax_errors_are_found_before_rendering() -> None:
    assert check_template("#!ipxe\necho {{ mac }}\n") is None
    line, message = check_template("#!ipxe\n\n{% if mac %}\n")  # type: ignore[misc]
    assert line == 3 and "endif" in message
    result = render(None, MAC, Profile(name="bad", kind="ipxe", template="#!ipxe\n{{ mac\n"), URLS)
    assert result.error is not None and result.error.startswith("template line 2")


def test_echo_lines_cannot_inject_commands() -> None:
    profile = Profile(name="bad", kind="ipxe", template="{{ missing }}")
    text = render(None, "aa:bb:cc:dd:ee:ff\nshell ${x}", profile, URLS).text
    assert "shell" not in [line.split()[0] for line in lines(text)]
    assert "$" not in text
