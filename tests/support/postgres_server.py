"""A throwaway PostgreSQL server (``initdb`` + ``pg_ctl``) in a temporary directory, on a free
loopback port, for the store's tests. As root (CI containers), PostgreSQL refuses to run: the
server then runs as the ``postgres`` user, else ``nobody``, through ``runuser``."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class PostgresServer:
    port: int
    directory: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


def postgres_binaries() -> Path | None:
    """The directory holding initdb and pg_ctl: the PATH, then Debian's versioned directories."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(directory) / "initdb").exists() and (Path(directory) / "pg_ctl").exists():
            return Path(directory)
    return None


def _unprivileged_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root with neither a 'postgres' nor a 'nobody' user to run PostgreSQL")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start PostgreSQL with trust authentication for the ``postgres`` role on 127.0.0.1; stop it
    and remove its files on exit. Skips when no PostgreSQL is installed, and fails under CI."""
    binaries = postgres_binaries()
    if binaries is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is missing: CI must install it (apt-get install postgresql)")
        pytest.skip(
            "PostgreSQL is not installed (apt-get install postgresql): store tests ran on SQLite only"
        )
    user = _unprivileged_user()
    prefix = ["runuser", "-u", user, "--"] if user else []
    # Directly in the temporary directory: pytest's own tmp dirs are root-only, which the
    # unprivileged user could not enter.
    directory = Path(tempfile.mkdtemp(prefix="dspy-serve-pg-"))
    data = directory / "data"
    if user:
        entry = pwd.getpwnam(user)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    port = _free_port()

    def run(*argv: str) -> None:
        done = subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=120, cwd=directory)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout}{done.stderr}")

    try:
        run(str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {directory} -c fsync=off -c max_connections=200"
        )
        run(
            str(binaries / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(directory / "log"),
            "-w",
            "start",
        )
        _wait_for(port)
        yield PostgresServer(port, directory)
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*prefix, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                capture_output=True,
                timeout=60,
                cwd=directory,
            )
        shutil.rmtree(directory, ignore_errors=True)


def _wait_for(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL did not start") from None
            time.sleep(0.05)


def create_database(server: PostgresServer, name: str) -> str:
    """A fresh, empty database on ``server`` (each test gets its own); returns its URL."""
    import asyncio

    import asyncpg

    async def create() -> None:
        connection = await asyncpg.connect(host="127.0.0.1", port=server.port, user="postgres")
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()

    asyncio.run(create())
    return server.url(name)
