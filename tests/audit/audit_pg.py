"""A real PostgreSQL for the tests: Debian's binaries, initdb into a temporary folder, pg_ctl on a free loopback
port; as the ``postgres`` user when the tests run as root (PostgreSQL refuses to run as root)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from app_harness import free_port
from sqlalchemy import create_engine, text

from app.audit import store

BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def find_bin() -> Path | None:
    for directory in BIN_DIRS:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and shutil.which("initdb") else None


class Postgres:
    def __init__(self, bin_dir: Path, *, fsync: bool = False) -> None:
        self.fsync = fsync  # off for tests (speed); on where commit cost is measured (benchmarks)
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="cxr-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o700)

    @property
    def url(self) -> str:
        return f"postgresql://cxr@127.0.0.1:{self.port}/cxr_audit"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [*args]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=120, cwd=self.root)

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "cxr", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        self.start()
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "cxr", "cxr_audit")

    def start(self) -> None:
        fsync = "on" if self.fsync else "off"
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync={fsync}"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                  "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def running(self) -> bool:
        return self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "status", check=False).returncode == 0

    def destroy(self) -> None:
        if self.data.exists() and self.running():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def fresh_pg_database(server: Postgres) -> str:
    """A new, empty database on the session's server; returns its URL."""
    name = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(store.resolve_url(server.url, Path()), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return server.url.rsplit("/", 1)[0] + "/" + name
