"""The bare-metal inventory as plain files: ``machines/``, ``profiles/``, ``groups/`` of TOML.

People edit these files by hand (or in git), Bramble edits them through the API, and both
kinds of change take effect without a restart:

- Reads come from an in-memory snapshot with MAC and IP indexes (the DHCP server asks
  ``machine_by_mac`` for every packet). At most once per ``reload_seconds`` a lookup stats
  the files; only files whose inode, size or times changed are read again.
- A file that does not parse or validate is skipped and reported with its path and line
  (``problems()``); it never takes the server down.
- Writes are atomic (temporary file in the same directory, fsync, rename, fsync of the
  directory). A write edits the existing file rather than replacing it (``render_toml``):
  the user's comments, blank lines and key order survive, so a change is a minimal diff in
  git, and a write that changes nothing leaves the file byte-identical.
- When the root is a git repository, the changed file alone is committed with the actor as
  author and a message that says who and why. A failed commit is reported; the written
  file stands.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import tomli_w
import tomlkit
from tomlkit.items import Item, String

from bramble.boot.ipxe import check_template
from bramble.boot.records import (
    BUILTIN_PROFILES,
    Group,
    InventoryConflict,
    InventoryNotFound,
    InventoryProblem,
    InventoryWriteFailed,
    Machine,
    Profile,
    RecordError,
    WriteResult,
    check_name,
    discovered_name,
    group_from_toml,
    group_to_toml,
    machine_from_toml,
    machine_to_toml,
    normalize_mac,
    profile_from_toml,
    profile_to_toml,
    utcnow,
)
from bramble.boot.schedule import WakeSchedule, parse_schedule

log = logging.getLogger(__name__)

Kind = Literal["machines", "profiles", "groups"]
KINDS: tuple[Kind, ...] = ("machines", "profiles", "groups")
MAX_FILE_BYTES = 1024 * 1024
SUFFIX = ".toml"
DISCOVER_ACTOR = "system:boot"
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_SAFE_EMAIL = re.compile(r"[^A-Za-z0-9._+-]+")

Record = Machine | Profile | Group
Stamp = tuple[int, int, int, int]


@dataclass
class _Entry:
    stamp: Stamp
    text: str
    record: Record | None
    problem: InventoryProblem | None


@dataclass(frozen=True)
class _Snapshot:
    machines: dict[str, Machine] = field(default_factory=dict)
    profiles: dict[str, Profile] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    by_mac: dict[str, Machine] = field(default_factory=dict)
    by_ip: dict[str, Machine] = field(default_factory=dict)
    problems: tuple[InventoryProblem, ...] = ()


def _stamp(st: os.stat_result) -> Stamp:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def key_line(text: str, key: str | None) -> int | None:
    """The line (1-based) where a top-level ``key = ...`` is set, for problems that name a field."""
    if not key:
        return None
    pattern = re.compile(rf"^[ \t]*(?:{re.escape(key)}|\"{re.escape(key)}\"|'{re.escape(key)}')[ \t]*=", re.MULTILINE)
    match = pattern.search(text)
    return text.count("\n", 0, match.start()) + 1 if match else None


def parse_file(path: Path, kind: Kind, text: str) -> tuple[Record | None, InventoryProblem | None]:
    """Turn one file's text into a record, or into a problem naming the path and line."""
    name = path.name[: -len(SUFFIX)]
    where = str(path)
    try:
        check_name(name, "file name")
    except RecordError as exc:
        return None, InventoryProblem(where, None, exc.message)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        position = _TOML_POSITION.search(message)
        line = int(position[1]) if position else None
        return None, InventoryProblem(where, line, f"not valid TOML: {_TOML_POSITION.sub('', message)}")
    try:
        record: Record
        if kind == "machines":
            record = machine_from_toml(name, data)
        elif kind == "profiles":
            record = profile_from_toml(name, data)
            if record.template is not None and (bad := check_template(record.template)) is not None:
                return None, InventoryProblem(where, _template_line(text, bad[0]), f"template: {bad[1]}")
        else:
            record = group_from_toml(name, data)
    except RecordError as exc:
        return None, InventoryProblem(where, key_line(text, exc.field), exc.message)
    return record, None


