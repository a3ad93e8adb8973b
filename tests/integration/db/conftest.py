"""A throwaway PostgreSQL server for the database tests, started and removed by the session.

Debian's server binaries run as the postgres user (initdb refuses root), on a loopback
port of our choosing with fsync off; the data directory is deleted at the end.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.qemu_helpers import wait_for

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres(*argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *argv], check=True, text=True, capture_output=True, **kwargs
    )  # type: ignore[call-overload, no-any-return]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    if not (PG_BIN / "initdb").exists() or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL 15 server not installed (make test-deps installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = Path(tempfile.mkdtemp(prefix="bramble-pg-"))
    data = home / "data"
    shutil.chown(home, "postgres", "postgres")
    _as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    _as_postgres(
        str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(home / "log"), "-w", "start",
        "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
    )  # fmt: skip
    try:
        wait_for(
            lambda: subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                                   capture_output=True).returncode == 0,
            30, "PostgreSQL to accept connections",
        )  # fmt: skip
        _as_postgres(str(PG_BIN.parent / "bin" / "createdb"), "-h", "127.0.0.1", "-p", str(port), "bramble")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/bramble"
    finally:
        stop = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
        subprocess.run(["runuser", "-u", "postgres", "--", *stop], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)
