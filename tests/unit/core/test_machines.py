"""MachineService and ProfileService: validation before writes, undo, events, the no-inventory answer."""

from __future__ import annotations

import pytest

from bramble.audit import store as audit
from bramble.boot.inventory import Inventory
from bramble.boot.records import Machine
from bramble.core.context import RequestContext
from bramble.core.errors import ActionFailed, Conflict, Invalid, NotFound
from bramble.core.machines import MachineRequest
from bramble.daemon import Services

pytestmark = pytest.mark.anyio

CTX = RequestContext(actor="token:alice", request_id="req-core")


async def events(services: Services, target: str) -> list:
    async with services.db.read() as session:
        return await audit.query(session, target=target, limit=50)


async def test_add_records_an_event_with_actor_request_and_after(services: Services) -> None:
    written = await services.cloud.machines.add(CTX, MachineRequest(name="m1", mac="52:54:00:00:00:01", arch="amd64"))
    assert isinstance(written.record, Machine) and written.record.arch == "x86_64"
    assert written.write.path == "machines/m1.toml"
    [event] = await events(services, "machine/m1")
    assert (event.action, event.outcome, event.actor, event.request_id) == (
        "machine.create",
        "ok",
        "token:alice",
        "req-core",
    )
    assert event.after["mac"] == "52:54:00:00:00:01" and event.after["commit"] is None


async def test_invalid_input_is_rejected_before_any_file_is_written(services: Services) -> None:
    with pytest.raises(Invalid, match="invalid MAC"):
        await services.cloud.machines.add(CTX, MachineRequest(name="m1", mac="xx"))
    with pytest.raises(Invalid, match="cannot change name"):
        await services.cloud.machines.update(CTX, "m1", {"name": "m2"})
    assert not (services.settings.inventory_path / "machines").exists()
    create, update = await events(services, "machine/m1")
    assert (create.action, create.outcome, update.action, update.outcome) == (
        "machine.create",
        "rejected",
        "machine.update",
        "rejected",
    )
    assert "invalid MAC" in create.message


async def test_a_failure_after_the_write_is_undone(services: Services) -> None:
    inventory = services.cloud.deps.inventory
    assert isinstance(inventory, Inventory)
    await services.cloud.machines.add(CTX, MachineRequest(name="m1", mac="52:54:00:00:00:01", notes="before"))
    original_machine = inventory.machine
    calls = {"n": 0}

    def fails_after_the_write(name: str) -> Machine | None:
        calls["n"] += 1
        if calls["n"] == 2:  # the first call validates; the second runs after the file was written
            raise OSError("disk went away")
        return original_machine(name)

    inventory.machine = fails_after_the_write  # type: ignore[method-assign]
    with pytest.raises(ActionFailed, match="disk went away"):
        await services.cloud.machines.update(CTX, "m1", {"notes": "after"})
    inventory.machine = original_machine  # type: ignore[method-assign]
    restored = inventory.machine("m1")
    assert restored is not None and restored.notes == "before"
    failed = (await events(services, "machine/m1"))[-1]
    assert (failed.action, failed.outcome) == ("machine.update", "failed")


async def test_without_an_inventory_every_call_is_409(services: Services) -> None:
    services.cloud.deps.inventory = None
    with pytest.raises(Conflict, match="boot role is not enabled"):
        services.cloud.machines.list_all()
    with pytest.raises(Conflict, match="boot role is not enabled"):
        await services.cloud.machines.add(CTX, MachineRequest(name="m1", mac="52:54:00:00:00:01"))
    with pytest.raises(Conflict, match="boot role is not enabled"):
        services.cloud.profiles.list_all()


async def test_profile_rules(services: Services) -> None:
    profiles = services.cloud.profiles
    with pytest.raises(Invalid, match="needs a kernel"):
        await profiles.put(CTX, {"name": "k", "kind": "kernel"}, replace=False)
    with pytest.raises(NotFound):
        await profiles.put(CTX, {"name": "k", "kind": "local"}, replace=True)
    await profiles.put(CTX, {"name": "k", "kind": "kernel", "kernel": "vmlinuz", "initrd": ["a"]}, replace=False)
    assert profiles.get("k").initrd == ("a",)
    with pytest.raises(Conflict, match="already exists"):
        await profiles.put(CTX, {"name": "k", "kind": "local"}, replace=False)
    with pytest.raises(Conflict, match="built in"):
        await profiles.remove(CTX, "discovered")
    await profiles.remove(CTX, "k")
    with pytest.raises(NotFound):
        profiles.get("k")
    actions = [(e.action, e.outcome) for e in await events(services, "profile/k")]
    assert ("profile.create", "ok") in actions and ("profile.delete", "ok") in actions
