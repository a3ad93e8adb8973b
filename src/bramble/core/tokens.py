"""API tokens. Only a SHA-256 of each token is stored, so the database never leaks one."""

from __future__ import annotations

import hashlib
import secrets
import uuid

from sqlalchemy import select

from bramble.core.errors import Unauthorized
from bramble.db.models import ApiTokenRow
from bramble.db.session import Database

TOKEN_PREFIX = "brt_"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenService:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: dict[str, str] = {}

    async def create(self, name: str, role: str = "admin") -> str:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        async with self.db.write() as session:
            session.add(ApiTokenRow(id=str(uuid.uuid4()), name=name, sha256=_digest(token), role=role))
        return token

    async def has(self, name: str) -> bool:
        async with self.db.read() as session:
            return await session.scalar(select(ApiTokenRow.id).where(ApiTokenRow.name == name)) is not None

    async def check(self, token: str) -> str:
        """Return the actor name for a valid token; Unauthorized otherwise."""
        digest = _digest(token)
        if digest in self._cache:
            return self._cache[digest]
        async with self.db.read() as session:
            row = (await session.scalars(select(ApiTokenRow).where(ApiTokenRow.sha256 == digest))).first()
        if row is None:
            raise Unauthorized("invalid API token")
        actor = f"token:{row.name}"
        self._cache[digest] = actor
        return actor
