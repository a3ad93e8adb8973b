"""The inventory in a real git repository, on a real filesystem (and a real full one).

Git runs with an empty HOME and no system config, so the identity Bramble passes with
``-c user.name/-c user.email`` is the only one there is.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from tests.conftest import fake_settings
from tests.qemu_helpers import wait_for

from bramble.api.app import create_app
from bramble.boot.inventory import Inventory
from bramble.boot.records import Group, InventoryWriteFailed, Machine, Profile
from bramble.daemon import build_services

RACK1 = Group(name="rack1", wake_at=("mon-fri 07:30",))
ALICE = {"actor": "token:alice", "reason": "rack 3 goes live", "request_id": "req-42"}


@pytest.fixture(autouse=True)
def bare_git_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(name, raising=False)


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, timeout=30)
    return done.stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "inventory"
    root.mkdir()
    git(root, "init", "-q")
    return root


def last_commit(repo: Path) -> dict[str, str]:
    sha = git(repo, "rev-parse", "HEAD").strip()
    return {
        "sha": sha,
        "author": git(repo, "log", "-1", "--format=%an <%ae>"),
        "committer": git(repo, "log", "-1", "--format=%cn <%ce>"),
        "message": git(repo, "log", "-1", "--format=%B").strip(),
        "files": git(repo, "show", "--name-status", "--format=", "HEAD").strip(),
    }


def test_each_change_is_one_commit_of_exactly_that_file(repo: Path) -> None:
    (repo / "README").write_text("staged by someone else\n")
    git(repo, "add", "README")
    (repo / "scratch.txt").write_text("untracked\n")
    inv = Inventory(repo)

    result = inv.put_profile(Profile(name="deb", kind="kernel", kernel="debian/vmlinuz"), **ALICE)
    head = last_commit(repo)
    assert result.commit == head["sha"] and result.git_error is None
    assert head["author"].strip() == "token:alice <token-alice@bramble.invalid>"
    assert head["committer"].strip() == head["author"].strip()
    assert head["message"].splitlines()[0] == "profile deb: rack 3 goes live"
    assert "Changed by token:alice through Bramble." in head["message"] and "Request-Id: req-42" in head["message"]
    assert head["files"] == "A\tprofiles/deb.toml"

    inv.put_machine(Machine(name="web1", mac="52:54:00:12:34:56", profile="deb"), **ALICE)
    assert last_commit(repo)["files"] == "A\tmachines/web1.toml"
    machine = inv.machine("web1")
    assert machine is not None
    inv.put_machine(machine.with_changes(notes="moved to rack 4"), actor="token:bob", reason="moved")
    head = last_commit(repo)
    assert head["files"] == "M\tmachines/web1.toml" and head["author"].startswith("token:bob <token-bob@")
    removed = inv.remove_machine("web1", actor="token:bob", reason="decommissioned")
    assert last_commit(repo)["files"] == "D\tmachines/web1.toml" and removed.commit == last_commit(repo)["sha"]

    assert git(repo, "rev-list", "--count", "HEAD").strip() == "4"
    # Someone else's staged and untracked files were left exactly as they were.
    status = git(repo, "status", "--porcelain")
    assert "A  README" in status and "?? scratch.txt" in status


def test_writing_the_same_content_makes_no_empty_commit(repo: Path) -> None:
    inv = Inventory(repo)
    inv.put_group(RACK1, **ALICE)
    before = git(repo, "rev-parse", "HEAD")
    again = inv.put_group(RACK1, **ALICE)
    assert again.commit is None and again.git_error is None
    assert git(repo, "rev-parse", "HEAD") == before


HAND_WRITTEN = """\
# web1: front web server, rack 3. Ask ops before changing the profile.

mac = "52:54:00:12:34:56"  # on-board NIC
arch = "x86_64"
profile = "local"

