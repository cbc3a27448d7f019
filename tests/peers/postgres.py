"""A private PostgreSQL server for the tests and benchmarks, on a unix socket only.

Debian's ``postgresql`` package (scripts/install-peers) gives /usr/lib/postgresql/15/bin
(the newest such folder is used; $PG_BIN overrides);
the system cluster is not used. ``initdb`` makes a fresh cluster in a folder of the
caller's, ``postgres`` listens on no TCP port at all (``listen_addresses=''``: PostgreSQL
cannot bind port 0 and report the port it got) and on a socket in that folder, so nothing
is raced for and several servers can run side by side. PostgreSQL refuses to run as root:
as root (CI) the cluster belongs to the ``postgres`` user that the package creates, and
the server runs as that user (``runuser``).

Usage (tests/conftest.py's ``pg_server`` fixture, bench/fleet.py)::

    with postgres_server(Path(tempfile.mkdtemp())) as pg:
        pg.create_database("events")
        dsn = pg.dsn("events")      # postgresql:///events?host=...&user=postgres
        pg.stop(); pg.start()       # an outage, and the server back with its data

A missing PostgreSQL raises PostgresMissing: the test fails, it is not skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote


def _bin() -> Path:
    """$PG_BIN, else the newest /usr/lib/postgresql/N/bin (15 on Debian 12)."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


BIN = _bin()
SUPERUSER = "postgres"
# Durability is not what the tests measure: a cluster made for one session.
_SETTINGS = ("listen_addresses=''", "fsync=off", "synchronous_commit=off",
             "full_page_writes=off", "max_connections=200", "shared_buffers=32MB")


class PostgresMissing(RuntimeError):
    pass


class PostgresServer:
    def __init__(self, directory: Path) -> None:
        if not (BIN / "postgres").exists():
            raise PostgresMissing(f"{BIN}/postgres not found: run scripts/install-peers "
                                  "(Debian package postgresql)")
        self.directory = directory
        self.data = directory / "data"
        self.socket_dir = directory / "socket"
        self.logfile = directory / "postgres.log"
        self._as: list[str] = []
        if os.geteuid() == 0:  # postgres will not run as root
            if shutil.which("runuser") is None:
                raise PostgresMissing("running as root needs runuser (util-linux)")
            self._as = ["runuser", "-u", SUPERUSER, "--"]
        self.running = False

    # -- the public API (bench/fleet.py uses it too)

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URI for *dbname* over the private socket, as feedback.database takes it."""
        return (f"postgresql:///{quote(dbname)}?host={quote(str(self.socket_dir), safe='/')}"
                f"&user={SUPERUSER}")

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its DSN."""
        self._psql("postgres", f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        self._psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def start(self) -> None:
        if self.running:
            return
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        options = " ".join(f"-c {s}" for s in _SETTINGS) + f" -k {self.socket_dir}"
        self._run(str(BIN / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data),
                  "-l", str(self.logfile), "-o", options)
        self.running = True

    def stop(self) -> None:
        """A fast shutdown: clients are cut off, the data stays for start()."""
        if not self.running:
            return
        self._run(str(BIN / "pg_ctl"), "stop", "-w", "-t", "60", "-m", "fast",
                  "-D", str(self.data))
        self.running = False

    def kill(self) -> None:
        """An immediate shutdown: gone without a checkpoint, recovered by start()."""
        if self.running:
            self._run(str(BIN / "pg_ctl"), "stop", "-w", "-t", "60", "-m", "immediate",
                      "-D", str(self.data))
            self.running = False

    # -- internals

    def _initdb(self) -> None:
        for d in (self.directory, self.socket_dir):
            d.mkdir(parents=True, exist_ok=True)
        if self._as:
            for d in (self.directory, self.socket_dir):
                shutil.chown(d, SUPERUSER, SUPERUSER)
            self._check_reachable()
        self._run(str(BIN / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                  "--auth=trust", "--no-sync", "--encoding=UTF8", "--locale=C.UTF-8")

    def _check_reachable(self) -> None:
        probe = subprocess.run([*self._as, "test", "-w", str(self.directory)],
                               check=False, capture_output=True)
        if probe.returncode != 0:
            raise PostgresMissing(
                f"the {SUPERUSER} user cannot write to {self.directory}: give a folder whose "
                "parents it may traverse (tempfile.mkdtemp(), not pytest's tmp_path)")

    def _psql(self, dbname: str, sql: str) -> None:
        subprocess.run([str(BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                        "-h", str(self.socket_dir), "-U", SUPERUSER, "-d", dbname,
                        "-c", sql], check=True, capture_output=True, timeout=60)

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as, *args], check=False, capture_output=True,
                              timeout=120, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() \
                else ""
            raise RuntimeError(f"{Path(args[0]).name} {args[1] if len(args) > 1 else ''} "
                               f"failed: {done.stderr.decode(errors='replace')}\n{log}")


@contextmanager
def postgres_server(directory: Path) -> Iterator[PostgresServer]:
    """A started server in *directory* (made if missing), stopped at the end."""
    server = PostgresServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.kill()
