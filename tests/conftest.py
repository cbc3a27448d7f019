"""Shared fixtures: certificates, a real moto_server, and the relay in-process or as a process.

Every network peer listens on loopback only and is stopped by its fixture. A server binds
port 0 and reports the port it got (the relay in its ``started`` log line, moto_server on
its stdout); a port picked "free" and bound later may meanwhile be taken by one of the
suite's own outgoing connections (a source port), and the test fails "address in use".
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
import trustme
import yaml

from relay import config as config_mod
from relay import users
from relay.app import Relay

USER = "app"
PASSWORD = "correct horse battery"  # test credential
SENDER = "sender@example.com"
REPO = Path(__file__).resolve().parent.parent


def held_port(reuse_port: bool = False) -> socket.socket:
    """A loopback socket bound to a port of its own and not listening: while it is open no
    connection is made to or from that port, and with *reuse_port* the relay's workers
    (SO_REUSEPORT) can still bind it. For ports that must be known before the server
    starts: several processes sharing one port, an endpoint that is down, then up."""
    s = socket.socket()
    if reuse_port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    return s


def port_of(s: socket.socket) -> int:
    return int(s.getsockname()[1])


@pytest.fixture
def hold() -> Iterator[Callable[..., socket.socket]]:
    """held_port(), closed when the test ends."""
    held: list[socket.socket] = []

    def make(reuse_port: bool = False) -> socket.socket:
        held.append(held_port(reuse_port))
        return held[-1]

    yield make
    for s in held:
        s.close()


@pytest.fixture(scope="session")
def refused_url() -> Iterator[str]:
    """An endpoint on loopback that refuses every connection: its port is bound and never
    listens, for the whole session, so no socket a test opens later can take it (a port
    bound and closed may be handed out again)."""
    with held_port() as s:
        yield f"http://127.0.0.1:{port_of(s)}"


def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll *condition* until it is true; fail the test after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {condition}")
        time.sleep(0.02)


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("event") == name]


# --- skips are failures in CI: a skipped test hides a missing install step ---------------


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped and os.environ.get("CI"):
        reporter.write_line(f"CI: {len(skipped)} test(s) skipped; every test must run in CI",
                            red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """Every structured event the in-process relay logs during the test."""
    with structlog.testing.capture_logs() as captured:
        yield captured


# --- TLS -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server.private_key_pem.write_to_path(str(d / "key.pem"))
    server.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    for pem in server.cert_chain_pems[1:]:
        pem.write_to_path(str(d / "cert.pem"), append=True)
    return Certs(ca=d / "ca.pem", cert=d / "cert.pem", key=d / "key.pem")


@pytest.fixture(scope="session")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("users") / "users.yaml"
    db = users.UserDB({}).with_user(users.User(USER, users.hash_password(PASSWORD)))
    users.save(path, db)
    return path


# --- moto_server as SES ------------------------------------------------------------------


class Moto:
    def __init__(self, url: str) -> None:
        self.url = url

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset",
                                                      method="POST"), timeout=10).read()

    def verify(self, *identities: str) -> None:
        import boto3

        ses = boto3.client("ses", region_name="us-east-1", endpoint_url=self.url,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        for identity in identities:
            if "@" in identity:
                ses.verify_email_identity(EmailAddress=identity)
            else:
                ses.verify_domain_identity(Domain=identity)

    def sent(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/moto-api/data.json", timeout=10) as r:
            return list(json.load(r)["ses"]["RawMessage"])

    def wait_sent(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            sent = self.sent()
            if len(sent) >= count or time.monotonic() > deadline:
                return sent
            time.sleep(0.05)


# moto_server -p 0 binds a free port but says which only in werkzeug's banner; moto's
# public ThreadedMotoServer (the same application and request handler) reports it. Run in
# a process of its own, as moto_server is, so its work does not share the tests' GIL.
_MOTO = """
import os, threading
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
os.dup2(2, 1)  # anything printed later goes to the log, not to a pipe nobody reads
threading.Event().wait()
"""


def read_port(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """The port a child process prints as its first line of stdout."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"no port printed within {timeout} s")
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        raise RuntimeError(f"expected a port, got {line!r} (exit code {proc.poll()})")
    return int(line)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-c", _MOTO], stdout=subprocess.PIPE,
                            stderr=log)
    try:
        port = read_port(proc)
        yield Moto(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
        log.close()


@pytest.fixture
def moto(moto_server: Moto) -> Moto:
    moto_server.reset()
    moto_server.verify(SENDER)
    return moto_server


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Fake credentials and no shared config: nothing here may reach real AWS.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


# --- configuration -------------------------------------------------------------------------


@dataclass
class Setup:
    """A relay configuration in a temporary folder. Its listeners are on port 0: the ports
    the relay got are in ``ports`` once it has started (start_relay, start_process)."""

    path: Path
    doc: dict[str, Any]
    certs: Certs
    # Listener name (or "metrics", "feedback"): the port the running relay bound.
    ports: dict[str, int] = field(default_factory=dict)

    def port(self, name: str) -> int:
        assert name in self.ports, f"no port {name!r} yet: start the relay first"
        return self.ports[name]

    @property
    def starttls_port(self) -> int:
        return self.port("submission")

    @property
    def implicit_port(self) -> int:
        return self.port("submissions")

    @property
    def queue_dir(self) -> Path:
        return Path(self.doc["queue"]["directory"])

    @property
    def outbox_dir(self) -> Path:
        return Path(self.doc["delivery"]["outbox_dir"])

    def load(self) -> config_mod.Config:
        return config_mod.load(self.path)

    def write(self) -> None:
        self.path.write_text(yaml.safe_dump(self.doc))


@pytest.fixture
def make_setup(tmp_path: Path, certs: Certs, users_file: Path) -> Callable[..., Setup]:
    def make(transport: str = "outbox", **delivery: Any) -> Setup:
        doc: dict[str, Any] = {
            "hostname": "relay.test",
            "listeners": [
                {"name": "submission", "address": "127.0.0.1", "port": 0,
                 "tls": "starttls", "auth": "required"},
                {"name": "submissions", "address": "127.0.0.1", "port": 0,
                 "tls": "implicit", "auth": "required"},
            ],
            "tls": {"cert": str(certs.cert), "key": str(certs.key)},
            "users_file": str(users_file),
            "queue": {"directory": str(tmp_path / "queue"), "max_age": "1h",
                      "min_backoff": "0.2s", "max_backoff": "1s"},
            "delivery": {"transport": transport, "outbox_dir": str(tmp_path / "outbox"),
                         "timeout": "5s", **delivery},
            "log": {"format": "json", "level": "info"},
            "suppression": {"database": str(tmp_path / "suppression.sqlite3")},
            "feedback": {"database": str(tmp_path / "events.sqlite3")},
        }
        setup = Setup(tmp_path / "ses-relay.yaml", doc, certs)
        setup.write()
        return setup

    return make


@pytest.fixture
def setup(make_setup: Callable[..., Setup]) -> Setup:
    return make_setup()


# --- the relay, in-process (a server object on its own loop in a thread) -----------------


@dataclass
class InProcess:
    relay: Relay
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    stopped: bool = field(default=False)

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.call(self.relay.stop())
            # Let connections that are closing finish (a TLS shutdown waits on its peer),
            # or their transports are collected later, unclosed, in whichever test runs
            # then. The loop's selector is private, but this is the test harness.
            self.call(_settle(self.loop))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


async def _settle(loop: asyncio.AbstractEventLoop, timeout: float = 3.0) -> None:
    selector = loop._selector  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while len(selector.get_map()) > 1 and time.monotonic() < deadline:  # 1: the self-pipe
        await asyncio.sleep(0.02)


@pytest.fixture
def start_relay() -> Iterator[Callable[[Setup], InProcess]]:
    running: list[InProcess] = []

    def start(setup: Setup) -> InProcess:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        inproc = InProcess(Relay(setup.load()), loop, thread)
        running.append(inproc)
        inproc.call(inproc.relay.start())
        setup.ports = {**inproc.relay.bound_ports(), **inproc.relay.http_ports()}
        return inproc

    yield start
    for r in running:
        r.stop()
        r.loop.close()


# --- the relay as a real process ---------------------------------------------------------


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def events(self) -> list[dict[str, Any]]:
        out = []
        text = self.log_path.read_text()
        complete = text[:text.rfind("\n") + 1]  # not a line the relay is writing right now
        for line in complete.splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def wait_event(self, name: str, timeout: float = 15.0, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exited = self.proc.poll() is not None
            for e in self.events():
                if e.get("event") == name and all(e.get(k) == v for k, v in match.items()):
                    return e
            if exited:
                break  # and all it logged was read: no use waiting
            time.sleep(0.05)
        raise AssertionError(f"no {name} event {match} in log:\n{self.log_path.read_text()}")

    def ports(self) -> dict[str, int]:
        """Once started: the port of each listener and HTTP site (by name) it bound."""
        self.wait_event("started")  # its listeners are bound (each worker logs it)
        if any(e.get("event") == "supervisor_started" for e in self.events()):
            # Workers (delivery.process: separate on this machine, or workers > 1): the
            # HTTP sites are in the first that delivers, the SMTP listeners in the others.
            self.wait_event("workers_ready")
        ports: dict[str, int] = {}
        for started in (e for e in self.events() if e.get("event") == "started"):
            ports |= {**started["listeners"], **started["http"]}
        return ports

    def kill(self) -> None:
        """SIGKILL for the relay and its workers at once, as systemd's KillMode=
        control-group does: no shutdown code runs anywhere."""
        if self.proc.poll() is None:
            try:
                leader = os.getpgid(self.proc.pid) == self.proc.pid
            except ProcessLookupError:
                leader = False
            if leader:  # started by start_process, in a session of its own
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.kill()
            self.proc.wait(10)

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            return self.proc.wait(15)
        return int(self.proc.returncode)


def ses_relay_exe() -> str:
    exe = Path(sys.executable).parent / "ses-relay"
    assert exe.exists(), "the ses-relay command is not installed (pip install -e .)"
    return str(exe)


@pytest.fixture
def start_process(tmp_path: Path) -> Iterator[Callable[[Setup], Process]]:
    running: list[Process] = []

    def start(setup: Setup) -> Process:
        log_path = tmp_path / f"relay-{len(running)}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen([ses_relay_exe(), "serve", "--config", str(setup.path)],
                                    stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # a group of its own: kill()
        p = Process(proc, log_path)
        running.append(p)
        setup.ports = p.ports()
        return p

    yield start
    for p in running:
        p.kill()


# --- systemd's side of sd_notify ----------------------------------------------------------


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.got: list[bytes] = []

    def wait_for(self, field: bytes) -> None:
        """Receive until a datagram carries *field* (READY=1, WATCHDOG=1...)."""
        while not any(field in m for m in self.got):
            self.got.append(self.sock.recv(4096))


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    """NOTIFY_SOCKET and a 1 s WATCHDOG_USEC for the relay processes a test starts."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(20)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.setenv("WATCHDOG_USEC", "1000000")
        yield NotifySocket(sock)


# --- PostgreSQL (tests/peers/postgres.py): one server per session, a database per test ----
_PG_DATABASES = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    import tempfile

    from peers.postgres import postgres_server

    # Not tmp_path_factory: its folders are 0700 root's, and the server runs as postgres.
    with tempfile.TemporaryDirectory(prefix="pg-") as directory, \
            postgres_server(Path(directory)) as server:
        yield server


@pytest.fixture
def pg_dsn(pg_server: Any) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped after the test."""
    pg_server.start()  # a test that stopped it (an outage) may have failed before start()
    name = f"t{os.getpid()}_{next(_PG_DATABASES)}"
    pg_server.drop_database(name)
    yield pg_server.create_database(name)
    pg_server.start()
    pg_server.drop_database(name)
