"""Fixtures shared by every test layer."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from bramble.api.app import create_app
from bramble.config import Settings
from bramble.daemon import Services, build_services
from tests.ceph_cluster import CephCluster, ceph_cluster, missing_binaries
from tests.qemu_helpers import build_guests


@pytest.fixture(autouse=True, scope="session")
def _no_bramble_environment() -> Iterator[None]:
    """The developer's BRAMBLE_* variables must not steer tests to their real state dir."""
    saved = {
        key: os.environ.pop(key)
        for key in list(os.environ)
        if key.startswith("BRAMBLE_") and key != "BRAMBLE_GUEST_CACHE"
    }
    yield
    os.environ.update(saved)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def fake_settings(state_dir: Path, **overrides: object) -> Settings:
    """An all-in-one configuration on fake drivers: fast, no QEMU, no root needed."""
    values: dict[str, object] = {
        "state_dir": state_dir,
        "node_name": "node-1",
        "compute": {"driver": "fake", "stop_timeout_seconds": 1},
        "storage": {"driver": "fake"},
        "agent": {"reconcile_interval_seconds": 3600, "heartbeat_seconds": 3600},
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    svc = await build_services(fake_settings(tmp_path / "state"))
    try:
        yield svc
    finally:
        await svc.close()


@pytest.fixture
async def api(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the real app, in-process, authenticated as the admin."""
    transport = httpx.ASGITransport(app=create_app(services.cloud))
    headers = {"Authorization": f"Bearer {services.admin_token}"}
    async with httpx.AsyncClient(  # generous: some tests drive a real Ceph cluster or QEMU through it
        transport=transport, base_url="http://bramble.test", headers=headers, timeout=60
    ) as client:
        yield client


@pytest.fixture(scope="session")
def guests() -> dict[str, Path]:
    """Tiny Debian guests (cloud kernel + busybox initramfs), built once and cached."""
    return build_guests()


@pytest.fixture(scope="session")
def ceph() -> Iterator[CephCluster]:
    """A throwaway Ceph cluster (1 mon + 1 memstore OSD on 127.0.0.1) shared by the session."""
    missing = missing_binaries()
    if missing:
        pytest.skip(f"Ceph not installed ({', '.join(missing)}); run make test-deps")
    with ceph_cluster() as cluster:
        yield cluster