def _template_line(text: str, template_line: int) -> int | None:
    start = key_line(text, "template")
    if start is None:
        return None
    first = text.splitlines()[start - 1]
    # `template = """` with nothing after the quotes: the template starts on the next line.
    opens_alone = first.rstrip().endswith(('"""', "'''"))
    return start + template_line - (0 if opens_alone else 1)


def render_toml(data: Mapping[str, Any], previous: str | None = None) -> str:
    """The text of a file that holds exactly ``data``, keeping as much of ``previous`` as it can.

    People keep the inventory in git and write comments in it, so a change made by Bramble
    must be a minimal diff: keys whose value is unchanged keep their line as it is (comments,
    spacing, quoting, multi-line strings), a changed value is replaced on its own line (the
    comment at the end of that line stays), keys not in ``data`` lose their line, new keys
    are appended. Without ``previous``, or when it is not valid TOML, the text is written fresh.
    The result always reads back (with ``tomllib``) as ``data``; an edit that would not is
    dropped for the fresh text.
    """
    fresh = tomli_w.dumps(dict(data))
    if previous is None:
        return fresh
    try:
        # Old values as Bramble reads them: tomlkit keeps a CRLF inside a multi-line string
        # where tomllib (and so the records) reads LF.
        held = tomllib.loads(previous)
        document = tomlkit.parse(previous)
        first_line = previous.split("\n", 1)[0]
        newline = "\r\n" if first_line.endswith("\r") else "\n"  # a new line ends like the file's lines
        for key in [key for key in document if key not in data]:
            del document[key]
        for key, value in data.items():
            if key not in document:
                added = tomlkit.item(value)
                added.trivia.trail = newline
                document[key] = added
            elif key not in held or not same_toml_value(held[key], value):
                document[key] = _replacement(value, document.item(key))
        edited = document.as_string()
        if same_toml_value(tomllib.loads(edited), tomllib.loads(fresh)):
            return edited
        log.warning("inventory: could not edit the file in place; writing it afresh")
    except Exception as exc:  # a file tomlkit rejects (or trips over) is written fresh: never a crash
        log.debug("inventory: not editing the file in place (%s); writing it afresh", exc)
    return fresh


def _replacement(value: Any, old: object) -> Item:
    """A new value for an existing key; a multi-line string stays multi-line when it still can."""
    if isinstance(old, String) and old.type.is_multiline() and isinstance(value, str) and "\n" in value:
        candidate = tomlkit.string(value, multiline=True)
        with contextlib.suppress(tomllib.TOMLDecodeError):
            if tomllib.loads(f"v = {candidate.as_string()}\n")["v"] == value:
                return candidate
    return tomlkit.item(value)


def same_toml_value(a: Any, b: Any) -> bool:
    """Equal as TOML values: types must match (``true`` is not ``1``), date-times compare as UTC.

    A date-time without an offset counts as UTC, as the records read it.
    """
    if isinstance(a, datetime) or isinstance(b, datetime):
        if not (isinstance(a, datetime) and isinstance(b, datetime)):
            return False
        return _as_utc(a) == _as_utc(b)
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        if not (isinstance(a, Mapping) and isinstance(b, Mapping)) or a.keys() != b.keys():
            return False
        return all(same_toml_value(a[key], b[key]) for key in a)
    if isinstance(a, list | tuple) or isinstance(b, list | tuple):
        if not (isinstance(a, list | tuple) and isinstance(b, list | tuple)) or len(a) != len(b):
            return False
        return all(same_toml_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, date) or isinstance(b, date):
        return type(a) is type(b) and a == b
    return _plain_type(a) is _plain_type(b) and a == b


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _plain_type(value: Any) -> type:
    """The builtin type behind a value (tomlkit's items subclass str, int, float, bool)."""
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind
    return type(value)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    On any failure the temporary file is removed and the old file is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _fsync_dir(path.parent)