# Same address as in the old DHCP server.
ip = "10.0.0.5"
notes = '''
Disk replaced 2024-03.
'''
created = 2024-05-01T12:00:00Z
updated = 2024-05-01T12:00:00Z
"""


def test_a_change_to_a_hand_written_file_commits_a_minimal_diff(repo: Path) -> None:
    path = repo / "machines/web1.toml"
    path.parent.mkdir()
    path.write_text(HAND_WRITTEN)
    git(repo, "add", "machines/web1.toml")
    git(repo, "-c", "user.name=ops", "-c", "user.email=ops@example.invalid", "commit", "-q", "-m", "by hand")
    inv = Inventory(repo)
    machine = inv.machine("web1")
    assert machine is not None

    result = inv.put_machine(machine.with_changes(profile="discovered"), **ALICE)
    assert result.commit == last_commit(repo)["sha"]
    diff = git(repo, "show", "--format=", "--unified=0", "HEAD")
    lines = [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    removed = [line[1:] for line in lines if line[0] == "-"]
    added = [line[1:] for line in lines if line[0] == "+"]
    assert removed == ['profile = "local"', "updated = 2024-05-01T12:00:00Z"]
    assert len(added) == 2 and added[0] == 'profile = "discovered"' and added[1].startswith("updated = 20")
    text = path.read_text()
    assert "# web1: front web server" in text and "# on-board NIC" in text and "notes = '''\n" in text

    head = last_commit(repo)["sha"]
    unchanged = inv.machine("web1")
    assert unchanged is not None
    again = inv.put_machine(unchanged, **ALICE)
    assert again.commit is None and again.git_error is None and last_commit(repo)["sha"] == head
    assert path.read_text() == text


def test_a_failing_commit_is_reported_and_the_file_stands(repo: Path) -> None:
    hook = repo / ".git/hooks/pre-commit"
    hook.write_text("#!/bin/sh\necho 'policy: no commits today' >&2\nexit 1\n")
    hook.chmod(0o755)
    inv = Inventory(repo)
    result = inv.put_machine(Machine(name="web1", mac="52:54:00:12:34:56"), **ALICE)
    assert result.commit is None
    assert result.git_error is not None and "git commit failed" in result.git_error
    assert "policy: no commits today" in result.git_error
    assert inv.machine("web1") is not None and (repo / "machines/web1.toml").exists()


def test_hand_edits_and_corrupt_files_are_picked_up_without_restart(repo: Path) -> None:
    inv = Inventory(repo, reload_seconds=0.05)
    inv.put_machine(Machine(name="web1", mac="52:54:00:12:34:56"), **ALICE)
    path = repo / "machines/web1.toml"
    path.write_text(path.read_text().replace('arch = "x86_64"', 'arch = "aarch64"\nnotes = "edited in vim"'))
    wait_for(lambda: (m := inv.machine_by_mac("52:54:00:12:34:56")) and m.arch == "aarch64", 10, "the hand edit")

    broken = repo / "machines/db1.toml"
    broken.write_text('mac = "52:54:00:00:00:01"\n\nprofile = "local\n')
    problem = wait_for(lambda: next((p for p in inv.problems() if p.path == str(broken)), None), 10, "the problem")
    assert problem.line == 3 and "not valid TOML" in problem.message
    assert inv.machine("db1") is None and inv.machine("web1") is not None

    broken.write_text('mac = "52:54:00:00:00:01"\n\nprofile = "local"\n')
    wait_for(lambda: inv.machine("db1") is not None, 10, "the fixed file")
    assert inv.problems() == []


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a write that does not fit fails halfway with a real ENOSPC."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_a_write_that_fails_halfway_leaves_no_temp_file_and_the_old_content(tiny_filesystem: Path) -> None:
    inv = Inventory(tiny_filesystem / "inventory")
    inv.put_machine(Machine(name="web1", mac="52:54:00:12:34:56", notes="small"), **ALICE)
    old = (tiny_filesystem / "inventory/machines/web1.toml").read_bytes()
    with pytest.raises(InventoryWriteFailed, match="No space left on device"):
        inv.put_machine(Machine(name="web1", mac="52:54:00:12:34:56", notes="x" * 400_000), **ALICE)
    assert os.listdir(tiny_filesystem / "inventory/machines") == ["web1.toml"]
    assert (tiny_filesystem / "inventory/machines/web1.toml").read_bytes() == old
    machine = inv.machine("web1")
    assert machine is not None and machine.notes == "small"


@pytest.fixture
async def git_api(repo: Path, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Path]]:
    services = await build_services(fake_settings(tmp_path / "state", boot={"inventory_dir": repo}))
    try:
        transport = httpx.ASGITransport(app=create_app(services.cloud))
        headers = {"Authorization": f"Bearer {services.admin_token}", "X-Request-Id": "req-from-api"}
        async with httpx.AsyncClient(transport=transport, base_url="http://bramble.test", headers=headers) as client:
            yield client, repo
    finally:
        await services.close()


@pytest.mark.anyio
async def test_api_changes_are_commits_by_the_token_owner(git_api: tuple[httpx.AsyncClient, Path]) -> None:
    api, repo = git_api
    created = await api.post("/v1/machines", json={"name": "web1", "mac": "52:54:00:12:34:56", "reason": "new rack"})
    assert created.status_code == 201, created.text
    head = last_commit(repo)
    assert created.json()["commit"] == head["sha"]
    assert head["author"].strip() == "token:admin <token-admin@bramble.invalid>"
    assert head["message"].splitlines()[0] == "machine web1: add (52:54:00:12:34:56): new rack"
    assert "Request-Id: req-from-api" in head["message"]
    patched = await api.patch("/v1/machines/web1", json={"profile": "local"})
    assert last_commit(repo)["message"].splitlines()[0] == "machine web1: boot profile local"
    assert patched.json()["commit"] == last_commit(repo)["sha"]
    events = (await api.get("/v1/events", params={"target": "machine/web1"})).json()
    assert events[-1]["after"]["commit"] == last_commit(repo)["sha"]

    hook = repo / ".git/hooks/pre-commit"
    hook.write_text("#!/bin/sh\nexit 1\n")
    hook.chmod(0o755)
    failed_git = await api.patch("/v1/machines/web1", json={"notes": "x"})
    assert failed_git.status_code == 200
    assert "git commit failed" in failed_git.json()["git_error"] and failed_git.json()["notes"] == "x"
