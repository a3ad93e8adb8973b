"""The inventory files: round trips, hand edits, corrupt files, duplicates, discovery, atomic writes,
and writes that keep the user's comments and layout."""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta, timezone
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bramble.boot import inventory as inventory_module
from bramble.boot.inventory import Inventory, render_toml, same_toml_value
from bramble.boot.records import (
    ARCHES,
    InventoryConflict,
    InventoryNotFound,
    Machine,
    Profile,
    RecordError,
    machine_from_toml,
    machine_to_toml,
    normalize_mac,
    profile_to_toml,
)
from bramble.boot.schedule import WakeSchedule

WHO = {"actor": "token:tester", "reason": "test"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def inv(tmp_path: Path, clock: Clock) -> Inventory:
    return Inventory(tmp_path / "inventory", "discovered", clock=clock)


def write(inv: Inventory, relative: str, text: str) -> Path:
    path = inv.root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def web1(**changes: object) -> Machine:
    values: dict[str, object] = {"name": "web1", "mac": "52:54:00:12:34:56", "ip": "10.0.0.5", "profile": "deb"}
    values.update(changes)
    return Machine(**values)  # type: ignore[arg-type]


DEB = Profile(name="deb", kind="kernel", kernel="debian/vmlinuz", initrd=("debian/initrd.gz",), cmdline="quiet")


def test_add_edit_remove_round_trip(inv: Inventory) -> None:
    inv.put_profile(DEB, **WHO)
    result = inv.put_machine(web1(groups=("rack1",), wake_at=("mon-fri 07:30",), notes="first\nsecond"), **WHO)
    assert result.path == "machines/web1.toml"
    assert result.commit is None and result.git_error is None  # not a git repository
    stored = inv.machine("web1")
    assert stored is not None
    assert (stored.mac, stored.ip, stored.profile, stored.groups) == (
        "52:54:00:12:34:56",
        "10.0.0.5",
        "deb",
        ("rack1",),
    )
    assert stored.notes == "first\nsecond"
    assert stored.created is not None and stored.updated is not None
    on_disk = tomllib.loads((inv.root / "machines/web1.toml").read_text())
    assert on_disk["mac"] == "52:54:00:12:34:56" and on_disk["arch"] == "x86_64" and "name" not in on_disk

    inv.put_machine(stored.with_changes(profile="local", ip=None), **WHO)
    changed = inv.machine("web1")
    assert changed is not None and changed.profile == "local" and changed.ip is None
    assert changed.created == stored.created
    assert inv.machine_by_ip("10.0.0.5") is None

    inv.remove_machine("web1", **WHO)
    assert inv.machine("web1") is None
    assert inv.machine_by_mac("52:54:00:12:34:56") is None
    assert not (inv.root / "machines/web1.toml").exists()
    with pytest.raises(InventoryNotFound):
        inv.remove_machine("web1", **WHO)


def test_lookups_by_mac_spelling_bytes_and_ip(inv: Inventory) -> None:
    inv.put_machine(web1(profile=None), **WHO)
    for spelling in ("52:54:00:12:34:56", "52-54-00-12-34-56", "5254.0012.3456", "525400123456", "52:54:00:12:34:56"):
        found = inv.machine_by_mac(spelling)
        assert found is not None and found.name == "web1"
    assert inv.machine_by_mac(bytes.fromhex("525400123456")) is not None
    assert inv.machine_by_mac("not a mac") is None
    assert inv.machine_by_ip("10.0.0.5") is not None


def test_hand_edit_is_picked_up_after_the_reload_interval_only(inv: Inventory, clock: Clock) -> None:
    write(inv, "machines/db1.toml", 'mac = "52:54:00:00:00:01"\nprofile = "local"\n')
    machine = inv.machine("db1")
    assert machine is not None and machine.profile == "local"
    write(inv, "machines/db1.toml", 'mac = "52:54:00:00:00:01"\nprofile = "discovered"\nnotes = "moved"\n')
    assert inv.machine("db1").profile == "local"  # type: ignore[union-attr]  # within the interval: cached
    clock.now += 1.0
    edited = inv.machine("db1")
    assert edited is not None and edited.profile == "discovered" and edited.notes == "moved"
    (inv.root / "machines/db1.toml").unlink()
    clock.now += 1.0
    assert inv.machine("db1") is None


def test_unchanged_files_are_not_read_again(inv: Inventory, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    for n in range(5):
        write(inv, f"machines/m{n}.toml", f'mac = "52:54:00:00:00:0{n}"\n')
    assert len(inv.machines()) == 5
    parsed: list[Path] = []
    original = inventory_module.parse_file

    def counting(path: Path, kind: str, text: str):  # type: ignore[no-untyped-def]
        parsed.append(path)
        return original(path, kind, text)  # type: ignore[arg-type]

    monkeypatch.setattr(inventory_module, "parse_file", counting)
    for _ in range(3):
        clock.now += 2
        assert inv.machine_by_mac("52:54:00:00:00:03") is not None
    assert parsed == []
    write(inv, "machines/m3.toml", 'mac = "52:54:00:00:00:03"\nnotes = "edited by hand"\n')
    clock.now += 2
    assert inv.machine("m3").notes == "edited by hand"  # type: ignore[union-attr]
    assert [p.name for p in parsed] == ["m3.toml"]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ('mac = "52:54:00:00:00:01"\narch = x86_64\n', 2, "not valid TOML"),
        ('mac = "52:54:00:00:00:01"\n\nip = "300.1.1.1"\n', 3, "invalid IPv4 address '300.1.1.1'"),
        ('# a comment\nmac = "52:54:00:zz:00:01"\n', 2, "invalid MAC address"),
        ('mac = "52:54:00:00:00:01"\narch = "x86_64"\nprofle = "local"\n', 3, "unknown key 'profle'"),
        ('mac = "52:54:00:00:00:01"\nwake_at = ["25:00"]\n', 2, "invalid wake time '25:00'"),
        ('mac = "52:54:00:00:00:01"\ngroups = "rack1"\n', 2, "groups must be a list"),
        ('ip = "10.0.0.1"\n', None, "missing key 'mac'"),
        ('mac = "52:54:00:00:00:01"\narch = "vax"\n', 2, "unknown architecture 'vax'"),
    ],
)
def test_a_corrupt_file_is_reported_with_path_and_line_and_skipped(
    inv: Inventory, text: str, line: int | None, fragment: str
) -> None:
    write(inv, "machines/good.toml", 'mac = "52:54:00:00:00:99"\n')
    path = write(inv, "machines/bad.toml", text)
    assert [m.name for m in inv.machines()] == ["good"]
    [problem] = inv.problems()
    assert problem.path == str(path)
    assert problem.line == line
    assert fragment in problem.message
    assert str(problem).startswith(f"{path}:{line}: " if line else f"{path}: ")


