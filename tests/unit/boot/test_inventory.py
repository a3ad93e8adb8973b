"""The inventory files: round trips, hand edits, corrupt files, duplicates, discovery, atomic writes."""

from __future__ import annotations

import os
import tomllib
from datetime import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bramble.boot import inventory as inventory_module
from bramble.boot.inventory import Inventory
from bramble.boot.records import (
    InventoryConflict,
    InventoryNotFound,
    Machine,
    Profile,
    RecordError,
    normalize_mac,
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
