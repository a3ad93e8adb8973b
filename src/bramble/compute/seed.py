"""The NoCloud seed: a small ISO labelled ``cidata`` that cloud-init (and our test guest) read at boot.

Pure building with pycdlib: no ``genisoimage`` process, so the agent can make one per VM start in
milliseconds. The image carries Joliet and Rock Ridge so the lower-case names cloud-init looks for
(``meta-data``, ``user-data``, ``network-config``) survive on every reader. ``meta-data`` and
``network-config`` are written as JSON, which is valid YAML, so no YAML library is needed.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import pycdlib

from bramble.compute.driver import CloudInit, NicAttachment

VOLUME_LABEL = "cidata"

# ISO 9660 level-1 names (8.3, upper case) for the plain directory; readers use the Rock Ridge/Joliet names.
_ISO_NAMES = {"meta-data": "/METADATA.;1", "user-data": "/USERDATA.;1", "network-config": "/NETCFG.;1"}


def meta_data(data: CloudInit) -> dict[str, object]:
    """The NoCloud meta-data document (same facts as the metadata service answers)."""
    document: dict[str, object] = {"instance-id": data.instance_id, "local-hostname": data.hostname}
    if data.public_keys:
        document["public-keys"] = list(data.public_keys)
    return document


def network_config(nics: Sequence[NicAttachment]) -> dict[str, object] | None:
    """Netplan v2: every NIC by MAC on DHCP (the network's DHCP server holds each NIC's reservation)."""
    if not nics:
        return None
    ethernets = {
        f"eth{i}": {"match": {"macaddress": nic.mac}, "set-name": f"eth{i}", "dhcp4": True}
        for i, nic in enumerate(nics)
    }
    return {"version": 2, "ethernets": ethernets}


def seed_files(data: CloudInit, nics: Sequence[NicAttachment] = ()) -> dict[str, bytes]:
    files = {
        "meta-data": json.dumps(meta_data(data), indent=2).encode() + b"\n",
        # cloud-init needs the file even when empty; an empty user-data does nothing
        "user-data": (data.user_data or "").encode(),
    }
    network = network_config(nics)
    if network is not None:
        files["network-config"] = json.dumps(network, indent=2).encode() + b"\n"
    return files


def build_seed_iso(path: Path, data: CloudInit, nics: Sequence[NicAttachment] = ()) -> Path:
    """Write the seed ISO to ``path`` atomically (a reader never sees half an image)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, joliet=3, rock_ridge="1.09", vol_ident=VOLUME_LABEL, sys_ident="LINUX")
    for name, content in seed_files(data, nics).items():
        iso.add_fp(io.BytesIO(content), len(content), _ISO_NAMES[name], rr_name=name, joliet_path=f"/{name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with partial.open("wb") as out:
            iso.write_fp(out)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(path)
    finally:
        iso.close()
        partial.unlink(missing_ok=True)
    return path