def test_non_utf8_and_oversized_and_badly_named_files_are_problems(inv: Inventory) -> None:
    (inv.root / "machines").mkdir(parents=True)
    (inv.root / "machines/latin1.toml").write_bytes(b'mac = "52:54:00:00:00:01"\nnotes = "caf\xe9"\n')
    (inv.root / "machines/huge.toml").write_bytes(b"#" * (inventory_module.MAX_FILE_BYTES + 1))
    (inv.root / "machines/bad name.toml").write_text('mac = "52:54:00:00:00:02"\n')
    (inv.root / "machines/.web1.toml.abc.tmp").write_text("half a file")  # temp files are ignored
    (inv.root / "machines/README").write_text("not toml")
    problems = {Path(p.path).name: p for p in inv.problems()}
    assert set(problems) == {"latin1.toml", "huge.toml", "bad name.toml"}
    assert problems["latin1.toml"].line == 2 and "UTF-8" in problems["latin1.toml"].message
    assert "larger than" in problems["huge.toml"].message
    assert "invalid file name" in problems["bad name.toml"].message
    assert inv.machines() == []


def test_duplicate_mac_and_ip_are_reported_first_file_wins(inv: Inventory) -> None:
    write(inv, "machines/a.toml", 'mac = "52:54:00:00:00:01"\nip = "10.0.0.9"\n')
    b = write(inv, "machines/b.toml", 'ip = "10.0.0.9"\nmac = "52-54-00-00-00-01"\n')
    assert inv.machine_by_mac("52:54:00:00:00:01").name == "a"  # type: ignore[union-attr]
    problems = inv.problems()
    assert {(p.path, p.line) for p in problems} == {(str(b), 2), (str(b), 1)}
    assert any("MAC 52:54:00:00:00:01 is also used by" in p.message and "a.toml" in p.message for p in problems)
    assert len(inv.machines()) == 2  # still listed, so people can see and fix it
    with pytest.raises(InventoryConflict, match="already belongs to machine 'a'"):
        inv.put_machine(Machine(name="c", mac="52:54:00:00:00:01"), **WHO)
    with pytest.raises(InventoryConflict, match=r"10\.0\.0\.9"):
        inv.put_machine(Machine(name="c", mac="52:54:00:00:00:02", ip="10.0.0.9"), **WHO)


