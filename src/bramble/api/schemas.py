"""Request and response bodies of the v1 API.

The CLI imports these too, so both sides agree on field names and limits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$"
NAME_HELP = "1-63 characters: letters, digits, '.', '_' and '-', starting with a letter or digit"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    code: str  # not_found | conflict | invalid | unauthorized | internal
    message: str
    request_id: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# ---------------------------------------------------------------- images
class ImageCreate(Strict):
    name: str = Field(pattern=NAME_PATTERN, description=NAME_HELP)
    arch: str = "x86_64"
    cmdline: str | None = Field(default=None, max_length=4096)
    source_url: str | None = Field(
        default=None, description="http(s) URL the server downloads; without it, upload the parts"
    )
    source_kernel_url: str | None = None
    source_initrd_url: str | None = None


class Image(BaseModel):
    id: str
    name: str
    arch: str
    status: str  # queued | importing | active | error
    format: str | None = None
    size_bytes: int | None = None
    virtual_size_bytes: int | None = None
    has_kernel: bool = False
    has_initrd: bool = False
    cmdline: str | None = None
    error: str | None = None
    created_at: datetime


# ---------------------------------------------------------------- flavors
class FlavorCreate(Strict):
    name: str = Field(pattern=NAME_PATTERN, description=NAME_HELP)
    cpus: int = Field(ge=1, le=256)
    memory_mib: int = Field(ge=1, le=4 * 1024 * 1024)
    disk_gib: int = Field(ge=1, le=65536)


class Flavor(BaseModel):
    id: str
    name: str
    cpus: int
    memory_mib: int
    disk_gib: int


# ---------------------------------------------------------------- VMs
class VmCreate(Strict):
    name: str = Field(pattern=NAME_PATTERN, description=NAME_HELP)
    image: str = Field(description="image name or id")
    flavor: str | None = Field(default=None, description="flavor name or id")
    cpus: int | None = Field(default=None, ge=1, le=256)
    memory_mib: int | None = Field(default=None, ge=1, le=4 * 1024 * 1024)
    disk_gib: int | None = Field(default=None, ge=1, le=65536)
    arch: str | None = Field(default=None, description="defaults to the image's architecture")
    start: bool = True


class VmAction(Strict):
    force: bool = False


class Vm(BaseModel):
    id: str
    name: str
    arch: str
    cpus: int
    memory_mib: int
    disk_gib: int
    image_id: str | None
    image_name: str | None = None
    flavor_name: str | None = None
    node: str | None
    desired_state: str  # running | stopped | paused
    state: str  # creating | running | stopped | paused | error | deleting
    state_reason: str | None = None
    accel: str | None = None
    pid: int | None = None
    vnc: str | None = None  # host:port, bound to localhost
    created_at: datetime
    updated_at: datetime


class ConsoleChunk(BaseModel):
    data: str
    offset: int  # pass as ?offset= to read on from here
    size: int  # total size of the console log


# ---------------------------------------------------------------- operations, events, nodes
class Operation(BaseModel):
    id: str
    action: str
    target: str
    status: Literal["pending", "running", "succeeded", "failed"]
    progress: float = 0.0  # 0..100
    message: str | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    actor: str
    request_id: str | None = None
    created_at: datetime
    finished_at: datetime | None = None


class Accepted(BaseModel):
    """Returned with 202: poll GET /v1/operations/{operation.id} until it ends."""

    operation: Operation
    vm: Vm | None = None
    image: Image | None = None


class Event(BaseModel):
    id: int
    time: datetime
    actor: str
    action: str
    target: str
    request_id: str | None = None
    operation_id: str | None = None
    outcome: str = "ok"
    message: str | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


class Node(BaseModel):
    name: str
    arch: str
    cpus: int
    memory_mib: int
    accel: str
    accel_reason: str | None = None
    roles: list[str]
    state: str  # up | down
    last_heartbeat: datetime | None = None
    vms: int = 0


class HealthInfo(BaseModel):
    status: str
    version: str
