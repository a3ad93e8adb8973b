"""Bare-metal machines and boot profiles: the inventory files, changed through operations.

The files are the source of truth (people edit them by hand too); this service adds what
the API needs on top: validation before anything changes (a 4xx, recorded as a rejected
event), one operation per change with an undo and an audit event carrying the actor and
request id, and git commits that say who and why (done by the store).

Policy when the boot role is off: the inventory is plain files, so machines and profiles
can be managed whenever the daemon has an inventory (brambled always wires one); only
``wake`` needs the boot role and answers 409 without it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from bramble.boot.records import (
    InventoryConflict,
    InventoryError,
    InventoryNotFound,
    InventoryProblem,
    Machine,
    Profile,
    RecordError,
    WriteResult,
)
from bramble.core.context import RequestContext
from bramble.core.deps import CoreDeps
from bramble.core.errors import ActionFailed, BrambleError, Conflict, Invalid, NotFound
from bramble.core.gateway import BootGateway, InventoryStore
from bramble.core.operations import OperationHandle

T = TypeVar("T")

MACHINE_FIELDS = ("mac", "ip", "hostname", "arch", "profile", "notes", "groups", "wake_at", "interface")
NO_INVENTORY = "the boot role is not enabled: this daemon has no machine inventory"
NO_BOOT_ROLE = "the boot role is not enabled on this daemon (Wake-on-LAN is sent by it); add 'boot' to roles"


def machine_summary(machine: Machine) -> dict[str, Any]:
    """The JSON-able view stored in events (before/after)."""
    return {
        "name": machine.name,
        "mac": machine.mac,
        "ip": machine.ip,
        "hostname": machine.hostname,
        "arch": machine.arch,
        "profile": machine.profile,
        "groups": list(machine.groups),
        "wake_at": list(machine.wake_at),
        "interface": machine.interface,
        "discovered": machine.discovered,
        "notes": machine.notes,
    }


def profile_summary(profile: Profile) -> dict[str, Any]:
    return {
        "name": profile.name,
        "kind": profile.kind,
        "kernel": profile.kernel,
        "initrd": list(profile.initrd),
        "cmdline": profile.cmdline,
        "transport": profile.transport,
        "has_template": profile.template is not None,
        "description": profile.description,
    }


def _invalid(exc: RecordError) -> Invalid:
    return Invalid(exc.message)


def _translate(exc: InventoryError | RecordError) -> BrambleError:
    if isinstance(exc, RecordError):
        return Invalid(exc.message)
    if isinstance(exc, InventoryNotFound):
        return NotFound(exc.message)
    if isinstance(exc, InventoryConflict):
        return Conflict(exc.message)
    return ActionFailed(exc.message)


async def _in_thread(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """File writes fsync and may run git: keep them off the event loop, errors as BrambleErrors."""
    try:
        return await asyncio.to_thread(call, *args, **kwargs)
    except (InventoryError, RecordError) as exc:
        raise _translate(exc) from None


def _write_info(result: WriteResult) -> dict[str, Any]:
    return {"path": result.path, "commit": result.commit, "git_error": result.git_error}


def _reason(action: str, given: str | None) -> str:
    return f"{action}: {given.strip()}" if given and given.strip() else action


@dataclass(frozen=True)
class MachineRequest:
    name: str
    mac: str
    ip: str | None = None
    hostname: str | None = None
    arch: str = "x86_64"
    profile: str | None = None
    notes: str = ""
    groups: tuple[str, ...] = ()
    wake_at: tuple[str, ...] = ()
    interface: str | None = None


@dataclass(frozen=True)
class Written:
    """A record as it is after a change, and what the write did (file, commit, git problem)."""

    record: Any
    write: WriteResult


class _InventoryService:
    def __init__(self, deps: CoreDeps) -> None:
        self.deps = deps

    def store(self) -> InventoryStore:
        if self.deps.inventory is None:
            raise Conflict(NO_INVENTORY)
        return self.deps.inventory

    def problems(self) -> list[InventoryProblem]:
        return self.store().problems()


class MachineService(_InventoryService):
    # ------------------------------------------------------------------ reading
    def list_all(self) -> tuple[list[Machine], list[InventoryProblem]]:
        store = self.store()
        return store.machines(), store.problems()

    def get(self, name: str) -> Machine:
        machine = self.store().machine(name)
        if machine is None:
            raise NotFound(f"machine {name!r} not found")
        return machine

    def boot_profile(self, machine: Machine) -> str:
        """The profile the machine boots right now (its own, else the default)."""
        return self.store().profile_for(machine).name

    # ------------------------------------------------------------------ checks
    def _check(self, store: InventoryStore, machine: Machine) -> None:
        """Clashes with other machines and unknown profiles, as 4xx before anything is written."""
        owner = store.machine_by_mac(machine.mac)
        if owner is not None and owner.name != machine.name:
            raise Conflict(f"MAC {machine.mac} already belongs to machine {owner.name!r}")
        if machine.ip is not None:
            for other in store.machines():
                if other.ip == machine.ip and other.name != machine.name:
                    raise Conflict(f"IP {machine.ip} is already given to machine {other.name!r}")
        if machine.profile is not None and store.profile(machine.profile) is None:
            known = ", ".join(p.name for p in store.profiles())
            raise Invalid(f"profile {machine.profile!r} does not exist; known: {known}")

    # ------------------------------------------------------------------ changes
    async def add(self, ctx: RequestContext, req: MachineRequest, reason: str | None = None) -> Written:
        target = f"machine/{req.name}"
        async with self.deps.runner.validating(ctx, "machine.create", target):
            store = self.store()
            try:
                machine = Machine(**req.__dict__)
            except RecordError as exc:
                raise _invalid(exc) from None
            if store.machine(machine.name) is not None:
                raise Conflict(f"machine {machine.name!r} already exists")
            self._check(store, machine)
        return await self._put(ctx, "machine.create", machine, None, _reason(f"add ({machine.mac})", reason))

    async def update(
        self, ctx: RequestContext, name: str, changes: dict[str, Any], reason: str | None = None
    ) -> Written:
        """Change some fields; a machine a person has touched is no longer 'discovered'."""
        action = "machine.set_profile" if set(changes) == {"profile"} else "machine.update"
        async with self.deps.runner.validating(ctx, action, f"machine/{name}"):
            store = self.store()
            unknown = set(changes) - set(MACHINE_FIELDS)
            if unknown:
                raise Invalid(f"cannot change {', '.join(sorted(unknown))}; changeable: {', '.join(MACHINE_FIELDS)}")
            if not changes:
                raise Invalid("nothing to change")
            before = self.get(name)
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
            try:
                machine = before.with_changes(**values, discovered=False)
            except RecordError as exc:
                raise _invalid(exc) from None
            self._check(store, machine)
        if action == "machine.set_profile":
            what = f"boot profile {machine.profile or 'default'}"
        else:
            what = "change " + ", ".join(sorted(changes))
        return await self._put(ctx, action, machine, before, _reason(what, reason))

    async def set_profile(
        self, ctx: RequestContext, name: str, profile: str | None, reason: str | None = None
    ) -> Written:
        return await self.update(ctx, name, {"profile": profile}, reason)

    async def _put(
        self, ctx: RequestContext, action: str, machine: Machine, before: Machine | None, reason: str
    ) -> Written:
        store = self.store()
        written: list[WriteResult] = []

        async def work(op: OperationHandle) -> dict[str, Any]:
            op.before = machine_summary(before) if before else None
            result = await _in_thread(
                store.put_machine, machine, actor=ctx.actor, reason=reason, request_id=ctx.request_id
            )
            written.append(result)
            op.undo.push(f"restore {result.path}", lambda: self._restore(store, ctx, machine.name, before))
            op.after = {**machine_summary(store.machine(machine.name) or machine), **_write_info(result)}
            return _write_info(result)

        await self.deps.runner.run(ctx, action, f"machine/{machine.name}", work)
        return Written(store.machine(machine.name) or machine, written[0])

    async def _restore(self, store: InventoryStore, ctx: RequestContext, name: str, before: Machine | None) -> None:
        reason = "undo a change that did not complete"
        if before is None:
            await _in_thread(store.remove_machine, name, actor=ctx.actor, reason=reason, request_id=ctx.request_id)
        else:
            await _in_thread(store.put_machine, before, actor=ctx.actor, reason=reason, request_id=ctx.request_id)

    async def remove(self, ctx: RequestContext, name: str, reason: str | None = None) -> WriteResult:
        target = f"machine/{name}"
        async with self.deps.runner.validating(ctx, "machine.delete", target):
            store = self.store()
            before = store.machine(name)
            path_known = any(p.path.endswith("/" + store.relative("machines", name)) for p in store.problems())
            if before is None and not path_known:  # a corrupt file may be removed too
                raise NotFound(f"machine {name!r} not found")
        written: list[WriteResult] = []

        async def work(op: OperationHandle) -> dict[str, Any]:
            op.before = machine_summary(before) if before else None
            result = await _in_thread(
                store.remove_machine, name, actor=ctx.actor, reason=_reason("remove", reason), request_id=ctx.request_id
            )
            written.append(result)
            return _write_info(result)

        await self.deps.runner.run(ctx, "machine.delete", target, work)
        return written[0]

    async def wake(self, ctx: RequestContext, name: str) -> tuple[Machine, str]:
        """Send the magic packet through the boot role; returns the interface it used."""
        target = f"machine/{name}"
        async with self.deps.runner.validating(ctx, "machine.wake", target):
            machine = self.get(name)
            boot: BootGateway | None = self.deps.boot
            if boot is None:
                raise Conflict(NO_BOOT_ROLE)
        used: list[str] = []

        async def work(op: OperationHandle) -> dict[str, Any]:
            try:
                interface = await boot.wake(machine.mac, machine.interface)
            except OSError as exc:
                raise ActionFailed(f"cannot send the magic packet to {machine.mac}: {exc.strerror or exc}") from None
            used.append(interface)
            op.after = {"mac": machine.mac, "interface": interface}
            return {"mac": machine.mac, "interface": interface}

        await self.deps.runner.run(ctx, "machine.wake", target, work)
        return machine, used[0]


class ProfileService(_InventoryService):
    def list_all(self) -> tuple[list[Profile], list[InventoryProblem]]:
        store = self.store()
        return store.profiles(), store.problems()

    def get(self, name: str) -> Profile:
        profile = self.store().profile(name)
        if profile is None:
            raise NotFound(f"profile {name!r} not found")
        return profile

    def users(self, name: str) -> list[str]:
        return self.store().machines_using(name)

    def is_default(self, name: str) -> bool:
        return self.store().default_profile == name

    async def put(
        self, ctx: RequestContext, fields: dict[str, Any], *, replace: bool, reason: str | None = None
    ) -> Written:
        """Create a profile (``replace=False``: 409 if it exists) or replace it (``replace=True``)."""
        name = str(fields.get("name"))
        action = "profile.update" if replace else "profile.create"
        target = f"profile/{name}"
        async with self.deps.runner.validating(ctx, action, target):
            store = self.store()
            values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
            try:
                profile = Profile(**values)
            except RecordError as exc:
                raise _invalid(exc) from None
            before = store.profile(name)
            if before is not None and not before.builtin and not replace:
                raise Conflict(f"profile {name!r} already exists (replace it with PUT / --replace)")
            if before is None and replace:
                raise NotFound(f"profile {name!r} not found")
        written: list[WriteResult] = []
        verb = "replace" if before is not None else "add"

        async def work(op: OperationHandle) -> dict[str, Any]:
            op.before = profile_summary(before) if before else None
            result = await _in_thread(
                store.put_profile,
                profile,
                actor=ctx.actor,
                reason=_reason(f"{verb} ({profile.kind})", reason),
                request_id=ctx.request_id,
            )
            written.append(result)
            op.after = {**profile_summary(profile), **_write_info(result)}
            return _write_info(result)

        await self.deps.runner.run(ctx, action, target, work)
        return Written(store.profile(name) or profile, written[0])

    async def remove(self, ctx: RequestContext, name: str, reason: str | None = None) -> WriteResult:
        target = f"profile/{name}"
        async with self.deps.runner.validating(ctx, "profile.delete", target):
            store = self.store()
            before = store.profile(name)
            if before is None:
                raise NotFound(f"profile {name!r} not found")
            if before.builtin:
                raise Conflict(f"profile {name!r} is built in and cannot be removed")
            users = store.machines_using(name)
            if users:
                raise Conflict(f"profile {name!r} is used by {len(users)} machine(s): {', '.join(users)}")
        written: list[WriteResult] = []

        async def work(op: OperationHandle) -> dict[str, Any]:
            op.before = profile_summary(before)
            result = await _in_thread(
                store.remove_profile, name, actor=ctx.actor, reason=_reason("remove", reason), request_id=ctx.request_id
            )
            written.append(result)
            return _write_info(result)

        await self.deps.runner.run(ctx, "profile.delete", target, work)
        return written[0]
