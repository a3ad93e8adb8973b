"""The FastAPI application: routers, error mapping, request ids."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bramble import __version__
from bramble.api.routers import (
    flavors,
    floating_ips,
    images,
    keypairs,
    machines,
    misc,
    networks,
    pools,
    secgroups,
    vms,
    volumes,
)
from bramble.core.cloud import Cloud
from bramble.core.context import new_request_id
from bramble.core.errors import BrambleError

log = logging.getLogger(__name__)


def _error(status: int, code: str, message: str, request: Request) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    return JSONResponse(
        {"error": {"code": code, "message": message, "request_id": request_id}},
        status_code=status,
        headers={"X-Request-Id": request_id or ""},
    )


def _describe_validation(exc: RequestValidationError) -> str:
    """Turn pydantic's error list into one sentence a person can act on."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        where = ".".join(loc) or "request body"
        if err.get("type") == "json_invalid":
            parts.append(f"malformed JSON: {err.get('ctx', {}).get('error', err.get('msg'))}")
        elif err.get("type") == "extra_forbidden":
            parts.append(f"{where}: unknown field")
        else:
            parts.append(f"{where}: {err.get('msg')}")
    return "; ".join(parts) or "invalid request"


def create_app(cloud: Cloud) -> FastAPI:
    app = FastAPI(
        title="Bramble",
        version=__version__,
        description="A private cloud for small clusters. Long actions answer 202 with an operation to poll.",
    )
    app.state.cloud = cloud
    app.state.started_at = datetime.now(UTC)

    @app.middleware("http")
    async def request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request.state.request_id = request.headers.get("x-request-id") or new_request_id()
        response = await call_next(request)
        response.headers["X-Request-Id"] = request.state.request_id
        return response

    @app.exception_handler(BrambleError)
    async def bramble_error(request: Request, exc: BrambleError) -> JSONResponse:
        if exc.http_status >= 500:
            log.error("request %s failed: %s", getattr(request.state, "request_id", "?"), exc.message)
        return _error(exc.http_status, exc.code, exc.message, request)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid", _describe_validation(exc), request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
        return _error(exc.status_code, code, message, request)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return _error(500, "internal", f"internal error ({exc.__class__.__name__}); see the daemon log", request)

    for module in (images, flavors, vms, volumes, pools, networks, floating_ips, secgroups, keypairs, machines, misc):
        app.include_router(module.router)
    return app
