"""iPXE scripts: what a machine is told to boot, from its profile.

A kernel profile becomes ``kernel``/``initrd``/``boot`` lines over HTTP or TFTP; ``local``
becomes ``exit`` (the firmware falls through to the next boot device, normally the disk);
an ``ipxe`` profile is a Jinja2 template rendered in a sandbox. A template that fails never
leaves a machine without an answer: it gets a script that prints the error and exits, and
the caller gets the error to report.
"""

from __future__ import annotations

import functools
import logging
import posixpath
import re
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from bramble.boot.records import URL_SCHEMES, Machine, Profile

log = logging.getLogger(__name__)

#: A template that produces more than this is cut off and reported (a runaway loop, not a script).
MAX_SCRIPT_BYTES = 64 * 1024
_UNSAFE_ECHO = re.compile(r"[\x00-\x1f\x7f$]")


@dataclass(frozen=True)
class BootUrls:
    """Where the booting machine fetches files: ``http_base`` like ``http://10.0.0.1:8471``."""

    http_base: str
    tftp_server: str

    def file_url(self, path: str, transport: str = "http") -> str:
        """URL of a file under the boot files directory (absolute URLs pass through)."""
        if path.startswith(URL_SCHEMES):
            return path
        quoted = quote(path.lstrip("/"), safe="/-._~+")
        if transport == "tftp":
            return f"tftp://{self.tftp_server}/{quoted}"
        return f"{self.http_base.rstrip('/')}/files/{quoted}"


@dataclass(frozen=True)
class IpxeScript:
    text: str
    error: str | None = None  # set when the profile could not be rendered; text then explains and exits


_ENV = SandboxedEnvironment(
    undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True, trim_blocks=False
)


@functools.lru_cache(maxsize=256)
def _compile(text: str) -> jinja2.Template:
    return _ENV.from_string(text)


def check_template(text: str) -> tuple[int, str] | None:
    """Syntax-check a template: ``(line in the template, message)`` or None when it compiles."""
    try:
        _compile(text)
    except jinja2.TemplateSyntaxError as exc:
        return exc.lineno, exc.message or "syntax error"
    return None


def _echo(text: str) -> str:
    """One safe ``echo`` line: no newlines that would start a command, no ``$`` expansions."""
    return "echo " + _UNSAFE_ECHO.sub(" ", text)


def _who(machine: Machine | None, mac: str) -> str:
    return f"{machine.name} ({mac})" if machine else mac


def _kernel_script(machine: Machine | None, mac: str, profile: Profile, urls: BootUrls) -> str:
    assert profile.kernel is not None
    initrds = [urls.file_url(path, profile.transport) for path in profile.initrd]
    # UEFI kernels find their initrd by name on the command line; BIOS ones ignore the argument.
    args = [f"initrd={posixpath.basename(url.split('?', 1)[0])}" for url in initrds]
    if profile.cmdline:
        args.append(profile.cmdline)
    kernel_line = " ".join(["kernel", urls.file_url(profile.kernel, profile.transport), *args])
    lines = [
        "#!ipxe",
        _echo(f"Bramble: booting {_who(machine, mac)} with profile {profile.name}"),
        f"{kernel_line} || goto failed",
        *(f"initrd {url} || goto failed" for url in initrds),
        "boot || goto failed",
        ":failed",
        _echo(f"Bramble: profile {profile.name} failed to boot; falling through to the next boot device"),
        "exit 1",
    ]
    return "\n".join(lines) + "\n"


def _local_script(machine: Machine | None, mac: str, profile: Profile) -> str:
    return "\n".join(["#!ipxe", _echo(f"Bramble: {_who(machine, mac)} boots from its local disk"), "exit", ""])


def _error_script(mac: str, profile: Profile, error: str) -> str:
    return "\n".join(
        ["#!ipxe", _echo(f"Bramble: profile {profile.name} for {mac} cannot be rendered: {error}"), "exit 1", ""]
    )


def template_context(machine: Machine | None, mac: str, profile: Profile, urls: BootUrls) -> dict[str, Any]:
    """What a template sees. Plain data only: the sandbox keeps it from reaching anything else."""
    return {
        "machine": asdict(machine) if machine else None,
        "mac": mac,
        "mac_hex": mac.replace(":", ""),
        "hostname": machine.hostname if machine else None,
        "ip": machine.ip if machine else None,
        "arch": machine.arch if machine else None,
        "profile": {"name": profile.name, "description": profile.description},
        "urls": {"http_base": urls.http_base.rstrip("/"), "tftp_server": urls.tftp_server},
        "files": urls.http_base.rstrip("/") + "/files",
    }


def _template_script(machine: Machine | None, mac: str, profile: Profile, urls: BootUrls) -> str:
    assert profile.template is not None
    template = _compile(profile.template)
    out: list[str] = []
    size = 0
    for piece in template.generate(template_context(machine, mac, profile, urls)):
        size += len(piece)
        if size > MAX_SCRIPT_BYTES:
            raise ValueError(f"the script is longer than {MAX_SCRIPT_BYTES} bytes")
        out.append(piece)
    text = "".join(out)
    if not text.lstrip().startswith("#!ipxe"):
        text = "#!ipxe\n" + text
    return text if text.endswith("\n") else text + "\n"


def render(machine: Machine | None, mac: str, profile: Profile, urls: BootUrls) -> IpxeScript:
    """The script for one boot, with the error (if any) for the caller to report."""
    if profile.kind == "kernel":
        return IpxeScript(_kernel_script(machine, mac, profile, urls))
    if profile.kind == "local":
        return IpxeScript(_local_script(machine, mac, profile))
    try:
        return IpxeScript(_template_script(machine, mac, profile, urls))
    except jinja2.TemplateSyntaxError as exc:
        error = f"template line {exc.lineno}: {exc.message}"
    except jinja2.TemplateError as exc:
        error = f"template: {exc.message or exc.__class__.__name__}"
    except Exception as exc:  # a sandbox refusal, a runaway loop, a bad filter argument: all the same to the machine
        error = f"template: {exc}"
    return IpxeScript(_error_script(mac, profile, error), error)


def render_script(machine: Machine | None, mac: str, profile: Profile, urls: BootUrls) -> str:
    """The script text; a rendering error is logged and the machine gets a script that says so."""
    script = render(machine, mac, profile, urls)
    if script.error:
        log.warning("iPXE profile %s for %s: %s", profile.name, mac, script.error)
    return script.text
