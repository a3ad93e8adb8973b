"""The bramble CLI against a real daemon and a real guest, as a user types it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import MARKER, Daemon, wait_for

pytestmark = pytest.mark.qemu

BRAMBLE = [str(Path(sys.executable).parent / "bramble")]  # the installed console script, as users run it


def run(daemon: Daemon, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*BRAMBLE, *args], env=daemon.cli_env(), capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
    if ok:
        assert result.returncode == 0, f"bramble {' '.join(args)}: {result.stderr}"
    return result


def refused(daemon: Daemon, *args: str, words: str) -> None:
    result = run(daemon, *args, ok=False)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_user_session(daemon: Daemon, guests: dict[str, Path]) -> None:
    guest = guests["x86_64"]
    run(
        daemon,
        "image",
        "import",
        str(guest / "disk.qcow2"),
        "--name",
        "tiny",
        "--arch",
        "amd64",
        "--kernel",
        str(guest / "kernel"),
        "--initrd",
        str(guest / "initrd.gz"),
        "--cmdline",
        "quiet panic=-1",
    )
    image = json.loads(run(daemon, "image", "show", "tiny", "--json").stdout)
    assert image["status"] == "active" and image["arch"] == "x86_64" and image["has_kernel"]

    run(daemon, "flavor", "create", "small", "--cpus", "1", "--memory", "256M", "--disk", "1G")
    created = json.loads(run(daemon, "vm", "create", "v1", "--image", "tiny", "--flavor", "small", "--json").stdout)
    assert created["state"] == "running" and created["memory_mib"] == 256

    wait_for(lambda: MARKER in run(daemon, "vm", "console", "v1").stdout, 120, "the guest marker via the CLI")
    listed = json.loads(run(daemon, "vm", "list", "--json").stdout)
    assert [vm["name"] for vm in listed] == ["v1"]
    human = run(daemon, "vm", "show", "v1").stdout
    shown = json.loads(run(daemon, "vm", "show", "v1", "--json").stdout)
    assert "running" in human and shown["vnc"].startswith("127.0.0.1:") and shown["vnc"] in human

    nodes = json.loads(run(daemon, "node", "list", "--json").stdout)
    assert nodes[0]["name"] == "e2e-node" and nodes[0]["accel"] == "tcg"

    refused(daemon, "vm", "create", "v2", "--image", "nope", "--flavor", "small", words="image 'nope' not found")
    refused(daemon, "vm", "create", "v1", "--image", "tiny", "--flavor", "small", words="already exists")
    refused(
        daemon,
        "vm",
        "create",
        "v3",
        "--image",
        "tiny",
        "--cpus",
        "1",
        "--memory",
        "0",
        "--disk-size",
        "1",
        words="memory",
    )
    refused(daemon, "vm", "create", "v4", "--image", "tiny", "--flavor", "small", "--arch", "vax", words="vax")
    refused(daemon, "image", "delete", "tiny", words="v1")
    refused(daemon, "vm", "pause", "ghost", words="not found")

    stopped = json.loads(run(daemon, "vm", "stop", "v1", "--json").stdout)
    assert stopped["state"] == "stopped"
    events = json.loads(run(daemon, "event", "list", "--target", "vm/v1", "--json").stdout)
    actions = [e["action"] for e in events]
    assert "vm.create" in actions and "vm.stop" in actions
    assert any(e["outcome"] == "rejected" for e in events)

    run(daemon, "vm", "delete", "v1", "--yes")
    assert json.loads(run(daemon, "vm", "list", "--json").stdout) == []
    run(daemon, "image", "delete", "tiny")
