"""Who asks and under which request id: carried into every operation and event."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field


def new_request_id() -> str:
    return "req-" + uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class RequestContext:
    actor: str
    request_id: str = field(default_factory=new_request_id)


SYSTEM = RequestContext(actor="system:bramble", request_id="")
