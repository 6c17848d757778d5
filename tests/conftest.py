"""Shared pytest fixtures.

`postgres_server`: a real, throwaway PostgreSQL server for the whole session (no mocks). It uses the
server binaries of Debian's `postgresql` package (/usr/lib/postgresql/<version>/bin) or the ones on
PATH; as root it runs them as the `postgres` OS user because `initdb` refuses root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from dinmo_dagster.emulator import free_port

# The Firestore emulator's fixtures (one emulator per session, shared by every test module).
pytest_plugins = ["fakes.firestore_emulator"]

@pytest.fixture(scope="session", autouse=True)
def _fakesnow_bucket_removed():
    """fakesnow makes a temporary "stage bucket" directory when it is imported and never removes it
    (``fakesnow.transforms.stage.LOCAL_BUCKET_PATH``): remove it when the session ends."""
    yield
    stage = sys.modules.get("fakesnow.transforms.stage")
    if stage is not None:
        shutil.rmtree(stage.LOCAL_BUCKET_PATH, ignore_errors=True)


_PG_MISSING = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found: "
    "install Debian's postgresql: apt-get install -y postgresql"
)


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    database: str
    user: str
    password: str
    superuser: str = "postgres"

    @property
    def dsn(self) -> str:
        return (
            f"host={self.host} port={self.port} dbname={self.database} "
            f"user={self.user} password={self.password}"
        )

    def config(self, **overrides) -> dict:
        """The YAML-style source config of this server (`type: postgres`)."""
        cfg = {
            "type": "postgres",
            "host": self.host,
            "port": self.port,
            "database": self.database,
            "user": self.user,
            "password": self.password,
            "schema": "public",
        }
        cfg.update(overrides)
        return cfg


def _pg_bindir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")):
            return Path(candidate)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="session")
def postgres_server():
    bindir = _pg_bindir()
    if bindir is None:
        pytest.fail(_PG_MISSING, pytrace=False)

    as_root = os.geteuid() == 0
    prefix: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="dinmo-pg-"))
    if as_root:
        if not shutil.which("runuser"):
            pytest.fail("running as root needs `runuser` (util-linux) to start PostgreSQL", pytrace=False)
        pw = pwd.getpwnam("postgres")  # created by Debian's postgresql package
        os.chown(base, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    datadir, sockdir = base / "data", base / "sock"

    def run(*args: str) -> None:
        proc = subprocess.run([*prefix, *args], check=False, capture_output=True, text=True, cwd=base)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed:\n{proc.stdout}\n{proc.stderr}")

    server = PostgresServer(
        host="127.0.0.1", port=free_port(), database="dinmo_test", user="dinmo", password="s3cret-Pa55word"
    )
    pwfile = base / "pwfile"
    started = False
    try:
        run("mkdir", "-p", str(sockdir))
        pwfile.write_text("postgres-superuser-pw\n")
        if as_root:
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        run(
            str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "--pwfile", str(pwfile),
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
        )  # fmt: skip
        pwfile.unlink()
        run(
            str(bindir / "pg_ctl"), "-D", str(datadir), "-l", str(base / "server.log"), "-w", "-t", "60",
            "-o", f"-p {server.port} -k {sockdir} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )  # fmt: skip
        started = True
        psql = [str(bindir / "psql"), "-h", str(sockdir), "-p", str(server.port), "-U", "postgres", "-v",
                "ON_ERROR_STOP=1", "-d", "postgres", "-c"]  # fmt: skip
        # CREATEDB: tests/test_deployment.py gives Dagster's own tables a database of their own
        run(*psql, f"CREATE ROLE {server.user} LOGIN CREATEDB PASSWORD '{server.password}'")
        run(*psql, f"CREATE DATABASE {server.database} OWNER {server.user}")
        yield server
    finally:
        if started:
            subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w", "stop"],
                check=False,
                capture_output=True,
            )
        shutil.rmtree(base, ignore_errors=True)
