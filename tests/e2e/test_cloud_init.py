"""Keypairs, the cloud-init seed and the metadata service with real guests: brambled inside a
throwaway namespace (the harness of test_vm_network), two QEMU (TCG) busybox guests on one network.

The first guest, made with a key and user-data, mounts its ``cidata`` CD-ROM and prints the
user-data marker, then fetches its instance id and public key from 169.254.169.254 with busybox
wget (through the network's DNAT to the agent). The second, with neither, gets its own instance id
and no key: the service never hands it the first guest's data.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

from tests.e2e.test_vm_network import NsDaemon, console_of, ns_daemon
from tests.qemu_helpers import wait_for

__all__ = ["ns_daemon"]  # the fixture, imported so pytest finds it here

SIZE = ("--cpus", "1", "-m", "256", "--disk-size", "1")


def test_guest_reads_its_seed_and_only_its_own_metadata(
    ns_daemon: NsDaemon, guests: dict[str, Path], tmp_path: Path
) -> None:
    d = ns_daemon
    guest = guests["x86_64"]
    cmdline = "quiet panic=-1 bramble.net=dhcp bramble.cloudinit=on"
    d.ok("image", "import", str(guest / "disk.qcow2"), "-n", "ciguest", "--kernel", str(guest / "kernel"),
         "--initrd", str(guest / "initrd.gz"), "--cmdline", cmdline)  # fmt: skip
    d.ok("net", "create", "lan", "--cidr", "10.78.0.0/24")
    key = json.loads(d.ok("keypair", "create", "k1", "--json"))
    marker = f"BRAMBLE-MARKER-{secrets.token_hex(6)}"
    user_data = tmp_path / "user-data"
    user_data.write_text(f"#!/bin/sh\necho {marker}\n")

    g1 = json.loads(d.ok("vm", "create", "g1", "-i", "ciguest", *SIZE, "--net", "lan", "--key", "k1",
                         "--user-data", str(user_data), "--json"))  # fmt: skip
    # g2's only group allows nothing: the metadata service (like DHCP) must be reachable all the same
    d.ok("secgroup", "create", "closed")
    g2 = json.loads(d.ok("vm", "create", "g2", "-i", "ciguest", *SIZE, "--net", "lan", "-g", "closed", "--json"))
    assert g1["state"] == g2["state"] == "running", (g1, g2)
    assert (d.state_dir / "seeds" / f"{g1['id']}.iso").is_file()
    assert not (d.state_dir / "seeds" / f"{g2['id']}.iso").exists()

    def fetched(vm_id: str) -> str | None:
        text = console_of(d, vm_id)
        return text if "BRAMBLE-GUEST-META openssh-key=" in text or "BRAMBLE-GUEST-NET failed" in text else None

    first = wait_for(lambda: fetched(g1["id"]), 300, "the first guest's metadata on its console", interval=0.5)
    second = wait_for(lambda: fetched(g2["id"]), 300, "the second guest's metadata on its console", interval=0.5)

    assert "BRAMBLE-GUEST-CIDATA ok" in first, first[-3000:]
    assert f"BRAMBLE-GUEST-USERDATA echo {marker}" in first, first[-3000:]
    assert f"BRAMBLE-GUEST-META instance-id={g1['id']}" in first, first[-3000:]
    assert f"BRAMBLE-GUEST-META openssh-key={key['public_key']}" in first, first[-3000:]

    assert "BRAMBLE-GUEST-CIDATA missing" in second, second[-3000:]
    assert "BRAMBLE-GUEST-PING failed" in second, second[-3000:]  # the closed group does hold
    assert f"BRAMBLE-GUEST-META instance-id={g2['id']}" in second, second[-3000:]
    assert "BRAMBLE-GUEST-META openssh-key=none" in second, second[-3000:]
    assert g1["id"] not in second and key["public_key"].split()[1] not in second

    # every request is an event, named after the VM that asked
    events = json.loads(d.ok("event", "list", "--target", "vm/g1", "--json"))
    asked = [e for e in events if e["action"] == "metadata.request"]
    assert any("/latest/meta-data/public-keys/0/openssh-key" in json.dumps(e) for e in asked), events

    # after kill -9 and a restart the listener has a new port; the DNAT follows it (a reboot fetches again)
    d.kill9()
    d.start()
    d.ok("vm", "reboot", "g1")
    wanted = f"BRAMBLE-GUEST-META instance-id={g1['id']}"
    wait_for(lambda: console_of(d, g1["id"]).count(wanted) >= 2, 300, "the metadata after a restart", interval=0.5)

    d.ok("vm", "delete", "g1", "--yes")
    d.ok("vm", "delete", "g2", "--yes")
    assert not (d.state_dir / "seeds" / f"{g1['id']}.iso").exists()
    assert re.search(r"keypair\s+k1|k1", d.ok("keypair", "list"))
    d.ok("keypair", "delete", "k1")
    d.ok("secgroup", "delete", "closed")
    d.ok("net", "delete", "lan")
