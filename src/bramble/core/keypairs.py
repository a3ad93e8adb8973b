"""SSH keypairs: named public keys that VMs get through their cloud-init seed and the metadata service.

A generated pair's private key is returned once to the caller and never stored: losing it means
making a new pair, as on EC2. Keys are generated in-process with ``cryptography`` (core never
shells out to ``ssh-keygen``).
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlalchemy import select

from bramble.core.context import RequestContext
from bramble.core.deps import CoreDeps, find_by_ref
from bramble.core.errors import Conflict, Invalid
from bramble.core.operations import OperationHandle
from bramble.db.models import KeypairRow, utcnow

MAX_PUBLIC_KEY = 16 * 1024
ACCEPTED_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")
MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class CreatedKeypair:
    row: KeypairRow
    private_key: str | None  # only for a generated pair, and only in this answer


def fingerprint(blob: bytes) -> str:
    """OpenSSH's ``SHA256:`` fingerprint (what ``ssh-keygen -l`` prints), so users can compare."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def normalise_public_key(text: str) -> tuple[str, str]:
    """Check an OpenSSH public key line and return (canonical line, fingerprint); Invalid says why not."""
    if len(text) > MAX_PUBLIC_KEY:
        raise Invalid(f"public key is longer than {MAX_PUBLIC_KEY} characters")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) != 1:
        raise Invalid("public key must be exactly one line in OpenSSH format ('ssh-ed25519 AAAA... comment')")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or parts[0] not in ACCEPTED_TYPES:
        raise Invalid(f"public key must start with one of {', '.join(ACCEPTED_TYPES)}")
    try:
        blob = base64.b64decode(parts[1], validate=True)
        key = serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):  # binascii.Error is a ValueError
        raise Invalid(f"public key data is not a valid {parts[0]} key") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise Invalid(f"RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} are needed")
    if not isinstance(key, (rsa.RSAPublicKey, ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey)):
        raise Invalid(f"unsupported key type {parts[0]}")
    comment = parts[2].strip() if len(parts) == 3 else ""
    canonical = f"{parts[0]} {parts[1]}" + (f" {comment}" if comment else "")
    return canonical, fingerprint(blob)


def generate_ed25519(comment: str) -> tuple[str, str]:
    """A new ed25519 pair as (OpenSSH private key PEM, public key line)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, f"{public.decode()} {comment}"


class KeypairService:
    def __init__(self, deps: CoreDeps) -> None:
        self.deps = deps

    async def list_all(self) -> list[KeypairRow]:
        async with self.deps.db.read() as session:
            return list((await session.scalars(select(KeypairRow).order_by(KeypairRow.name))).all())

    async def get(self, ref: str) -> KeypairRow:
        async with self.deps.db.read() as session:
            return await find_by_ref(session, KeypairRow, ref, "keypair")

    async def create(self, ctx: RequestContext, name: str, public_key: str | None = None) -> CreatedKeypair:
        """Import ``public_key``, or generate an ed25519 pair when it is None (the private key is in the answer)."""
        target = f"keypair/{name}"
        action = "keypair.generate" if public_key is None else "keypair.import"
        async with self.deps.runner.validating(ctx, action, target):
            private: str | None = None
            if public_key is None:
                private, public_key = generate_ed25519(f"bramble-{name}")
            line, fp = normalise_public_key(public_key)
        created: list[KeypairRow] = []

        async def work(op: OperationHandle) -> dict[str, Any]:
            async with self.deps.db.write() as session:
                if await session.scalar(select(KeypairRow.id).where(KeypairRow.name == name)):
                    raise Conflict(f"keypair {name!r} already exists")
                row = KeypairRow(id=str(uuid.uuid4()), name=name, public_key=line, fingerprint=fp, created_at=utcnow())
                session.add(row)
            created.append(row)
            op.after = {"name": name, "fingerprint": fp}
            return {"keypair_id": row.id}

        await self.deps.runner.run(ctx, action, target, work)
        return CreatedKeypair(created[0], private)

    async def delete(self, ctx: RequestContext, ref: str) -> None:
        """VMs made with the key keep their copy of it."""
        async with self.deps.runner.validating(ctx, "keypair.delete", f"keypair/{ref}"):
            row = await self.get(ref)

        async def work(op: OperationHandle) -> None:
            async with self.deps.db.write() as session:
                current = await session.get(KeypairRow, row.id)
                if current is not None:
                    await session.delete(current)
            op.before = {"name": row.name, "fingerprint": row.fingerprint}

        await self.deps.runner.run(ctx, "keypair.delete", f"keypair/{row.name}", work)