def test_unknown_profile_in_a_file_is_a_problem_and_boots_the_default(inv: Inventory) -> None:
    path = write(inv, "machines/x.toml", 'mac = "52:54:00:00:00:01"\nprofile = "gone"\n')
    machine = inv.machine("x")
    assert machine is not None
    assert inv.profile_for(machine).name == "discovered"
    [problem] = inv.problems()
    assert (problem.path, problem.line) == (str(path), 2) and "'gone' does not exist" in problem.message
    with pytest.raises(RecordError, match="does not exist"):
        inv.put_machine(machine.with_changes(name="y", mac="52:54:00:00:00:02"), **WHO)


def test_builtin_profiles_and_the_default(tmp_path: Path) -> None:
    inv = Inventory(tmp_path, "installer")
    assert {p.name for p in inv.profiles()} == {"discovered", "local"}
    assert all(p.builtin for p in inv.profiles())
    assert inv.profile_for(None).name == "discovered"  # the configured default does not exist yet
    assert any(p.path == "boot.default_profile" for p in inv.problems())
    inv.put_profile(Profile(name="installer", kind="ipxe", template="#!ipxe\nexit\n"), **WHO)
    assert inv.profile_for(None).name == "installer"
    assert inv.problems() == []
    with pytest.raises(InventoryConflict, match="default profile"):
        inv.remove_profile("installer", **WHO)
    with pytest.raises(InventoryConflict, match="built in"):
        inv.remove_profile("local", **WHO)
    # A file may override a built-in; removing it brings the built-in back.
    inv.put_profile(Profile(name="local", kind="ipxe", template="#!ipxe\necho mine\nexit\n"), **WHO)
    assert inv.profile("local").kind == "ipxe"  # type: ignore[union-attr]
    inv.remove_profile("local", **WHO)
    assert inv.profile("local").builtin  # type: ignore[union-attr]


def test_profile_in_use_cannot_be_removed(inv: Inventory) -> None:
    inv.put_profile(DEB, **WHO)
    inv.put_machine(web1(), **WHO)
    with pytest.raises(InventoryConflict, match="used by 1 machine"):
        inv.remove_profile("deb", **WHO)
    assert inv.machines_using("deb") == ["web1"]


def test_profile_files_report_template_errors_on_the_file_line(inv: Inventory) -> None:
    text = 'kind = "ipxe"\ndescription = "x"\ntemplate = """\n#!ipxe\necho {{ mac }\nexit\n"""\n'
    path = write(inv, "profiles/broken.toml", text)
    assert inv.profile("broken") is None
    [problem] = inv.problems()
    assert problem.path == str(path) and problem.line == 5 and "template" in problem.message
    with pytest.raises(RecordError, match="template line 2"):
        inv.put_profile(Profile(name="p", kind="ipxe", template="#!ipxe\n{% if %}\n"), **WHO)
    bad_kernel = write(inv, "profiles/k.toml", 'kind = "kernel"\ninitrd = ["a"]\n')
    inv.refresh(wait=True)
    assert any(p.path == str(bad_kernel) and "needs a kernel" in p.message for p in inv.problems())


def test_discover_creates_a_machine_with_the_default_profile_once(inv: Inventory) -> None:
    machine = inv.discover("52:54:00:AB:CD:EF", "arm64", "10.0.0.77")
    assert machine.name == "node-525400abcdef"
    assert (machine.mac, machine.arch, machine.ip, machine.discovered) == (
        "52:54:00:ab:cd:ef",
        "aarch64",
        "10.0.0.77",
        True,
    )
    assert machine.profile is None and inv.profile_for(machine).name == "discovered"
    assert (inv.root / "machines/node-525400abcdef.toml").exists()
    again = inv.discover("52-54-00-ab-cd-ef", "x86_64")
    assert again.name == machine.name and again.arch == "aarch64"
    assert len(inv.machines()) == 1


