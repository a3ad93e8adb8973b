"""Small API helpers for tests: upload an image, wait for an operation."""

from __future__ import annotations

import anyio
import httpx

QCOW2_HEADER = b"QFI\xfb" + b"\x00" * 60


async def wait_operation(api: httpx.AsyncClient, op_id: str, deadline: float = 10.0) -> dict[str, object]:
    with anyio.fail_after(deadline):
        while True:
            op = (await api.get(f"/v1/operations/{op_id}")).json()
            if op["status"] in ("succeeded", "failed"):
                return op
            await anyio.sleep(0.01)


async def make_image(api: httpx.AsyncClient, name: str = "tiny", arch: str = "x86_64", kernel: bool = True) -> dict:
    created = await api.post("/v1/images", json={"name": name, "arch": arch, "cmdline": "quiet"})
    assert created.status_code == 201, created.text
    image_id = created.json()["id"]
    assert (await api.put(f"/v1/images/{image_id}/data/disk", content=b"\x00" * 4096)).status_code == 200
    if kernel:
        assert (await api.put(f"/v1/images/{image_id}/data/kernel", content=b"kernel")).status_code == 200
    activated = await api.post(f"/v1/images/{image_id}/activate")
    assert activated.status_code == 200, activated.text
    return activated.json()


async def make_vm(api: httpx.AsyncClient, name: str, image: str = "tiny", **extra: object) -> dict:
    body = {"name": name, "image": image, "cpus": 1, "memory_mib": 128, "disk_gib": 1, **extra}
    response = await api.post("/v1/vms", json=body)
    assert response.status_code == 202, response.text
    op = await wait_operation(api, response.json()["operation"]["id"])
    assert op["status"] == "succeeded", op
    return (await api.get(f"/v1/vms/{name}")).json()
