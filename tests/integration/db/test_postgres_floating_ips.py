"""Floating IPs and NICs on PostgreSQL, where writers run side by side: the shared advisory lock
(``vm-placement``) must keep the two tables from handing out one address twice."""

from __future__ import annotations

import httpx
import pytest
from tests.integration.db.test_postgres import pg_api
from tests.unit.api.test_floating_ips import concurrent_nics_and_floating_ips

pytestmark = pytest.mark.anyio

__all__ = ["pg_api"]


async def test_concurrent_nics_and_floating_ips_on_postgres(pg_api: httpx.AsyncClient) -> None:
    await concurrent_nics_and_floating_ips(pg_api, 15)
