"""Real servers for the system tests, from Debian's packages, on 127.0.0.1 and free ports, started and stopped by
the tests: PostgreSQL (a throwaway cluster) and Redis (no persistence).

PostgreSQL will not run as root, and the tests do (CI too): the cluster is created and run as the `postgres`
user that Debian's package creates (`runuser`), in a folder of its own outside pytest's root-only tmp folders.
Authentication is `trust` on 127.0.0.1 only: a test cluster, never a deployment's.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg2

from tests.sites import free_port

PG_USER = "postgres"  # created by Debian's postgresql package
PG_DATABASE = "mebot"


def postgres_bin_dir() -> Path:
    """The newest PostgreSQL server's bin folder from Debian's packages (`make setup` installs them)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if not found:
        raise RuntimeError("no PostgreSQL server: `make setup` installs Debian's postgresql package")
    return Path(found[-1]).parent


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server: `make setup` installs Debian's redis-server package")
    return found


def _wait_for_port(port: int, process: subprocess.Popen | None, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} before it listened on {port}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s")


@dataclass
class Postgres:
    root: Path
    port: int
    bin_dir: Path

    database: str = PG_DATABASE

    @property
    def url(self) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{self.database}"

    @property
    def sqlalchemy_url(self) -> str:
        """The same database as SQLAlchemy names it with the psycopg2 driver (what dagster-postgres needs)."""
        return self.url.replace("postgresql://", "postgresql+psycopg2://", 1)

    def new_database(self, name: str) -> Postgres:
        """An empty database `name` on this server, as a Postgres whose URLs name it."""
        conn = psycopg2.connect(self.url)
        conn.autocommit = True  # CREATE DATABASE runs outside a transaction
        with conn.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return replace(self, database=name)

    @property
    def data_dir(self) -> Path:
        return self.root / "cluster"

    def _as_postgres(self, *command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["runuser", "-u", PG_USER, "--", *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
        )

    def start(self) -> None:
        user = pwd.getpwnam(PG_USER)
        os.chown(self.root, user.pw_uid, user.pw_gid)
        initdb = self._as_postgres(
            str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", PG_USER, "--auth=trust", "-E", "UTF8"
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed: {initdb.stderr[-2000:]}")
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        started = self._as_postgres(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.root / "server.log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip
        if started.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"pg_ctl start failed: {started.stderr[-1000:]} {log}")
        _wait_for_port(self.port, None, "postgres")
        created = self._as_postgres(
            str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, PG_DATABASE
        )
        if created.returncode != 0:
            raise RuntimeError(f"createdb failed: {created.stderr[-1000:]}")

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._as_postgres(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> Postgres:
    """A fresh PostgreSQL cluster with an empty database `mebot`, on a free port of 127.0.0.1."""
    root = Path(tempfile.mkdtemp(prefix="mebot-pg-"))  # not under pytest's tmp: postgres could not enter it
    server = Postgres(root=root, port=free_port(), bin_dir=postgres_bin_dir())
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


@dataclass
class Redis:
    process: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def start_redis(log_dir: Path) -> Redis:
    """redis-server on a free port of 127.0.0.1, nothing saved to disk."""
    port = free_port()
    log = open(log_dir / "redis.log", "wb")  # noqa: SIM115 - the server's output, for as long as it runs
    command = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=log_dir)
    server = Redis(process=process, port=port)
    try:
        _wait_for_port(port, process, "redis-server")
    except BaseException:
        server.stop()
        raise
    return server