def _existing_text(path: Path) -> str | None:
    """The file's current text to edit, or None to write afresh (missing, unreadable, huge, not UTF-8)."""
    if not path.is_file():  # a FIFO would block the read; a directory fails the write with a clear error
        return None
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError:
        return None
    if len(raw) > MAX_FILE_BYTES:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Inventory:
    """Machines, boot profiles and groups, one TOML file each under ``root``."""

    def __init__(
        self,
        root: Path,
        default_profile: str = "discovered",
        *,
        reload_seconds: float = 1.0,
        git_timeout: float = 15.0,
        discover_limit: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = Path(root)
        self.default_profile = default_profile
        self.reload_seconds = reload_seconds
        self.git_timeout = git_timeout
        self.discover_limit = discover_limit
        self._clock = clock
        self._entries: dict[Kind, dict[str, _Entry]] = {kind: {} for kind in KINDS}
        self._dir_problems: list[InventoryProblem] = []
        self._snapshot = self._build_snapshot()  # built-ins only, until the first lookup reads the files
        self._last_scan: float | None = None
        self._scan_lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._discover_refused: set[str] = set()

    # ------------------------------------------------------------------ loading
    def path_of(self, kind: Kind, name: str) -> Path:
        return self.root / kind / f"{name}{SUFFIX}"

    def relative(self, kind: Kind, name: str) -> str:
        return f"{kind}/{name}{SUFFIX}"

    def _current(self) -> _Snapshot:
        last = self._last_scan
        if last is None or self._clock() - last >= self.reload_seconds:
            self.refresh()
        return self._snapshot

    def refresh(self, *, wait: bool = False) -> bool:
        """Re-read what changed on disk; True if anything did.

        Without ``wait``, a lookup that finds another thread scanning uses the current snapshot
        instead of queueing behind it.
        """
        if not self._scan_lock.acquire(blocking=wait):
            return False
        try:
            first = self._last_scan is None
            self._last_scan = self._clock()
            changed = False
            dir_problems: list[InventoryProblem] = []
            for kind in KINDS:
                changed |= self._scan_kind(kind, dir_problems)
            if changed or first or dir_problems != self._dir_problems:
                self._dir_problems = dir_problems
                self._snapshot = self._build_snapshot()
                changed = True
            return changed
        finally:
            self._scan_lock.release()

    def _scan_kind(self, kind: Kind, dir_problems: list[InventoryProblem]) -> bool:
        directory = self.root / kind
        old = self._entries[kind]
        new: dict[str, _Entry] = {}
        try:
            with os.scandir(directory) as listing:
                found = [entry for entry in listing if entry.name.endswith(SUFFIX) and not entry.name.startswith(".")]
        except FileNotFoundError:
            found = []
        except OSError as exc:
            dir_problems.append(InventoryProblem(str(directory), None, f"cannot list: {exc.strerror}"))
            found = []
        changed = False
        for dir_entry in found:
            name = dir_entry.name[: -len(SUFFIX)]
            try:
                st = dir_entry.stat()
            except OSError:
                continue  # removed between listing and stat: the next scan sees it gone
            stamp = _stamp(st)
            previous = old.get(name)
            if previous is not None and previous.stamp == stamp:
                new[name] = previous
                continue
            new[name] = self._load(Path(dir_entry.path), kind, st)
            changed = True
        if set(new) != set(old):
            changed = True
        self._entries[kind] = new
        return changed

    def _load(self, path: Path, kind: Kind, st: os.stat_result) -> _Entry:
        where = str(path)
        if not path.is_file():
            return _Entry(_stamp(st), "", None, InventoryProblem(where, None, "not a regular file"))
        if st.st_size > MAX_FILE_BYTES:
            return _Entry(_stamp(st), "", None, InventoryProblem(where, None, f"larger than {MAX_FILE_BYTES} bytes"))
        try:
            raw = path.read_bytes()
        except OSError as exc:
            return _Entry(_stamp(st), "", None, InventoryProblem(where, None, f"cannot read: {exc.strerror}"))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            return _Entry(_stamp(st), "", None, InventoryProblem(where, line, "not UTF-8 text"))
        record, problem = parse_file(path, kind, text)
        return _Entry(_stamp(st), text, record, problem)

    def _build_snapshot(self) -> _Snapshot:
        problems = list(self._dir_problems)
        records: dict[Kind, dict[str, Any]] = {}
        for kind in KINDS:
            records[kind] = {}
            for name in sorted(self._entries[kind]):
                entry = self._entries[kind][name]
                if entry.problem is not None:
                    problems.append(entry.problem)
                elif entry.record is not None:
                    records[kind][name] = entry.record
        machines: dict[str, Machine] = records["machines"]
        profiles: dict[str, Profile] = {**BUILTIN_PROFILES, **records["profiles"]}
        by_mac: dict[str, Machine] = {}
        by_ip: dict[str, Machine] = {}
        for name, machine in machines.items():
            entry = self._entries["machines"][name]
            where = str(self.path_of("machines", name))
            owner = by_mac.setdefault(machine.mac, machine)
            if owner is not machine:
                problems.append(
                    InventoryProblem(
                        where,
                        key_line(entry.text, "mac"),
                        f"MAC {machine.mac} is also used by {self.path_of('machines', owner.name)}; "
                        f"that file wins, this one is not used for booting",
                    )
                )
            if machine.ip is not None:
                ip_owner = by_ip.setdefault(machine.ip, machine)
                if ip_owner is not machine:
                    problems.append(
                        InventoryProblem(
                            where,
                            key_line(entry.text, "ip"),
                            f"IP {machine.ip} is also given to {self.path_of('machines', ip_owner.name)}",
                        )
                    )
            if machine.profile is not None and machine.profile not in profiles:
                problems.append(
                    InventoryProblem(
                        where,
                        key_line(entry.text, "profile"),
                        f"profile {machine.profile!r} does not exist; the machine boots "
                        f"the default profile {self.default_profile!r}",
                    )
                )
        if self.default_profile not in profiles:
            problems.append(
                InventoryProblem(
                    "boot.default_profile",
                    None,
                    f"the default profile {self.default_profile!r} does not exist; using the built-in 'discovered'",
                )
            )
        return _Snapshot(machines, profiles, records["groups"], by_mac, by_ip, tuple(problems))

    # ------------------------------------------------------------------ lookups
    def machine_by_mac(self, mac: str | bytes) -> Machine | None:
        """The hot path: one dict lookup, plus a stat pass at most once per ``reload_seconds``."""
        snapshot = self._current()
        if type(mac) is not str:
            mac = ":".join(f"{b:02x}" for b in mac[:6])
        found = snapshot.by_mac.get(mac)
        if found is None and not (len(mac) == 17 and mac[2] == ":" and mac == mac.lower()):  # other spellings
            try:
                found = snapshot.by_mac.get(normalize_mac(mac))
            except RecordError:
                return None
        return found

    def machine_by_ip(self, ip: str) -> Machine | None:
        return self._current().by_ip.get(ip)

    def machine(self, name: str) -> Machine | None:
        return self._current().machines.get(name)

    def machines(self) -> list[Machine]:
        return list(self._current().machines.values())

    def profile(self, name: str) -> Profile | None:
        return self._current().profiles.get(name)

    def profiles(self) -> list[Profile]:
        return sorted(self._current().profiles.values(), key=lambda p: p.name)

    def group(self, name: str) -> Group | None:
        return self._current().groups.get(name)

    def groups(self) -> list[Group]:
        return list(self._current().groups.values())

    def problems(self) -> list[InventoryProblem]:
        return list(self._current().problems)

    def profile_for(self, machine: Machine | None) -> Profile:
        """What a machine boots: its own profile, else the default, else the built-in 'discovered'."""
        profiles = self._current().profiles
        if machine is not None and machine.profile is not None and machine.profile in profiles:
            return profiles[machine.profile]
        return profiles.get(self.default_profile) or BUILTIN_PROFILES["discovered"]

    def machines_using(self, profile: str) -> list[str]:
        return [m.name for m in self.machines() if m.profile == profile]

    def wake_times(self, machine: Machine) -> tuple[WakeSchedule, ...]:
        """The machine's own schedule plus those of its groups."""
        groups = self._current().groups
        texts = list(machine.wake_at)
        for name in machine.groups:
            if name in groups:
                texts.extend(groups[name].wake_at)
        return tuple(parse_schedule(text) for text in dict.fromkeys(texts))

    # ------------------------------------------------------------------ writes
    def put_machine(self, machine: Machine, *, actor: str, reason: str, request_id: str = "") -> WriteResult:
        """Create or replace ``machines/<name>.toml``. Refuses a MAC or IP another machine has."""
        with self._write_lock:
            self.refresh(wait=True)
            snapshot = self._snapshot
            owner = snapshot.by_mac.get(machine.mac)
            if owner is not None and owner.name != machine.name:
                raise InventoryConflict(f"MAC {machine.mac} already belongs to machine {owner.name!r}")
            if machine.ip is not None:
                ip_owner = snapshot.by_ip.get(machine.ip)
                if ip_owner is not None and ip_owner.name != machine.name:
                    raise InventoryConflict(f"IP {machine.ip} is already given to machine {ip_owner.name!r}")
            if machine.profile is not None and machine.profile not in snapshot.profiles:
                raise RecordError(f"profile {machine.profile!r} does not exist", "profile")
            previous = snapshot.machines.get(machine.name)
            now = utcnow()
            stored = machine.with_changes(
                created=machine.created or (previous.created if previous else None) or now, updated=now
            )
            if previous is not None and previous == machine.with_changes(
                created=machine.created or previous.created, updated=previous.updated
            ):
                stored = previous  # nothing changed: no new stamps, so no diff and no commit
            return self._write("machines", machine.name, machine_to_toml(stored), actor, reason, request_id)

    def remove_machine(self, name: str, *, actor: str, reason: str, request_id: str = "") -> WriteResult:
        with self._write_lock:
            if not self.path_of("machines", name).exists():
                raise InventoryNotFound(f"machine {name!r} not found")
            return self._write("machines", name, None, actor, reason, request_id)

    def put_profile(self, profile: Profile, *, actor: str, reason: str, request_id: str = "") -> WriteResult:
        if profile.template is not None and (bad := check_template(profile.template)) is not None:
            raise RecordError(f"template line {bad[0]}: {bad[1]}", "template")
        with self._write_lock:
            return self._write("profiles", profile.name, profile_to_toml(profile), actor, reason, request_id)

    def remove_profile(self, name: str, *, actor: str, reason: str, request_id: str = "") -> WriteResult:
        with self._write_lock:
            self.refresh(wait=True)
            if not self.path_of("profiles", name).exists():
                if name in BUILTIN_PROFILES:
                    raise InventoryConflict(f"profile {name!r} is built in and cannot be removed")
                raise InventoryNotFound(f"profile {name!r} not found")
            users = self.machines_using(name)
            if users and name not in BUILTIN_PROFILES:
                raise InventoryConflict(f"profile {name!r} is used by {len(users)} machine(s): {', '.join(users)}")
            if name == self.default_profile and name not in BUILTIN_PROFILES:
                raise InventoryConflict(f"profile {name!r} is the default profile (boot.default_profile)")
            return self._write("profiles", name, None, actor, reason, request_id)

    def put_group(self, group: Group, *, actor: str, reason: str, request_id: str = "") -> WriteResult:
        with self._write_lock:
            return self._write("groups", group.name, group_to_toml(group), actor, reason, request_id)

    def remove_group(self, name: str, *, actor: str, reason: str, request_id: str = "") -> WriteResult:
        with self._write_lock:
            if not self.path_of("groups", name).exists():
                raise InventoryNotFound(f"group {name!r} not found")
            return self._write("groups", name, None, actor, reason, request_id)

    def discover(self, mac: str, arch: str, ip: str | None = None) -> Machine:
        """An unknown MAC PXE-booted: record it as a discovered machine with the default profile.

        Idempotent (a known MAC returns its machine). Writes a file and maybe a git commit, so
        call it off the event loop. Past ``discover_limit`` discovered machines, nothing more is
        written (a MAC flood must not fill the disk): the machine is returned unsaved.
        """
        with self._write_lock:
            known = self.machine_by_mac(mac)
            if known is not None:
                return known
            self.refresh(wait=True)
            mac = normalize_mac(mac)
            name = base = discovered_name(mac)
            taken = self._snapshot.machines
            suffix = 2
            while name in taken or self.path_of("machines", name).exists():
                name = f"{base}-{suffix}"
                suffix += 1
            machine = Machine(name=name, mac=mac, arch=arch, ip=ip, discovered=True)
            if machine.ip is not None and machine.ip in self._snapshot.by_ip:
                machine = machine.with_changes(ip=None)
            discovered = sum(1 for m in taken.values() if m.discovered)
            if discovered >= self.discover_limit:
                if mac not in self._discover_refused:
                    self._discover_refused.add(mac)
                    log.warning("not recording %s: %d discovered machines already (the limit)", mac, discovered)
                return machine
            result = self.put_machine(
                machine, actor=DISCOVER_ACTOR, reason=f"discovered by network boot (arch {machine.arch})"
            )
            if result.git_error:
                log.warning("discovered %s: %s", name, result.git_error)
            return self._snapshot.machines.get(name, machine)

    def _write(
        self, kind: Kind, name: str, data: Mapping[str, Any] | None, actor: str, reason: str, request_id: str
    ) -> WriteResult:
        path = self.path_of(kind, name)
        relative = self.relative(kind, name)
        try:
            if data is None:
                path.unlink()
                with contextlib.suppress(OSError):
                    _fsync_dir(path.parent)
            else:
                previous = _existing_text(path)
                text = render_toml(data, previous)
                if text != previous:  # an unchanged file keeps its bytes, inode and times
                    atomic_write(path, text.encode())
        except FileNotFoundError:
            pass  # removing what someone else removed first: the outcome is the same
        except OSError as exc:
            raise InventoryWriteFailed(f"cannot write {path}: {exc.strerror or exc}") from None
        self.refresh(wait=True)
        commit, git_error = self._commit(relative, kind, name, actor, reason, request_id, removed=data is None)
        return WriteResult(relative, commit, git_error)

    # ------------------------------------------------------------------ git
    def is_git(self) -> bool:
        return (self.root / ".git").exists()

    def _git(self, *args: str, identity: tuple[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        config = ["-c", "commit.gpgsign=false", "-c", "core.quotepath=off"]
        if identity:
            config += ["-c", f"user.name={identity[0]}", "-c", f"user.email={identity[1]}"]
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
        return subprocess.run(
            ["git", "-C", str(self.root), *config, *args],
            capture_output=True,
            text=True,
            timeout=self.git_timeout,
            env=env,
            check=False,
        )

    def _commit(
        self, relative: str, kind: str, name: str, actor: str, reason: str, request_id: str, *, removed: bool
    ) -> tuple[str | None, str | None]:
        """Commit exactly ``relative``. Returns (commit id, error); both None when not a repository."""
        if not self.is_git():
            return None, None
        author = re.sub(r"[<>\n\r]", "", actor).strip() or "bramble"
        email = (_SAFE_EMAIL.sub("-", author).strip("-.") or "bramble") + "@bramble.invalid"
        noun = kind.rstrip("s")
        message = f"{noun} {name}: {reason}\n\nChanged by {author} through Bramble."
        if request_id:
            message += f"\nRequest-Id: {request_id}"
        try:
            if removed:
                staged = self._git("rm", "--cached", "--ignore-unmatch", "--quiet", "--", relative)
            else:
                staged = self._git("add", "--", relative)
            if staged.returncode != 0:
                return None, self._git_failure("git rm" if removed else "git add", staged)
            status = self._git("status", "--porcelain", "--", relative)
            if status.returncode == 0 and not status.stdout.strip():
                return None, None  # the file already had this content: nothing to commit
            done = self._git("commit", "--quiet", "-m", message, "--", relative, identity=(author, email))
            if done.returncode != 0:
                return None, self._git_failure("git commit", done)
            head = self._git("rev-parse", "HEAD")
            return (head.stdout.strip() or None), None
        except subprocess.TimeoutExpired:
            return None, self._report(f"git did not finish within {self.git_timeout:g} s; {relative} is written")
        except OSError as exc:
            return None, self._report(f"cannot run git: {exc.strerror or exc}; {relative} is written")

    def _git_failure(self, step: str, done: subprocess.CompletedProcess[str]) -> str:
        detail = " ".join((done.stderr or done.stdout).split())[:300] or f"exit status {done.returncode}"
        return self._report(f"{step} failed: {detail}")

    @staticmethod
    def _report(message: str) -> str:
        log.warning("inventory: %s", message)
        return message
