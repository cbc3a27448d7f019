"""The servers the comparisons start and load: ses-relay as a process, a private Postfix
(optionally with SASL through a private Dovecot), smtp-sink and bench/fake_ses.py as their
upstreams. Shared by bench/compare.py (smtp-source) and bench/perconn.py (one connection
per message, TLS and AUTH).

Each server runs in a folder of its own, listens on loopback on a free port, and is
stopped by the Target's stop(); ``roots`` gives the process trees whose CPU and memory
are the server's (for Postfix: master and every child; with SASL, Dovecot's too).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import cpu_seconds, free_port, pss_mb, wait_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass
class Target:
    name: str
    port: int
    roots: Callable[[], list[int]]
    delivered: Callable[[], int]
    stop: Callable[[], None]
    ports: dict[str, int] = field(default_factory=dict)  # more listeners, by role

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.roots())

    def pss(self) -> float:
        return sum(pss_mb(pid) for pid in self.roots())


# --- upstreams -------------------------------------------------------------------------


class Sink:
    """smtp-sink, counting what it received: Postfix's upstream, and the smtp transport's."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.out = work / f"sink-{self.port}.out"
        self.proc = subprocess.Popen(["smtp-sink", "-u", "nobody", "-c",
                                      f"127.0.0.1:{self.port}", "1024"],
                                     stdout=self.out.open("wb"), stderr=subprocess.STDOUT)
        wait_port(self.port)

    def count(self) -> int:
        found = re.findall(rb"mesg=(\d+)", self.out.read_bytes()[-200:])
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class FakeSES:
    """bench/fake_ses.py in its own process: SESv2 at ``url``, closing idle keep-alive
    connections after *idle_timeout* seconds as SES's front end does."""

    def __init__(self, *, idle_timeout: float = 4.0, latency: float = 0.0,
                 close_after: int = 0) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "fake_ses.py"),
                                      "--port", str(self.port),
                                      "--idle-timeout", str(idle_timeout),
                                      "--latency", str(latency),
                                      "--close-after", str(close_after)])
        wait_port(self.port)
        self.url = f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, float]:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=5) as r:
            stats: dict[str, float] = json.load(r)
            return stats

    def count(self) -> int:
        return int(self.stats()["accepted_rcpts"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# --- ses-relay -------------------------------------------------------------------------


def relay_target(name: str, config: Path, port: int, delivered: Callable[[], int],
                 env: dict[str, str], *, workers: int | str = 1,
                 ports: dict[str, int] | None = None) -> Target:
    """``ses-relay serve`` with *config*, once it listens on *port*.

    The relay imported is this checkout's (PYTHONPATH), not whichever one the virtualenv's
    editable install points at: a worktree sharing another checkout's virtualenv measures
    its own code."""
    log = (config.parent / "log").open("wb")
    path = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen([BIN / "ses-relay", "serve", "--config", str(config)],
                            env={**env, "PYTHONPATH": path}, stdout=log,
                            stderr=subprocess.STDOUT)
    wait_port(port)
    if workers != 1:
        time.sleep(2)  # the other workers bind the port too

    def stop() -> None:
        proc.terminate()
        proc.wait(60)
        log.close()

    return Target(name, port, lambda: [proc.pid], delivered, stop, ports or {})


def relay_events(config: Path) -> dict[str, int]:
    """How often each event is in a relay's log (JSON lines), e.g. deferred, upstream_down;
    and each deferral's error, as "deferred: <error>"."""
    counts: dict[str, int] = {}
    for line in (config.parent / "log").read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        event = entry.get("event")
        if isinstance(event, str):
            counts[event] = counts.get(event, 0) + 1
            if event == "deferred":
                key = f"deferred: {str(entry.get('error'))[:100]}"
                counts[key] = counts.get(key, 0) + 1
    return counts


# --- Postfix ---------------------------------------------------------------------------

POSTFIX_MASTER = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup     unix  n - n 60    1 pickup
cleanup    unix  n - n -     0 cleanup
qmgr       unix  n - n 300   1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n -     - trivial-rewrite
bounce     unix  - - n -     0 bounce
defer      unix  - - n -     0 bounce
trace      unix  - - n -     0 bounce
verify     unix  - - n -     1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -     - proxymap
smtp       unix  - - n -     - smtp
relay      unix  - - n -     - smtp
showq      unix  n - n -     - showq
error      unix  - - n -     - error
retry      unix  - - n -     - error
discard    unix  - - n -     - discard
anvil      unix  - - n -     1 anvil
scache     unix  - - n -     1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


def postfix_target(sink: Sink, *, services: str = "", main: str = "",
                   extra_roots: Callable[[], list[int]] | None = None,
                   ports: dict[str, int] | None = None) -> Target:
    """A private Postfix with smtpd on a free port (mynetworks may relay), relaying
    everything to *sink*; *services* are more master.cf lines, *main* more main.cf ones."""
    base = Path(tempfile.mkdtemp(prefix="ses-relay-bench-postfix-"))
    base.chmod(0o755)
    conf, queue, data, logs = base / "conf", base / "queue", base / "data", base / "log"
    for d in (conf, queue, data, logs):
        d.mkdir()
    shutil.chown(data, "postfix", "postfix")
    shutil.chown(logs, "postfix", "postfix")
    port = free_port()
    (conf / "master.cf").write_text(POSTFIX_MASTER.format(port=port) + services)
    (conf / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.localdomain
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{sink.port}
default_process_limit = 200
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
default_destination_concurrency_limit = 20
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 5s
maillog_file = {logs}/postfix.log
maillog_file_prefixes = {base}
message_size_limit = 4194304
""" + main)
    system = Path("/etc/postfix/main.cf")
    system.parent.mkdir(exist_ok=True)
    text = system.read_text() if system.exists() else ""
    if str(conf) not in text:
        system.write_text(text + f"\nalternate_config_directories = {conf}\n")
    subprocess.run(["postfix", "-c", str(conf), "check"], check=True)
    subprocess.run(["postfix", "-c", str(conf), "start"], check=True, capture_output=True)
    wait_port(port)
    for other in (ports or {}).values():
        wait_port(other)
    pid = int((queue / "pid" / "master.pid").read_text().split()[0])

    def stop() -> None:
        subprocess.run(["postfix", "-c", str(conf), "stop"], capture_output=True)
        time.sleep(1)
        system.write_text(text)
        shutil.rmtree(base, ignore_errors=True)

    def roots() -> list[int]:
        return [pid, *(extra_roots() if extra_roots else [])]

    return Target("postfix", port, roots, sink.count, stop, ports or {})


# --- Dovecot, as Postfix's SASL server -------------------------------------------------


class Dovecot:
    """A private Dovecot that only authenticates (no IMAP/POP3), for Postfix's
    smtpd_sasl_type = dovecot: a passwd-file with *scheme* hashes and the auth cache on,
    as a careful admin sets it up (auth_cache_size 10M, an hour's TTL)."""

    def __init__(self, work: Path, users: dict[str, str], *, scheme: str = "BLF-CRYPT",
                 rounds: int = 10, cache: str = "10M") -> None:
        self.base = work / "dovecot"
        self.base.mkdir()
        self.base.chmod(0o755)
        passwd = self.base / "passwd"
        passwd.write_text("".join(f"{user}:{self.hash(password, scheme, rounds)}\n"
                                  for user, password in users.items()))
        passwd.chmod(0o640)
        shutil.chown(passwd, "root", "dovecot")
        self.socket = self.base / "auth"
        self.config = self.base / "dovecot.conf"
        self.config.write_text(f"""\
protocols =
base_dir = {self.base}/run
state_dir = {self.base}/state
log_path = {self.base}/dovecot.log
ssl = no
auth_mechanisms = plain login
auth_cache_size = {cache}
auth_cache_ttl = 1 hour
passdb {{
  driver = passwd-file
  args = scheme={scheme} {passwd}
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service auth {{
  unix_listener {self.socket} {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
""")
        subprocess.run(["dovecot", "-c", str(self.config)], check=True)
        deadline = time.monotonic() + 20
        while not self.socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.socket.exists():
            raise TimeoutError(f"no Dovecot auth socket at {self.socket}")

    @staticmethod
    def hash(password: str, scheme: str, rounds: int) -> str:
        return subprocess.run(["doveadm", "pw", "-s", scheme, "-r", str(rounds), "-p",
                               password], check=True, capture_output=True,
                              text=True).stdout.strip()

    def pid(self) -> int:
        return int((self.base / "run" / "master.pid").read_text().split()[0])

    def stop(self) -> None:
        subprocess.run(["doveadm", "-c", str(self.config), "stop"], capture_output=True)