def test_discover_avoids_name_clashes_and_stops_at_the_limit(tmp_path: Path) -> None:
    inv = Inventory(tmp_path, discover_limit=2)
    inv.put_machine(Machine(name="node-525400000001", mac="52:54:00:99:99:99"), **WHO)
    first = inv.discover("52:54:00:00:00:01", "x86_64")
    assert first.name == "node-525400000001-2"
    inv.discover("52:54:00:00:00:02", "x86_64")
    third = inv.discover("52:54:00:00:00:03", "x86_64")
    assert third.discovered and inv.machine(third.name) is None  # over the limit: not written
    assert len(list((tmp_path / "machines").iterdir())) == 3


def test_a_write_that_fails_halfway_leaves_the_old_file_and_no_temp_file(
    inv: Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    inv.put_machine(web1(profile=None), **WHO)
    before = (inv.root / "machines/web1.toml").read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(inventory_module.InventoryWriteFailed, match="No space left"):
        inv.put_machine(web1(profile=None, notes="x" * 10000), **WHO)
    monkeypatch.undo()
    assert sorted(p.name for p in (inv.root / "machines").iterdir()) == ["web1.toml"]
    assert (inv.root / "machines/web1.toml").read_bytes() == before


def test_wake_times_are_validated_and_combine_with_groups(inv: Inventory) -> None:
    for bad in ("7.30", "mon-xyz 07:30", "24:00", "mon 07:30 extra"):
        with pytest.raises(RecordError, match="invalid wake time"):
            Machine(name="m", mac="52:54:00:00:00:01", wake_at=(bad,))
    write(inv, "groups/rack1.toml", 'wake_at = ["weekdays 06:45"]\n')
    machine = Machine(name="m", mac="52:54:00:00:00:01", groups=("rack1", "nogroupfile"), wake_at=("sun 10:00",))
    assert inv.wake_times(machine) == (
        WakeSchedule(frozenset({6}), time(10, 0)),
        WakeSchedule(frozenset(range(5)), time(6, 45)),
    )


def test_record_validation_messages() -> None:
    assert normalize_mac("AA-BB-CC-DD-EE-FF") == "aa:bb:cc:dd:ee:ff"
    with pytest.raises(RecordError, match="1-63 characters"):
        Machine(name="bad name", mac="52:54:00:00:00:01")
    with pytest.raises(RecordError, match="kernel profile needs a kernel"):
        Profile(name="p", kind="kernel")
    with pytest.raises(RecordError, match="relative to the boot files directory"):
        Profile(name="p", kind="kernel", kernel="../../etc/shadow")
    with pytest.raises(RecordError, match="only kernel profiles"):
        Profile(name="p", kind="local", cmdline="quiet")
    with pytest.raises(RecordError, match="one line"):
        Profile(name="p", kind="kernel", kernel="k", cmdline="quiet\nshell")
    with pytest.raises(RecordError, match="interface"):
        Machine(name="m", mac="52:54:00:00:00:01", interface="a-very-long-interface-name")


_KEYS = st.sampled_from(["mac", "ip", "arch", "profile", "groups", "wake_at", "notes", "discovered", "x", "kind"])
_VALUES = st.one_of(
    st.text(max_size=20),
    st.integers(),
    st.booleans(),
    st.lists(st.text(max_size=8), max_size=3),
    st.just("52:54:00:00:00:01"),
    st.just("10.0.0.1"),
)
_TOML_DOCS = st.dictionaries(_KEYS, _VALUES, max_size=6).map(
    lambda d: "".join(f"{k} = {_toml_value(v)}\n" for k, v in d.items())
)


def _toml_value(value: object) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    return json.dumps(value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    junk=st.one_of(st.binary(max_size=200), _TOML_DOCS.map(str.encode)),
    kind=st.sampled_from(["machines", "profiles", "groups"]),
)
def test_junk_files_never_crash_the_loader(tmp_path_factory: pytest.TempPathFactory, junk: bytes, kind: str) -> None:
    root = tmp_path_factory.mktemp("junk")
    (root / kind).mkdir()
    path = root / kind / "junk.toml"
    path.write_bytes(junk)
    inv = Inventory(root)
    loaded = {"machines": inv.machines, "profiles": inv.profiles, "groups": inv.groups}[kind]()
    problems = [p for p in inv.problems() if p.path == str(path)]
    names = {getattr(record, "name", None) for record in loaded}
    assert ("junk" in names) != bool(problems)  # loaded or reported, never both, never neither
    for problem in problems:
        assert problem.message and (problem.line is None or problem.line >= 1)


# ------------------------------------------------------------------ writes keep the user's file
HAND_WRITTEN = '''\
# web1: the front web server in rack 3.
# Ask ops before changing the profile.

mac = "52:54:00:12:34:56"  # on-board NIC, port 1
arch = "x86_64"

# Reserved in the old DHCP server too.
ip = "10.0.0.5"
profile = "local"
groups = [
  "rack3",  # the rack's power schedule
  "web",
]
notes = """
Bought 2021.
Disk replaced 2024-03, "sdb".
"""

created = 2024-05-01T12:00:00Z
updated = 2024-05-01T12:00:00Z
'''


def changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    """The lines a diff removes and adds (difflib), without context."""
    diff = [line for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line[:2] in ("- ", "+ ")]
    return [line[2:] for line in diff if line[0] == "-"], [line[2:] for line in diff if line[0] == "+"]


def reads_as_tomli_w_would_write(text: str, record: Machine) -> bool:
    return same_toml_value(tomllib.loads(text), tomllib.loads(tomli_w.dumps(machine_to_toml(record))))


def test_set_profile_changes_only_the_profile_and_updated_lines(inv: Inventory) -> None:
    path = write(inv, "machines/web1.toml", HAND_WRITTEN)
    machine = inv.machine("web1")
    assert machine is not None and machine.notes == 'Bought 2021.\nDisk replaced 2024-03, "sdb".\n'
    inv.put_machine(machine.with_changes(profile="discovered"), **WHO)
    text = path.read_text()
    stored = inv.machine("web1")
    assert stored is not None and stored.profile == "discovered" and stored.updated != machine.updated
    removed, added = changed_lines(HAND_WRITTEN, text)
    assert removed == ['profile = "local"', "updated = 2024-05-01T12:00:00Z"]
    assert added[0] == 'profile = "discovered"' and added[1].startswith("updated = ") and len(added) == 2
    for line in HAND_WRITTEN.splitlines():
        if "#" in line or line.startswith(("notes", "Bought", "Disk", '"""')):
            assert line in text.splitlines()  # comments and the multi-line string, as written
    assert reads_as_tomli_w_would_write(text, stored)


def test_clearing_a_key_removes_its_line_and_keeps_the_rest(inv: Inventory) -> None:
    path = write(inv, "machines/web1.toml", HAND_WRITTEN)
    machine = inv.machine("web1")
    assert machine is not None
    inv.put_machine(machine.with_changes(ip=None, hostname="web1.example.org"), **WHO)
    text = path.read_text()
    removed, added = changed_lines(HAND_WRITTEN, text)
    assert removed == ['ip = "10.0.0.5"', "updated = 2024-05-01T12:00:00Z"]
    assert added[0].startswith("updated = ") and added[1:] == ['hostname = "web1.example.org"']  # new keys: at the end
    assert "# Reserved in the old DHCP server too.\n" in text  # a comment above a removed key stays
    stored = inv.machine("web1")
    assert stored is not None and stored.ip is None and reads_as_tomli_w_would_write(text, stored)


def test_a_comment_at_the_end_of_a_changed_line_stays(inv: Inventory) -> None:
    path = write(inv, "machines/db1.toml", 'mac = "52:54:00:00:00:01"\nprofile = "local"   # until the reinstall\n')
    machine = inv.machine("db1")
    assert machine is not None
    inv.put_machine(machine.with_changes(profile="discovered"), **WHO)
    assert path.read_text().splitlines()[1] == 'profile = "discovered"   # until the reinstall'


def test_a_write_that_changes_nothing_leaves_the_file_byte_identical(inv: Inventory) -> None:
    path = write(inv, "machines/web1.toml", HAND_WRITTEN)
    before = path.stat()
    machine = inv.machine("web1")
    assert machine is not None
    inv.put_machine(machine, **WHO)
    assert path.read_text() == HAND_WRITTEN
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not even rewritten
    assert inv.machine("web1") == machine  # and 'updated' did not move
    by_hand = 'mac = "52:54:00:00:00:01"  # no stamps, written by hand\narch = "x86_64"\n'
    bare = write(inv, "machines/db1.toml", by_hand)
    inv.refresh(wait=True)
    db1 = inv.machine("db1")
    assert db1 is not None and db1.created is None
    inv.put_machine(db1, **WHO)
    assert bare.read_text() == by_hand  # no created/updated added either
    inv.put_profile(DEB, **WHO)
    profile_text = (inv.root / "profiles/deb.toml").read_bytes()
    inv.put_profile(DEB, **WHO)
    assert (inv.root / "profiles/deb.toml").read_bytes() == profile_text


def test_a_windows_line_ending_file_is_edited_in_place_not_rewritten(inv: Inventory) -> None:
    crlf = HAND_WRITTEN.replace("\n", "\r\n").encode()
    path = inv.root / "machines/web1.toml"
    path.parent.mkdir(parents=True)
    path.write_bytes(crlf)
    machine = inv.machine("web1")
    assert machine is not None and machine.notes == 'Bought 2021.\nDisk replaced 2024-03, "sdb".\n'
    inv.put_machine(machine, **WHO)
    assert path.read_bytes() == crlf  # tomllib reads the CR LF in the multi-line string as LF: unchanged
    inv.put_machine(machine.with_changes(profile="discovered"), **WHO)
    removed, added = changed_lines(crlf.decode(), path.read_bytes().decode())
    assert removed == ['profile = "local"', "updated = 2024-05-01T12:00:00Z"] and len(added) == 2
    changed = inv.machine("web1")
    assert changed is not None
    inv.put_machine(changed.with_changes(hostname="web1.example.org", groups=("rack3",)), **WHO)
    text = path.read_bytes().decode()
    assert text.endswith('hostname = "web1.example.org"\r\n') and "\n" not in text.replace("\r\n", "")  # no mixed ends


IPXE_PROFILE = '''\
kind = "ipxe"
description = "the installer"  # shown in `bramble profile list`

# Jinja2: see docs/netboot.md
template = """
#!ipxe
echo Installing {{ machine.name }} \\\\ "now"
chain {{ urls.http_base }}/files/installer.ipxe || goto failed
exit
"""
'''


def test_multi_line_templates_round_trip_exactly_and_stay_multi_line(inv: Inventory) -> None:
    path = write(inv, "profiles/installer.toml", IPXE_PROFILE)
    profile = inv.profile("installer")
    assert profile is not None and profile.template is not None and '\\ "now"' in profile.template
    inv.put_profile(replace(profile, description="the Debian installer"), **WHO)
    removed, added = changed_lines(IPXE_PROFILE, path.read_text())
    assert (removed, added) == (
        ['description = "the installer"  # shown in `bramble profile list`'],
        ['description = "the Debian installer"  # shown in `bramble profile list`'],
    )
    new_template = profile.template.replace("exit", "sanboot --no-describe --drive 0x80\n'''\"\"\"\\")
    inv.put_profile(replace(profile, template=new_template), **WHO)
    text = path.read_text()
    assert 'template = """' in text and "# Jinja2: see docs/netboot.md" in text
    reread = inv.profile("installer")
    assert reread is not None and reread.template == new_template
    assert same_toml_value(tomllib.loads(text), profile_to_toml(reread))


@pytest.mark.parametrize(
    "corrupt",
    [b'mac = "52:54:00:12:34:56"\nprofile = "deb\n', b"\xff\xfe not utf-8", b"[[machines]\n", b"mac = 1\nmac = 2\n"],
)
def test_a_corrupt_file_is_replaced_cleanly(inv: Inventory, corrupt: bytes) -> None:
    path = inv.root / "machines/web1.toml"
    path.parent.mkdir(parents=True)
    path.write_bytes(corrupt)
    assert inv.machine("web1") is None and inv.problems()
    inv.put_profile(DEB, **WHO)
    inv.put_machine(web1(), **WHO)
    stored = inv.machine("web1")
    assert stored is not None and inv.problems() == []
    assert path.read_text() == tomli_w.dumps(machine_to_toml(stored))  # written afresh, as before tomlkit


def test_a_valid_toml_file_that_is_not_a_valid_machine_is_edited_into_one(inv: Inventory) -> None:
    path = write(inv, "machines/web1.toml", '# keep me\nmac = "52:54:00:12:34:56"\ncolour = "red"\n[extra]\nx = 1\n')
    assert inv.machine("web1") is None
    inv.put_machine(web1(profile=None), **WHO)
    text = path.read_text()
    assert text.startswith('# keep me\nmac = "52:54:00:12:34:56"\n') and "colour" not in text and "extra" not in text
    stored = inv.machine("web1")
    assert stored is not None and reads_as_tomli_w_would_write(text, stored)


def test_datetimes_compare_as_utc_and_types_strictly() -> None:
    utc = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert same_toml_value(utc, datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))))
    assert same_toml_value(utc, datetime(2024, 5, 1, 12, 0))  # no offset: read as UTC, like the records do
    assert not same_toml_value(utc, datetime(2024, 5, 1, 12, 0, 1, tzinfo=UTC))
    assert not same_toml_value(True, 1) and not same_toml_value(1, 1.0) and not same_toml_value(["a"], "a")
    assert render_toml({"created": utc}, "created = 2024-05-01T14:00:00+02:00 # local\n") == (
        "created = 2024-05-01T14:00:00+02:00 # local\n"
    )
    assert render_toml({"discovered": True}, "discovered = 1\n") == "discovered = true\n"


