"""The cache tier's control plane on fake drivers: choices, refusals, the record, `vm show`.

The node side (overlays, owners, pivots) is proven on real QEMU and Ceph in
tests/integration/compute/test_cache_tier.py.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bramble.core.pools import default_pool_spec
from bramble.daemon import Services, build_services
from bramble.storage.driver import StoredDisk, StoredImage
from tests.conftest import fake_settings
from tests.unit.api.helpers import make_image, make_vm, wait_operation

pytestmark = pytest.mark.anyio


async def test_asking_for_the_cache_on_a_non_rbd_pool_is_a_422_and_makes_nothing(api: httpx.AsyncClient) -> None:
    await make_image(api)
    body = {"name": "c1", "image": "tiny", "cpus": 1, "memory_mib": 128, "disk_gib": 1, "cache": True}
    response = await api.post("/v1/vms", json=body)
    assert response.status_code == 422
    assert "fronts RBD images" in response.json()["error"]["message"]
    assert (await api.get("/v1/vms/c1")).status_code == 404


async def test_a_vm_without_the_cache_shows_it_off_and_drop_is_refused(api: httpx.AsyncClient) -> None:
    await make_image(api)
    vm = await make_vm(api, "plain", cache=False)
    assert vm["cache"] == "off" and vm["cache_stats"] is None
    refused = await api.post("/v1/vms/plain/cache/drop")
    assert refused.status_code == 409
    assert "no cached disk" in refused.json()["error"]["message"]
    assert (await api.post("/v1/vms/nope/cache/drop")).status_code == 404
    bad = await api.post("/v1/vms", json={"name": "x", "image": "tiny", "cpus": 1, "memory_mib": 128, "cache": "yes"})
    assert bad.status_code == 422


async def test_the_configured_default_applies_only_where_it_can(tmp_path: Path) -> None:
    """`[storage] cache = "on"` with a default pool that is not RBD: VMs are made, uncached."""
    services = await build_services(
        fake_settings(tmp_path / "state", storage={"driver": "fake", "cache": "on", "precache_gib": 1})
    )
    try:
        assert services.settings.cache_path == tmp_path / "state" / "cache"
        from bramble.api.app import create_app

        transport = httpx.ASGITransport(app=create_app(services.cloud))
        headers = {"Authorization": f"Bearer {services.admin_token}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as api:
            await make_image(api)
            vm = await make_vm(api, "d1")
            assert vm["cache"] == "off"
    finally:
        await services.close()


class _FakeCachedAgent:
    """What the agent gives a cached VM: an overlay path, figures, and a drop into a clone."""

    def __init__(self) -> None:
        self.prepared: list[tuple[str, int]] = []
        self.dropped: list[str] = []

    async def prepare_cached_disk(
        self, disk_id: str, image: StoredImage, size_bytes: int, pool: object, precache_bytes: int
    ) -> StoredDisk:
        self.prepared.append((disk_id, precache_bytes))
        return StoredDisk(disk_id, f"/cache/overlays/{disk_id}.qcow2", "qcow2", size_bytes)

    async def drop_cache(self, vm_id: str, image: StoredImage, pool: object) -> StoredDisk:
        self.dropped.append(vm_id)
        return StoredDisk(vm_id, f"rbd:vms/disk-{vm_id}:id=bramble:conf=/c", "raw", 1)

    async def cache_stats(self, spec: object) -> dict[str, object]:
        return {
            "image_id": "i",
            "cache_bytes": 3 * 1024**2,
            "overlay_bytes": 1024**2,
            "image_cache_bytes": 2 * 1024**2,
            "ceph_read_bytes": 1024**2,
            "served_bytes": 4 * 1024**2,
            "hit_ratio": 0.75,
        }


async def test_a_cached_vm_is_recorded_shown_and_dropped(
    api: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the pool check passed (as for an RBD pool), the record, `vm show` and the drop follow the node."""
    agent = services.agent
    assert agent is not None
    node = _FakeCachedAgent()
    for name in ("prepare_cached_disk", "drop_cache", "cache_stats"):
        monkeypatch.setattr(agent, name, getattr(node, name))
    monkeypatch.setattr(services.cloud.vms, "_cache_choice", lambda req, image, pool: True)
    await make_image(api)
    vm = await make_vm(api, "cached")
    assert vm["cache"] == "on"
    assert node.prepared == [(vm["id"], 0)]
    assert vm["cache_stats"]["hit_ratio"] == 0.75 and vm["cache_stats"]["cache_bytes"] == 3 * 1024**2

    response = await api.post("/v1/vms/cached/cache/drop")
    assert response.status_code == 202
    op = await wait_operation(api, response.json()["operation"]["id"])
    assert op["status"] == "succeeded", op
    after = (await api.get("/v1/vms/cached")).json()
    assert after["cache"] == "off" and after["cache_stats"] is None
    assert node.dropped == [vm["id"]]
    events = (await api.get("/v1/events", params={"target": "vm/cached"})).json()
    drop = [e for e in events if e["action"] == "vm.cache_drop"]
    assert drop and drop[-1]["outcome"] == "ok" and drop[-1]["after"]["cache"] == "off"


def test_the_default_pool_takes_its_cache_settings_from_storage(tmp_path: Path) -> None:
    rbd = fake_settings(tmp_path, storage={"driver": "rbd", "cache": "on", "precache_gib": 2})
    spec = default_pool_spec(rbd)
    assert (spec.cache, spec.precache_gib) == ("on", 2)
    local = default_pool_spec(fake_settings(tmp_path, storage={"driver": "local", "cache": "on"}))
    assert local.cache == "off"  # the cache tier fronts RBD only


async def test_pool_cache_settings_apply_to_rbd_pools_only(api: httpx.AsyncClient, tmp_path: Path) -> None:
    body = {"name": "fast", "driver": "local", "path": str(tmp_path / "fast"), "cache": "on"}
    refused = await api.post("/v1/pools", json=body)
    assert refused.status_code == 422 and "rbd pools only" in refused.json()["error"]["message"]
    bad = await api.post("/v1/pools", json={**body, "cache": "maybe"})
    assert bad.status_code == 422 and "on or off" in bad.json()["error"]["message"]
    assert (await api.get("/v1/pools/fast")).status_code == 404
    default = (await api.get("/v1/pools/default")).json()
    assert default["cache"] == "off" and default["precache_gib"] == 0
