"""The bare-metal inventory's records: machines, boot profiles, groups, and their validation.

Pure on purpose (no I/O, no subprocess): core validates API input with these same classes,
and the file loader turns their errors into problems that name the file and line. Every
record validates itself on construction, so an invalid Machine or Profile cannot exist.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any, Literal

from bramble.boot.schedule import ScheduleError, parse_schedule

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
NAME_RULE = "1-63 characters: letters, digits, '.', '_' and '-', starting with a letter or digit"
_HOSTNAME_LABEL = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")
_HEX = re.compile(r"^[0-9a-f]{12}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_INTERFACE = re.compile(r"^[^\s/:]{1,15}$")

#: Architecture names as in the compute layer, with the spellings people also use.
ARCHES = ("x86_64", "i386", "aarch64", "arm", "riscv64", "ppc64le", "s390x", "loongarch64")
_ARCH_ALIASES = {
    **{arch: arch for arch in ARCHES},
    "amd64": "x86_64",
    "x64": "x86_64",
    "x86-64": "x86_64",
    "i686": "i386",
    "x86": "i386",
    "ia32": "i386",
    "arm64": "aarch64",
    "armhf": "arm",
    "armv7": "arm",
    "ppc64el": "ppc64le",
}

ProfileKind = Literal["kernel", "ipxe", "local"]
PROFILE_KINDS: tuple[ProfileKind, ...] = ("kernel", "ipxe", "local")
Transport = Literal["http", "tftp"]
TRANSPORTS: tuple[Transport, ...] = ("http", "tftp")
URL_SCHEMES = ("http://", "https://", "tftp://")


class RecordError(ValueError):
    """A record is invalid. ``field`` names the offending key so the loader can find its line."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InventoryError(Exception):
    """Base of what inventory writes refuse or fail with; the message is for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InventoryNotFound(InventoryError):
    """No machine/profile/group of that name."""


class InventoryConflict(InventoryError):
    """The change clashes with what is there (name taken, MAC or IP in use, profile in use)."""


class InventoryWriteFailed(InventoryError):
    """The file could not be written; the old file, if any, is untouched."""


@dataclass(frozen=True)
class InventoryProblem:
    """Something wrong in a file the user edits: reported, the file skipped, never a crash."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}" if self.line else f"{self.path}: {self.message}"


@dataclass(frozen=True)
class WriteResult:
    """What a write did: the file (relative to the inventory root) and the git commit, if any.

    ``git_error`` is set when the file was written but committing it failed: the write stands.
    """

    path: str
    commit: str | None = None
    git_error: str | None = None


# ------------------------------------------------------------------ field checks
def check_name(value: object, what: str = "name", field_name: str | None = "name") -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise RecordError(f"invalid {what} {value!r}: {NAME_RULE}", field_name)
    return value


def normalize_mac(value: object) -> str:
    """Any common spelling (colons, dashes, Cisco dots, bare hex) to lowercase colon form."""
    if not isinstance(value, str):
        raise RecordError(f"MAC must be a string, got {value!r}", "mac")
    hex_digits = re.sub(r"[:\-.]", "", value.strip().lower())
    if not _HEX.match(hex_digits):
        raise RecordError(f"invalid MAC address {value!r}: expected six hex bytes like 52:54:00:12:34:56", "mac")
    return ":".join(hex_digits[i : i + 2] for i in range(0, 12, 2))


def canonical_arch(value: object) -> str:
    if not isinstance(value, str) or value.strip().lower() not in _ARCH_ALIASES:
        raise RecordError(f"unknown architecture {value!r}; known: {', '.join(ARCHES)}", "arch")
    return _ARCH_ALIASES[value.strip().lower()]


def _check_ip(value: object) -> str | None:
    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise ValueError
        return str(ipaddress.IPv4Address(value.strip()))
    except ValueError:
        raise RecordError(f"invalid IPv4 address {value!r}", "ip") from None


