"""Bare-metal machines and boot profiles (the inventory files), plus Wake-on-LAN."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from bramble.api import schemas
from bramble.api.deps import CloudDep, ContextDep
from bramble.boot.records import InventoryProblem, Machine, Profile, WriteResult
from bramble.core.cloud import Cloud
from bramble.core.errors import Invalid
from bramble.core.machines import MachineRequest, Written

router = APIRouter(tags=["machines"])

Reason = Annotated[str | None, Query(max_length=500, description="why (goes into the git commit)")]


def _problems(problems: list[InventoryProblem]) -> list[schemas.InventoryProblem]:
    return [schemas.InventoryProblem(path=p.path, line=p.line, message=p.message) for p in problems]


def _machine(cloud: Cloud, machine: Machine, write: WriteResult | None = None) -> schemas.Machine:
    return schemas.Machine(
        name=machine.name,
        mac=machine.mac,
        ip=machine.ip,
        hostname=machine.hostname,
        arch=machine.arch,
        profile=machine.profile,
        boot_profile=cloud.machines.boot_profile(machine),
        notes=machine.notes,
        groups=list(machine.groups),
        wake_at=list(machine.wake_at),
        interface=machine.interface,
        discovered=machine.discovered,
        path=cloud.machines.store().relative("machines", machine.name),
        created_at=machine.created,
        updated_at=machine.updated,
        commit=write.commit if write else None,
        git_error=write.git_error if write else None,
    )


def _profile(cloud: Cloud, profile: Profile, write: WriteResult | None = None) -> schemas.Profile:
    return schemas.Profile(
        name=profile.name,
        kind=profile.kind,
        kernel=profile.kernel,
        initrd=list(profile.initrd),
        cmdline=profile.cmdline,
        transport=profile.transport,
        template=profile.template,
        description=profile.description,
        builtin=profile.builtin,
        default=cloud.profiles.is_default(profile.name),
        used_by=cloud.profiles.users(profile.name),
        path=None if profile.builtin else cloud.profiles.store().relative("profiles", profile.name),
        commit=write.commit if write else None,
        git_error=write.git_error if write else None,
    )


def _written_machine(cloud: Cloud, written: Written) -> schemas.Machine:
    return _machine(cloud, written.record, written.write)


def _removed(target: str, write: WriteResult) -> schemas.Removed:
    return schemas.Removed(target=target, path=write.path, commit=write.commit, git_error=write.git_error)


# ------------------------------------------------------------------ machines
@router.get("/v1/machines", response_model=schemas.MachineList)
async def list_machines(cloud: CloudDep, ctx: ContextDep) -> schemas.MachineList:
    """All machines, and the inventory files that are skipped because they are wrong."""
    machines, problems = cloud.machines.list_all()
    return schemas.MachineList(items=[_machine(cloud, m) for m in machines], problems=_problems(problems))


@router.post("/v1/machines", status_code=status.HTTP_201_CREATED, response_model=schemas.Machine)
async def add_machine(body: schemas.MachineCreate, cloud: CloudDep, ctx: ContextDep) -> schemas.Machine:
    fields = body.model_dump(exclude={"reason", "groups", "wake_at"})
    request = MachineRequest(**fields, groups=tuple(body.groups), wake_at=tuple(body.wake_at))
    return _written_machine(cloud, await cloud.machines.add(ctx, request, body.reason))


@router.get("/v1/machines/{name}", response_model=schemas.Machine)
async def show_machine(name: str, cloud: CloudDep, ctx: ContextDep) -> schemas.Machine:
    return _machine(cloud, cloud.machines.get(name))


@router.patch("/v1/machines/{name}", response_model=schemas.Machine)
async def update_machine(name: str, body: schemas.MachineUpdate, cloud: CloudDep, ctx: ContextDep) -> schemas.Machine:
    """Change the fields sent (e.g. ``{"profile": "installer"}``); others stay as they are."""
    changes = {key: getattr(body, key) for key in body.model_fields_set if key != "reason"}
    for key in ("mac", "arch", "notes", "groups", "wake_at"):
        if key in changes and changes[key] is None:
            raise Invalid(f"{key} cannot be null")
    return _written_machine(cloud, await cloud.machines.update(ctx, name, changes, body.reason))


@router.delete("/v1/machines/{name}", response_model=schemas.Removed)
async def remove_machine(name: str, cloud: CloudDep, ctx: ContextDep, reason: Reason = None) -> schemas.Removed:
    return _removed(f"machine/{name}", await cloud.machines.remove(ctx, name, reason))


@router.post("/v1/machines/{name}/wake", response_model=schemas.WakeResult)
async def wake_machine(name: str, cloud: CloudDep, ctx: ContextDep) -> schemas.WakeResult:
    """Send a Wake-on-LAN magic packet (needs the boot role on this daemon)."""
    machine, interface = await cloud.machines.wake(ctx, name)
    return schemas.WakeResult(machine=machine.name, mac=machine.mac, interface=interface)


# ------------------------------------------------------------------ profiles
@router.get("/v1/profiles", response_model=schemas.ProfileList)
async def list_profiles(cloud: CloudDep, ctx: ContextDep) -> schemas.ProfileList:
    profiles, problems = cloud.profiles.list_all()
    return schemas.ProfileList(items=[_profile(cloud, p) for p in profiles], problems=_problems(problems))


@router.post("/v1/profiles", status_code=status.HTTP_201_CREATED, response_model=schemas.Profile)
async def add_profile(body: schemas.ProfileCreate, cloud: CloudDep, ctx: ContextDep) -> schemas.Profile:
    written = await cloud.profiles.put(ctx, body.model_dump(exclude={"reason"}), replace=False, reason=body.reason)
    return _profile(cloud, written.record, written.write)


@router.get("/v1/profiles/{name}", response_model=schemas.Profile)
async def show_profile(name: str, cloud: CloudDep, ctx: ContextDep) -> schemas.Profile:
    return _profile(cloud, cloud.profiles.get(name))


@router.put("/v1/profiles/{name}", response_model=schemas.Profile)
async def replace_profile(name: str, body: schemas.ProfileCreate, cloud: CloudDep, ctx: ContextDep) -> schemas.Profile:
    if body.name != name:
        raise Invalid(f"the body names profile {body.name!r} but the URL {name!r}")
    written = await cloud.profiles.put(ctx, body.model_dump(exclude={"reason"}), replace=True, reason=body.reason)
    return _profile(cloud, written.record, written.write)


@router.delete("/v1/profiles/{name}", response_model=schemas.Removed)
async def remove_profile(name: str, cloud: CloudDep, ctx: ContextDep, reason: Reason = None) -> schemas.Removed:
    return _removed(f"profile/{name}", await cloud.profiles.remove(ctx, name, reason))
