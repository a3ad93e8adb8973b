"""Storage pools through brambled and the bramble CLI, as a user types it: an RBD pool (a throwaway
Ceph cluster) beside the local default pool; a real TCG guest boots from a VM disk cloned in it,
`pool show` counts it, the pool cannot go while in use, `image export` gives the image back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.ceph_cluster import CephCluster
from tests.e2e.conftest import Daemon, wait_marker
from tests.integration.storage.test_pools_rbd import ceph_pool, rbd_images

pytestmark = pytest.mark.qemu
__all__ = ["ceph_pool"]  # the fixture, imported so pytest finds it here
BRAMBLE = [str(Path(sys.executable).parent / "bramble")]


def bramble(daemon: Daemon, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*BRAMBLE, *args], env=daemon.cli_env(), capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
    if ok:
        assert result.returncode == 0, f"bramble {' '.join(args)}: {result.stderr}"
    return result


def test_a_guest_boots_from_a_disk_in_an_rbd_pool(
    daemon: Daemon, guests: dict[str, Path], ceph: CephCluster, ceph_pool: dict[str, Any], tmp_path: Path
) -> None:
    guest = guests["x86_64"]
    bramble(
        daemon, "pool", "create", "ceph", "--driver", "rbd", "--ceph-conf", str(ceph.conf),
        "--ceph-pool", ceph_pool["name"], "--user", ceph_pool["user"], "--keyring", str(ceph_pool["keyring"]),
        "--timeout", "10",
    )  # fmt: skip
    empty = json.loads(bramble(daemon, "pool", "show", "ceph", "--json").stdout)["usage"]["used_bytes"]
    bramble(
        daemon, "image", "import", str(guest / "disk.qcow2"), "-n", "deb", "--kernel", str(guest / "kernel"),
        "--initrd", str(guest / "initrd.gz"), "--cmdline", "quiet panic=-1", "--pool", "ceph",
    )  # fmt: skip
    vm = json.loads(bramble(daemon, "vm", "create", "a", "-i", "deb", "--cpus", "1", "--memory", "256",
                            "--disk-size", "1", "--json").stdout)  # fmt: skip
    assert vm["pool"] == "ceph" and f"disk-{vm['id']}" in rbd_images(ceph_pool)
    with daemon.client() as api:
        wait_marker(api, "a", deadline=300)  # the guest runs from the RBD clone QEMU opened itself

    shown = json.loads(bramble(daemon, "pool", "show", "ceph", "--json").stdout)
    assert (shown["images"], shown["vms"]) == (["deb"], ["a"])
    # the test guest runs from its initrd and its disk holds no data: nothing new to count here
    # (usage growth is tested with real data in tests/integration/storage/test_pools_rbd.py)
    assert shown["usage"]["used_bytes"] == empty and "RBD images" in shown["usage"]["source"]
    refused = bramble(daemon, "pool", "delete", "ceph", ok=False)
    assert refused.returncode == 2 and "still holds images deb; VM disks a" in refused.stderr

    exported = tmp_path / "deb.raw"
    bramble(daemon, "image", "export", "deb", str(exported))
    expected = tmp_path / "expected.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(guest / "disk.qcow2"), str(expected)], check=True
    )
    assert exported.read_bytes() == expected.read_bytes()

    bramble(daemon, "vm", "delete", "a")
    bramble(daemon, "image", "delete", "deb")
    bramble(daemon, "pool", "delete", "ceph")
    assert not [n for n in rbd_images(ceph_pool) if n.startswith(("img-", "disk-"))]
    assert json.loads(bramble(daemon, "pool", "list", "--json").stdout)[0]["name"] == "default"
