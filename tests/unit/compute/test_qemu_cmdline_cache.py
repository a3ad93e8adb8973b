"""The -blockdev of an RBD disk behind a write-through local read cache."""

from __future__ import annotations

from typing import Any

import pytest

from bramble.compute.driver import DiskAttachment
from bramble.compute.qemu.cmdline import disk_blockdev

RBD = "rbd:vms/disk-vol-1:id=bramble:conf=/etc/ceph/ceph.conf"


def test_a_cached_rbd_disk_is_a_quorum_that_reads_locally_and_writes_to_both() -> None:
    node: Any = disk_blockdev(DiskAttachment(RBD, "raw", node_name="vol-1", cache_path="/c/v.qcow2"), "vol-1")
    assert node["driver"] == "quorum" and node["node-name"] == "vol-1"
    assert node["read-pattern"] == "fifo" and node["vote-threshold"] == 2  # a write completes on both or fails
    local, remote = node["children"]
    assert local["driver"] == "copy-on-read"
    qcow2 = local["file"]
    assert qcow2["file"] == {"driver": "file", "filename": "/c/v.qcow2"}
    assert qcow2["backing"]["read-only"] is True and qcow2["backing"]["file"]["read-only"] is True
    assert qcow2["backing"]["file"]["image"] == "disk-vol-1"
    assert remote["file"]["image"] == "disk-vol-1" and remote["file"]["read-only"] is False


@pytest.mark.parametrize(
    "disk",
    [
        DiskAttachment("/var/lib/bramble/disks/a.qcow2", "qcow2", cache_path="/c/v.qcow2"),
        DiskAttachment(RBD, "raw", readonly=True, cache_path="/c/v.qcow2"),
        DiskAttachment(RBD, "raw", media="cdrom", cache_path="/c/v.qcow2"),
    ],
)
def test_only_a_writable_raw_rbd_disk_can_have_one(disk: DiskAttachment) -> None:
    with pytest.raises(ValueError, match="write-through cache"):
        disk_blockdev(disk, "d")


def test_without_a_cache_path_nothing_changes() -> None:
    assert disk_blockdev(DiskAttachment(RBD, "raw"), "disk0")["driver"] == "raw"