_NAME = st.from_regex(r"[a-z]([a-z0-9-]{0,7}[a-z0-9])?", fullmatch=True)
_MOMENT = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
_AWKWARD_TEXT = st.text(alphabet=st.sampled_from(list("a \n\"'\\\t\r#=é\x00\x7f")), max_size=30) | st.text(max_size=30)
_MACHINES = st.builds(
    Machine,
    name=st.just("web1"),
    mac=st.binary(min_size=6, max_size=6).map(lambda raw: raw.hex(":")),
    ip=st.none() | st.ip_addresses(v=4).map(str),
    hostname=st.none() | _NAME,
    arch=st.sampled_from(ARCHES),
    profile=st.none() | _NAME,
    notes=_AWKWARD_TEXT,
    groups=st.lists(_NAME, max_size=3).map(tuple),
    wake_at=st.lists(st.sampled_from(["mon-fri 07:30", "sun 10:00", "daily 06:45"]), max_size=2).map(tuple),
    interface=st.none() | st.sampled_from(["eth0", "enp1s0"]),
    discovered=st.booleans(),
    created=st.none() | _MOMENT,
    updated=st.none() | _MOMENT,
)


def _styled(data: dict[str, object], style: str) -> str:
    """A file holding ``data`` as a person might have written it."""
    if style == "fresh":
        return tomli_w.dumps(data)
    if style == "multi-line strings":
        return tomli_w.dumps(data, multiline_strings=True)
    blocks = [(key, tomli_w.dumps({key: value}).rstrip("\n")) for key, value in data.items()]
    body = "".join(f"# about {key}\n{block}  # trailing\n\n" for key, block in reversed(blocks))
    return "# header\n\n" + body.rstrip("\n")  # and no newline at the end


@settings(max_examples=200, deadline=None)
@given(a=_MACHINES, b=_MACHINES, style=st.sampled_from(["fresh", "multi-line strings", "annotated"]))
def test_writing_b_over_any_file_of_a_reads_back_as_b(a: Machine, b: Machine, style: str) -> None:
    a_data, b_data = machine_to_toml(a), machine_to_toml(b)
    a_text = _styled(a_data, style)
    held = tomllib.loads(a_text)  # what the file holds (tomli_w's multi-line strings turn CR LF into LF)
    assert render_toml(held, a_text) == a_text  # same content: byte-identical
    b_text = render_toml(b_data, a_text)
    loaded = tomllib.loads(b_text)
    assert same_toml_value(loaded, tomllib.loads(tomli_w.dumps(b_data)))
    assert same_toml_value(loaded, b_data)
    assert machine_from_toml("web1", loaded) == machine_from_toml("web1", b_data)  # b as stored (whole seconds)
    if style == "annotated":
        assert b_text.startswith("# header\n")
        assert all(f"# about {key}\n" in b_text for key in a_data)  # comment lines are never dropped