def _check_hostname(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 253 or not all(_HOSTNAME_LABEL.match(p) for p in value.split(".")):
        raise RecordError(f"invalid hostname {value!r}: dot-separated labels of letters, digits and '-'", "hostname")
    return value


def _check_text(value: object, what: str, *, single_line: bool = True) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{what} must be a string, got {value!r}", what)
    if single_line and _CONTROL.search(value):
        raise RecordError(f"{what} must be one line without control characters", what)
    return value


def _check_list(value: object, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise RecordError(f"{what} must be a list of strings, got {value!r}", what)
    items = list(value)
    if not all(isinstance(item, str) for item in items):
        raise RecordError(f"{what} must be a list of strings, got {items!r}", what)
    return tuple(dict.fromkeys(items))  # drop repeats, keep order


def check_boot_path(value: object, what: str) -> str:
    """A file under the boot files directory (relative, no '..') or an http(s)/tftp URL."""
    text = _check_text(value, what)
    if not text or any(ch.isspace() for ch in text) or "\\" in text:
        raise RecordError(f"{what} {text!r}: a path or URL without spaces", what)
    if text.startswith(URL_SCHEMES):
        return text
    if "://" in text:
        raise RecordError(f"{what} {text!r}: only http://, https:// and tftp:// URLs", what)
    if text.startswith("/") or ".." in text.split("/"):
        raise RecordError(f"{what} {text!r}: must be relative to the boot files directory, without '..'", what)
    return text


def _check_time(value: object, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise RecordError(f"{what} must be a date-time like 2024-05-01T12:00:00Z, got {value!r}", what)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _check_wake(value: object) -> tuple[str, ...]:
    items = _check_list(value, "wake_at")
    for item in items:
        try:
            parse_schedule(item)
        except ScheduleError as exc:
            raise RecordError(f"invalid wake time {item!r}: {exc}", "wake_at") from None
    return items


# ------------------------------------------------------------------ records
@dataclass(frozen=True)
class Machine:
    """One bare-metal machine. ``profile=None`` means it boots the default profile."""

    name: str
    mac: str
    ip: str | None = None
    hostname: str | None = None
    arch: str = "x86_64"
    profile: str | None = None
    notes: str = ""
    groups: tuple[str, ...] = ()
    wake_at: tuple[str, ...] = ()
    interface: str | None = None
    discovered: bool = False
    created: datetime | None = None
    updated: datetime | None = None

    def __post_init__(self) -> None:
        check_name(self.name, "machine name")
        _set(self, "mac", normalize_mac(self.mac))
        _set(self, "ip", _check_ip(self.ip))
        _set(self, "hostname", _check_hostname(self.hostname))
        _set(self, "arch", canonical_arch(self.arch))
        if self.profile is not None:
            check_name(self.profile, "profile name", "profile")
        _set(self, "notes", _check_text(self.notes, "notes", single_line=False))
        groups = _check_list(self.groups, "groups")
        for group in groups:
            check_name(group, "group name", "groups")
        _set(self, "groups", groups)
        _set(self, "wake_at", _check_wake(self.wake_at))
        if self.interface is not None and (not isinstance(self.interface, str) or not _INTERFACE.match(self.interface)):
            raise RecordError(f"invalid interface name {self.interface!r}: 1-15 characters, no spaces", "interface")
        if not isinstance(self.discovered, bool):
            raise RecordError(f"discovered must be true or false, got {self.discovered!r}", "discovered")
        _set(self, "created", _check_time(self.created, "created"))
        _set(self, "updated", _check_time(self.updated, "updated"))

    def with_changes(self, **changes: Any) -> Machine:
        return replace(self, **changes)


@dataclass(frozen=True)
class Profile:
    """How a machine boots: a kernel (+initrds, command line), an iPXE template, or its local disk."""

    name: str
    kind: ProfileKind
    kernel: str | None = None
    initrd: tuple[str, ...] = ()
    cmdline: str = ""
    transport: Transport = "http"
    template: str | None = None
    description: str = ""
    builtin: bool = False

    def __post_init__(self) -> None:
        check_name(self.name, "profile name")
        if self.kind not in PROFILE_KINDS:
            raise RecordError(f"invalid profile kind {self.kind!r}: use one of {', '.join(PROFILE_KINDS)}", "kind")
        if self.transport not in TRANSPORTS:
            raise RecordError(f"invalid transport {self.transport!r}: use http or tftp", "transport")
        _set(self, "description", _check_text(self.description, "description"))
        _set(self, "cmdline", _check_text(self.cmdline, "cmdline"))
        _set(self, "initrd", tuple(check_boot_path(p, "initrd") for p in _check_list(self.initrd, "initrd")))
        if self.kind == "kernel":
            if self.kernel is None:
                raise RecordError("a kernel profile needs a kernel", "kernel")
            _set(self, "kernel", check_boot_path(self.kernel, "kernel"))
            if self.template is not None:
                raise RecordError('a kernel profile has no template (use kind = "ipxe")', "template")
        else:
            extra = [key for key in ("kernel", "initrd", "cmdline") if getattr(self, key)]
            if extra:
                raise RecordError(f"{', '.join(extra)}: only kernel profiles have these", extra[0])
        if self.kind == "ipxe":
            if not isinstance(self.template, str) or not self.template.strip():
                raise RecordError("an ipxe profile needs a template (the iPXE script text)", "template")
        elif self.kind == "local" and self.template is not None:
            raise RecordError("a local profile has no template", "template")


@dataclass(frozen=True)
class Group:
    """Machines that share a power schedule (a machine lists its groups)."""

    name: str
    wake_at: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        check_name(self.name, "group name")
        _set(self, "wake_at", _check_wake(self.wake_at))
        _set(self, "description", _check_text(self.description, "description"))


def _set(record: object, key: str, value: object) -> None:
    object.__setattr__(record, key, value)


DISCOVERED_TEMPLATE = """\
#!ipxe
{% if machine %}echo Bramble: new machine {{ mac }} was added to the inventory as {{ machine.name }}.
echo Give it a boot profile: bramble machine set-profile {{ machine.name }} PROFILE
{% else %}echo Bramble: machine {{ mac }} is not in the inventory.
{% endif %}echo Booting from the local disk instead.
exit
"""

BUILTIN_PROFILES: dict[str, Profile] = {
    "discovered": Profile(
        name="discovered",
        kind="ipxe",
        template=DISCOVERED_TEMPLATE,
        description="built in: say the machine is new, then boot the local disk",
        builtin=True,
    ),
    "local": Profile(name="local", kind="local", description="built in: boot the local disk", builtin=True),
}


# ------------------------------------------------------------------ TOML mapping
_MACHINE_KEYS = {f.name for f in fields(Machine)} - {"name"}
_PROFILE_KEYS = {f.name for f in fields(Profile)} - {"name", "builtin"}
_GROUP_KEYS = {f.name for f in fields(Group)} - {"name"}


def _check_keys(data: Mapping[str, Any], name: str, allowed: set[str], kind: str) -> dict[str, Any]:
    values = dict(data)
    if "name" in values and values.pop("name") != name:
        raise RecordError(f"name {data['name']!r} differs from the file name {name!r}; drop the key", "name")
    for key in values:
        if key not in allowed:
            raise RecordError(f"unknown key {key!r} in a {kind} file; known: {', '.join(sorted(allowed))}", key)
    return values


def _build(cls: Any, name: str, values: dict[str, Any]) -> Any:
    try:
        return cls(name=name, **values)
    except TypeError as exc:  # a wrong type reaching a check that assumed a string
        raise RecordError(str(exc)) from None


def machine_from_toml(name: str, data: Mapping[str, Any]) -> Machine:
    values = _check_keys(data, name, _MACHINE_KEYS, "machine")
    if "mac" not in values:
        raise RecordError("missing key 'mac'", None)
    return _build(Machine, name, values)


def profile_from_toml(name: str, data: Mapping[str, Any]) -> Profile:
    values = _check_keys(data, name, _PROFILE_KEYS, "profile")
    if "kind" not in values:
        raise RecordError("missing key 'kind' (kernel, ipxe or local)", None)
    return _build(Profile, name, values)


def group_from_toml(name: str, data: Mapping[str, Any]) -> Group:
    return _build(Group, name, _check_keys(data, name, _GROUP_KEYS, "group"))


def _to_toml(record: object, skip: set[str], keep: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Only what differs from the defaults (and ``keep``), in field order: files stay short."""
    out: dict[str, Any] = {}
    for f in fields(record):  # type: ignore[arg-type]
        value = getattr(record, f.name)
        if f.name in skip or value is None or value == ():
            continue
        if value == f.default and f.name not in keep:
            continue
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, datetime):
            value = value.astimezone(UTC).replace(microsecond=0)
        out[f.name] = value
    return out


def machine_to_toml(machine: Machine) -> dict[str, Any]:
    return _to_toml(machine, {"name"}, frozenset({"arch"}))  # arch always written: people look for it


def profile_to_toml(profile: Profile) -> dict[str, Any]:
    data = _to_toml(profile, {"name", "builtin", "kind"})
    return {"kind": profile.kind, **data}


def group_to_toml(group: Group) -> dict[str, Any]:
    return _to_toml(group, {"name"})


def discovered_name(mac: str) -> str:
    """The name a machine gets when it PXE-boots unannounced: node-525400123456."""
    return "node-" + normalize_mac(mac).replace(":", "")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
