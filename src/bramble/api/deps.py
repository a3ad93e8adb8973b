"""Request-scoped dependencies: the services, and who is asking."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from bramble.core.cloud import Cloud
from bramble.core.context import RequestContext
from bramble.core.errors import Unauthorized


def get_cloud(request: Request) -> Cloud:
    cloud: Cloud = request.app.state.cloud
    return cloud


async def get_context(request: Request, cloud: Annotated[Cloud, Depends(get_cloud)]) -> RequestContext:
    """Check the bearer token and name the actor for the audit log."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing API token: send 'Authorization: Bearer <token>' (see ~/.config/bramble/)")
    actor = await cloud.tokens.check(token.strip())
    return RequestContext(actor=actor, request_id=request.state.request_id)


CloudDep = Annotated[Cloud, Depends(get_cloud)]
ContextDep = Annotated[RequestContext, Depends(get_context)]
