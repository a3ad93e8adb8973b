"""The metadata service on real loopback sockets: each caller is answered only about itself."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from bramble.agent.metadata import MetadataRequest, MetadataService, render
from bramble.compute.driver import CloudInit, NicAttachment, VmSpec

pytestmark = pytest.mark.anyio

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBfEzKZWHMy8m0yN7wdNJh3EDbAF2cuxy2JcUXhOYPgw me@laptop"


def spec(vm_id: str, name: str, address: str, network: str = "net-a", **data: object) -> VmSpec:
    nic = NicAttachment(
        nic_id=f"nic-{vm_id}", network_id=network, tap=f"t-{vm_id}", bridge="b", mac="02:b7:00:00:00:01",
        address=address, cidr="127.0.0.0/8", gateway="127.0.0.1",
    )  # fmt: skip
    cloud_init = CloudInit(instance_id=vm_id, hostname=name, **data)  # type: ignore[arg-type]
    return VmSpec(vm_id=vm_id, name=name, arch="x86_64", cpus=1, memory_mib=64, nics=(nic,), cloud_init=cloud_init)


@pytest.fixture
async def service() -> AsyncIterator[tuple[MetadataService, list[MetadataRequest]]]:
    events: list[MetadataRequest] = []

    async def record(event: MetadataRequest) -> None:
        events.append(event)

    svc = MetadataService(on_request=record)
    try:
        yield svc, events
    finally:
        await svc.close()


async def get(source: str, port: int, path: str) -> httpx.Response:
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{port}") as client:
        return await client.get(path)


async def test_each_vm_gets_only_its_own_data(service: tuple[MetadataService, list[MetadataRequest]]) -> None:
    svc, events = service
    svc.register(spec("i-a", "alpha", "127.0.0.2", public_keys=(KEY,), user_data="#!/bin/sh\necho A\n"))
    svc.register(spec("i-b", "beta", "127.0.0.3"))
    target = await svc.listen("net-a", "127.0.0.1")
    assert str(target.address) == "127.0.0.1" and target.port > 0
    assert await svc.listen("net-a", "127.0.0.1") == target  # one listener per network

    answers = {p: (await get("127.0.0.2", target.port, p)) for p in (
        "/latest/meta-data/instance-id", "/latest/meta-data/hostname", "/latest/meta-data/local-ipv4",
        "/latest/meta-data/public-keys/", "/latest/meta-data/public-keys/0/openssh-key", "/latest/user-data",
        "/latest/meta-data/",
    )}  # fmt: skip
    assert {p: r.status_code for p, r in answers.items()} == dict.fromkeys(answers, 200)
    assert answers["/latest/meta-data/instance-id"].text == "i-a"
    assert answers["/latest/meta-data/hostname"].text == "alpha"
    assert answers["/latest/meta-data/local-ipv4"].text == "127.0.0.2"
    assert answers["/latest/meta-data/public-keys/"].text == "0=me@laptop\n"
    assert answers["/latest/meta-data/public-keys/0/openssh-key"].text == KEY + "\n"
    assert answers["/latest/user-data"].text == "#!/bin/sh\necho A\n"
    assert "public-keys/" in answers["/latest/meta-data/"].text.splitlines()

    beta = await get("127.0.0.3", target.port, "/latest/meta-data/instance-id")
    assert (beta.status_code, beta.text) == (200, "i-b")
    assert (await get("127.0.0.3", target.port, "/latest/user-data")).status_code == 404  # beta has none
    assert (await get("127.0.0.3", target.port, "/latest/meta-data/public-keys/0/openssh-key")).status_code == 404
    stranger = await get("127.0.0.9", target.port, "/latest/meta-data/instance-id")
    assert stranger.status_code == 404 and "i-a" not in stranger.text

    assert events[0] == MetadataRequest("net-a", "127.0.0.2", "/latest/meta-data/instance-id", 200, "i-a", "alpha")
    assert events[-1] == MetadataRequest("net-a", "127.0.0.9", "/latest/meta-data/instance-id", 404, None, None)
    assert len(events) == len(answers) + 4


async def test_the_network_is_part_of_the_identity(service: tuple[MetadataService, list[MetadataRequest]]) -> None:
    """The same address on another network is another VM (overlapping CIDRs are allowed)."""
    svc, _ = service
    svc.register(spec("i-a", "alpha", "127.0.0.2", network="net-a"))
    svc.register(spec("i-x", "xray", "127.0.0.2", network="net-x"))
    a = await svc.listen("net-a", "127.0.0.1")
    x = await svc.listen("net-x", "127.0.0.1")
    assert a.port != x.port
    assert (await get("127.0.0.2", a.port, "/latest/meta-data/instance-id")).text == "i-a"
    assert (await get("127.0.0.2", x.port, "/latest/meta-data/instance-id")).text == "i-x"
    svc.forget("i-x")
    assert (await get("127.0.0.2", x.port, "/latest/meta-data/instance-id")).status_code == 404
    await svc.release("net-x")
    with pytest.raises(httpx.ConnectError):
        await get("127.0.0.2", x.port, "/latest/meta-data/instance-id")


async def test_bad_requests(service: tuple[MetadataService, list[MetadataRequest]]) -> None:
    svc, events = service
    svc.register(spec("i-a", "alpha", "127.0.0.2", public_keys=(KEY,)))
    port = (await svc.listen("net-a", "127.0.0.1")).port
    for path in ("/latest/meta-data/public-keys/1/openssh-key", "/latest/meta-data/public-keys/x", "/etc/passwd",
                 "/latest/meta-data/../../user-data", "/latest/meta-data/nope"):  # fmt: skip
        assert (await get("127.0.0.2", port, path)).status_code == 404, path
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(transport=transport) as client:
        posted = await client.post(f"http://127.0.0.1:{port}/latest/user-data", content=b"x")
        assert posted.status_code == 405
    assert all(e.status in (404, 405) for e in events)


def test_render_listing_without_keys() -> None:
    known_spec = spec("i-a", "alpha", "10.0.0.5")
    svc = MetadataService()
    svc.register(known_spec)
    found = svc.lookup("net-a", "10.0.0.5")
    assert found is not None
    assert render(found[1], "/latest/meta-data") == "instance-id\nhostname\nlocal-hostname\nlocal-ipv4\n"
    assert render(found[1], "/latest/meta-data/public-keys/") is None
    assert render(found[1], "/") == "latest\n"
