"""The users' workload: one connection per message, ses-relay against Postfix + Dovecot.

WordPress/PHPMailer, msmtp, nodemailer and most legacy applications open a connection for
every message: TLS, AUTH, one MAIL/RCPT/DATA, QUIT. Three profiles, each at 1, 10 and 50
concurrent clients, against both servers in one run (every other cell in reverse order,
so a machine that speeds up or slows down favours neither):

  starttls-plain   587-style: EHLO, STARTTLS, EHLO, AUTH PLAIN, MAIL, RCPT, DATA, QUIT
  implicit-login   465-style: TLS on connect, EHLO, AUTH LOGIN (user, then password), ...
  plain            a trusted network, no TLS, no AUTH: EHLO, MAIL, RCPT, DATA, QUIT

ses-relay: its default configuration (workers 1, delivery concurrency 10) with three
listeners (starttls and implicit with auth required, a plain one trusting loopback), an
ECDSA P-256 certificate as `ses-relay dev-init` makes, the bench user's scrypt hash as
`ses-relay user add` makes it, delivering with sesv2 to bench/fake_ses.py (which closes
idle keep-alive connections as SES does).

Postfix: the private instance of bench/compare.py with three smtpd services to match
(submission: smtpd_tls_security_level=encrypt, smtpd_tls_auth_only, SASL required;
submissions: smtpd_tls_wrappermode; the plain one: permit_mynetworks), the same
certificate and key, a TLS session cache (tlsmgr, btree, an hour), SASL through a private
Dovecot (Debian's dovecot-core: passwd-file with BLF-CRYPT cost 10 hashes, about the cost
of ses-relay's scrypt; auth_cache_size 10M), relaying to smtp-sink. Each server ends at
a do-nothing upstream of its own kind: SES's API for one, SMTP for the other.

The clients (bench/perconn_client.py) run in --procs processes of asyncio with the ssl
module, a full TLS handshake per connection (no session resumption: each PHP request or
msmtp run is a new process), the certificate verified against its CA. Reported per cell:
messages/s (first connect to last 250 after DATA), p50/p99 time from connect to the 250
after DATA, CPU seconds per 1,000 messages of the server (ses-relay's process; Postfix's
master and every child, and Dovecot's, until the upstream has every message), and the
clients' own CPU per 1,000 messages (to show the client is not the bottleneck). One user
for every connection (a site's one account); a few warm-up messages per server and
profile come first, so both have their processes started and any auth cache filled.

    python bench/perconn.py [--messages 400] [--clients 1,10,50] [--procs 2] [--rounds 1]
                            [--profiles starttls-plain,implicit-login,plain]
                            [--targets ses-relay,postfix] [--quick]

Needs root (Postfix, Dovecot, smtp-sink -u nobody) and the postfix and dovecot-core
packages (scripts/install-bench-peers).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import AWS_ENV, cpu_seconds, free_port, wait_port  # noqa: E402
from bench.perconn_client import HOSTNAME, PASSWORD, PROFILES, USER, Job, load  # noqa: E402
from bench.targets import (  # noqa: E402
    Dovecot,
    FakeSES,
    Sink,
    Target,
    postfix_target,
    relay_events,
    relay_target,
)
from relay import users  # noqa: E402
from relay.devsetup import write_self_signed  # noqa: E402

# --- the servers -----------------------------------------------------------------------


def relay_server(work: Path, cert: Path, key: Path, fake: FakeSES, *,
                 workers: int | str = 1, delivery_process: str | None = None,
                 delivery: dict[str, object] | None = None) -> tuple[Target, Path]:
    """*delivery*: more keys for the delivery section (bench/engine_floor.py's variant)."""
    home = work / "ses-relay"
    home.mkdir()
    ports = {p: free_port() for p in PROFILES}
    users_file = home / "users.yaml"
    users.save(users_file, users.UserDB({USER: users.User(USER, users.hash_password(
        PASSWORD))}))
    config = home / "ses-relay.yaml"
    config.write_text(yaml.safe_dump({
        "hostname": HOSTNAME,
        "listeners": [
            {"name": "submission", "address": "127.0.0.1", "port": ports["starttls-plain"],
             "tls": "starttls", "auth": "required"},
            {"name": "submissions", "address": "127.0.0.1", "port": ports["implicit-login"],
             "tls": "implicit", "auth": "required"},
            {"name": "trusted", "address": "127.0.0.1", "port": ports["plain"], "tls": "none",
             "auth": "none", "trusted_networks": ["127.0.0.0/8"]}],
        "tls": {"cert": str(cert), "key": str(key)},
        "users_file": str(users_file),
        "queue": {"directory": str(home / "queue")},
        "suppression": {"database": str(home / "s.sqlite3")},
        "feedback": {"database": str(home / "e.sqlite3")},
        # 50 clients from one address, their closing connections still counted as the
        # next ones open: over the default 50 per IP (Postfix's limit is off as well).
        "limits": {"max_connections_per_ip": 10000},
        "delivery": {"transport": "sesv2", "region": "us-east-1", "endpoint_url": fake.url,
                     **({"process": delivery_process} if delivery_process else {}),
                     **(delivery or {})},
        "workers": workers,
        "log": {"format": "json", "level": "info"}}))
    target = relay_target("ses-relay", config, ports["plain"], fake.count, AWS_ENV,
                          ports=ports, workers=workers)
    for port in ports.values():
        wait_port(port)
    return target, config


def postfix_server(work: Path, cert: Path, key: Path, sink: Sink,
                   dovecot: Dovecot) -> Target:
    ports = {p: free_port() for p in ("starttls-plain", "implicit-login")}
    sasl = ("  -o smtpd_sasl_auth_enable=yes\n"
            "  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n")
    services = (f"127.0.0.1:{ports['starttls-plain']} inet n - n - - smtpd\n"
                "  -o smtpd_tls_security_level=encrypt\n  -o smtpd_tls_auth_only=yes\n"
                + sasl +
                f"127.0.0.1:{ports['implicit-login']} inet n - n - - smtpd\n"
                "  -o smtpd_tls_wrappermode=yes\n" + sasl)
    main = f"""\
smtpd_tls_chain_files = {key}, {cert}
smtpd_tls_session_cache_database = btree:${{data_directory}}/smtpd_scache
smtpd_tls_session_cache_timeout = 3600s
smtpd_sasl_type = dovecot
smtpd_sasl_path = {dovecot.socket}
smtpd_sasl_security_options = noanonymous
"""
    target = postfix_target(sink, services=services, main=main,
                            extra_roots=lambda: [dovecot.pid()], ports=ports)
    target.ports["plain"] = target.port
    return target


# --- the run ---------------------------------------------------------------------------


@dataclass
class Cell:
    profile: str
    clients: int
    target: str
    messages: int
    seconds: float
    latencies: list[float]
    errors: list[str]
    server_cpu: float
    client_cpu: float
    auth_cpu: float = 0.0  # of server_cpu: Dovecot's part (Postfix's SASL server)

    def row(self) -> str:
        lat = sorted(self.latencies) or [0.0]
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        per = 1000 / max(1, self.messages)
        return (f"| {self.profile} | {self.clients} | {self.target} "
                f"| {len(self.latencies) / self.seconds:.1f} "
                f"| {statistics.median(lat) * 1000:.1f} ms | {p99 * 1000:.1f} ms "
                f"| {self.server_cpu * per:.1f}"
                + (f" (Dovecot {self.auth_cpu * per:.1f})" if self.auth_cpu else "")
                + f" | {self.client_cpu * per:.1f} | {len(self.errors)} |")

    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def p50(self) -> float:
        return statistics.median(self.latencies or [0.0])


HEADER = ("| profile | clients | target | msg/s | p50 connect-to-250 | p99 | "
          "server CPU s / 1000 msg | client CPU s / 1000 msg | errors |\n"
          "|---|---|---|---|---|---|---|---|---|")


def run_cell(target: Target, profile: str, clients: int, messages: int, ca: Path,
             procs: int, size: int, auth_cpu: Callable[[], float] = lambda: 0.0) -> Cell:
    delivered0 = target.delivered()
    cpu0, auth0 = target.cpu(), auth_cpu()
    result = load(Job(profile, target.ports[profile], str(ca), clients, messages, size),
                  procs)
    want = delivered0 + len(result["latencies"])
    deadline = time.monotonic() + 300
    while target.delivered() < want and time.monotonic() < deadline:
        time.sleep(0.05)
    return Cell(profile, clients, target.name, messages, result["end"] - result["start"],
                result["latencies"], result["errors"], target.cpu() - cpu0, result["cpu"],
                auth_cpu() - auth0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=400,
                    help="messages per cell (at least 3 per client)")
    ap.add_argument("--clients", default="1,10,50", help="concurrent clients, a list")
    ap.add_argument("--profiles", default=",".join(PROFILES))
    ap.add_argument("--targets", default="ses-relay,postfix")
    ap.add_argument("--procs", type=int, default=2, help="client processes")
    ap.add_argument("--size", type=int, default=5120)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="60 messages per cell")
    ap.add_argument("--workers", default=1, type=lambda v: v if v == "auto" else int(v),
                    help="ses-relay's workers (default 1)")
    ap.add_argument("--delivery-process", choices=("shared", "separate", "auto"),
                    default=None, help="ses-relay's delivery.process (default: its own)")
    args = ap.parse_args()
    if args.quick:
        args.messages = 60
    clients = [int(c) for c in args.clients.split(",")]
    profiles = args.profiles.split(",")
    names = args.targets.split(",")
    print(f"\none connection per message, {args.size} bytes, {os.cpu_count()} CPUs, "
          f"clients in {args.procs} processes", flush=True)
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        os.chmod(work, 0o755)
        cert, key = work / "cert.pem", work / "key.pem"
        write_self_signed(cert, key, HOSTNAME)
        stops: list[Callable[[], None]] = []
        targets: dict[str, Target] = {}
        relay_config: Path | None = None
        auth: dict[str, Callable[[], float]] = {}
        try:
            if "ses-relay" in names:
                fake = FakeSES()
                stops.append(fake.stop)
                targets["ses-relay"], relay_config = relay_server(
                    work, cert, key, fake, workers=args.workers,
                    delivery_process=args.delivery_process)
                stops.insert(0, targets["ses-relay"].stop)
            if "postfix" in names:
                sink = Sink(work)
                stops.append(sink.stop)
                dovecot = Dovecot(work, {USER: PASSWORD})
                stops.append(dovecot.stop)
                targets["postfix"] = postfix_server(work, cert, key, sink, dovecot)
                auth["postfix"] = lambda: cpu_seconds(dovecot.pid())
                stops.insert(0, targets["postfix"].stop)
            for profile in profiles:
                for target in targets.values():  # warm-up: caches filled, processes up
                    run_cell(target, profile, 2, 4, cert, 1, args.size)
            n = 0
            for r in range(args.rounds):
                print(f"\nround {r + 1} of {args.rounds}\n\n{HEADER}", flush=True)
                for profile in profiles:
                    for c in clients:
                        order = list(targets.values())
                        for target in (order if n % 2 == 0 else order[::-1]):
                            cell = run_cell(target, profile, c, max(args.messages, 3 * c),
                                            cert, args.procs, args.size,
                                            auth.get(target.name, lambda: 0.0))
                            cells.append(cell)
                            print(cell.row(), flush=True)
                            for e in sorted(set(cell.errors))[:3]:
                                print(f"    error: {e}")
                        n += 1
            if relay_config is not None:
                targets["ses-relay"].stop()
                stops.remove(targets["ses-relay"].stop)
                events = relay_events(relay_config)
                print(f"\nses-relay log: deferred {events.get('deferred', 0)}, "
                      f"upstream_down {events.get('upstream_down', 0)}; fake SES idle "
                      f"closes {int(fake.stats()['idle_closed'])}")
        finally:
            for stop in stops:
                stop()
    summary(cells, profiles, clients)


def summary(cells: list[Cell], profiles: list[str], clients: list[int]) -> None:
    """ses-relay / Postfix, medians over the rounds: msg/s and p50 (lower is better)."""
    print("\n| profile | clients | msg/s ses-relay / postfix | p50 ses-relay / postfix |"
          "\n|---|---|---|---|")
    for profile in profiles:
        for c in clients:
            mine = [x for x in cells if (x.profile, x.clients) == (profile, c)]
            relay = [x for x in mine if x.target == "ses-relay"]
            postfix = [x for x in mine if x.target == "postfix"]
            if relay and postfix:
                rate = statistics.median(a.rate() / b.rate() for a, b in zip(relay, postfix,
                                                                            strict=True))
                p50 = statistics.median(a.p50() / b.p50() for a, b in zip(relay, postfix,
                                                                          strict=True))
                print(f"| {profile} | {c} | {rate:.2f} | {p50:.2f} |")


if __name__ == "__main__":
    main()
