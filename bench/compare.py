"""ses-relay against Postfix, side by side, on this machine (make bench).

The same smtp-source load goes to three targets in one run, so machine noise cancels:

  sesv2    ses-relay delivering with the SESv2 API to bench/fake_ses.py (no rate limit)
  smtp     ses-relay delivering with its smtp transport to smtp-sink
  postfix  a private Postfix instance relaying to smtp-sink (fsyncing its queue, as
           ses-relay does)

For each: messages/s accepted (smtp-source's wall time), messages/s delivered end to end
(until the upstream has them all), p50/p99 time from connect to the 250 after DATA (a
probe session running beside the load), peak RSS and CPU seconds per 1,000 messages of
the whole target (for Postfix: master and every child process).

    python bench/compare.py [--messages 5000] [--sessions 50] [--size 5120] [--only sesv2]
                            [--workers auto] [--rounds 1]

Needs root (Postfix, smtp-sink -u nobody) and the postfix package (make peers).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    AWS_ENV,
    cpu_seconds,
    free_port,
    pss_mb,
    wait_port,
    write_relay_config,
)

BIN = Path(sys.executable).parent


# --- targets ---------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int
    root_pid: Callable[[], int]
    delivered: Callable[[], int]
    stop: Callable[[], None]


class Sink:
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


def relay_target(name: str, work: Path, delivery: dict[str, object], delivered: Callable[
        [], int], env: dict[str, str], workers: int | str = "auto") -> Target:
    home = work / name
    home.mkdir()
    port = free_port()
    config = write_relay_config(home, port, {"concurrency": 20, **delivery}, workers)
    proc = subprocess.Popen([BIN / "ses-relay", "serve", "--config", str(config)],
                            env=env, stdout=(home / "log").open("wb"), stderr=subprocess.STDOUT)
    wait_port(port)
    if workers != 1:
        time.sleep(2)  # the other workers bind the port too

    def stop() -> None:
        proc.terminate()
        proc.wait(60)

    return Target(name, port, lambda: proc.pid, delivered, stop)


POSTFIX_MASTER = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup     unix  n - n 60    1 pickup
cleanup    unix  n - n -     0 cleanup
qmgr       unix  n - n 300   1 qmgr
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


def postfix_target(work: Path, sink: Sink) -> Target:
    """A private Postfix with smtpd on a free port, relaying everything to the sink."""
    base = Path(tempfile.mkdtemp(prefix="ses-relay-bench-postfix-"))
    base.chmod(0o755)
    conf, queue, data, logs = base / "conf", base / "queue", base / "data", base / "log"
    for d in (conf, queue, data, logs):
        d.mkdir()
    shutil.chown(data, "postfix", "postfix")
    shutil.chown(logs, "postfix", "postfix")
    port = free_port()
    (conf / "master.cf").write_text(POSTFIX_MASTER.format(port=port))
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
""")
    system = Path("/etc/postfix/main.cf")
    system.parent.mkdir(exist_ok=True)
    text = system.read_text() if system.exists() else ""
    if str(conf) not in text:
        system.write_text(text + f"\nalternate_config_directories = {conf}\n")
    subprocess.run(["postfix", "-c", str(conf), "check"], check=True)
    subprocess.run(["postfix", "-c", str(conf), "start"], check=True, capture_output=True)
    wait_port(port)
    pid = int((queue / "pid" / "master.pid").read_text().split()[0])

    def stop() -> None:
        subprocess.run(["postfix", "-c", str(conf), "stop"], capture_output=True)
        time.sleep(1)
        system.write_text(text)
        shutil.rmtree(base, ignore_errors=True)

    return Target("postfix", port, lambda: pid, sink.count, stop)


# --- the load ------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    messages: int
    accepted_s: float
    delivered_s: float
    latencies: list[float] = field(default_factory=list)
    peak_rss: float = 0.0
    cpu: float = 0.0


def probe(port: int, size: int, stop: threading.Event, out: list[float]) -> None:
    """One session after another beside the load: connect to 250 after DATA."""
    line = b"y" * 76 + b"\r\n"
    body = b"Subject: probe\r\n\r\n" + line * max(1, (size - 20) // len(line))
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
                s.sendmail("probe@example.com", ["sink@example.net"], body)
            out.append(time.perf_counter() - t0)
        except (OSError, smtplib.SMTPException):
            pass
        time.sleep(0.02)


def run_load(target: Target, messages: int, sessions: int, size: int) -> Result:
    root = target.root_pid()
    before_delivered = target.delivered()
    cpu0 = cpu_seconds(root)
    peak = [pss_mb(root)]
    done = threading.Event()
    latencies: list[float] = []

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], pss_mb(root))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    prober = threading.Thread(target=probe, args=(target.port, size, done, latencies),
                              daemon=True)
    sampler.start()
    prober.start()
    t0 = time.perf_counter()
    subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size),
                    "-f", "load@example.com", "-t", "sink@example.net",
                    f"127.0.0.1:{target.port}"], check=True, timeout=1800)
    accepted = time.perf_counter() - t0
    done.set()
    prober.join(60)
    want = before_delivered + messages + len(latencies)
    deadline = time.monotonic() + 600
    while target.delivered() < want and time.monotonic() < deadline:
        peak[0] = max(peak[0], pss_mb(root))
        time.sleep(0.05)
    delivered = time.perf_counter() - t0
    sampler.join(5)
    return Result(target.name, messages, accepted, delivered, latencies, peak[0],
                  cpu_seconds(root) - cpu0)


def fake_ses_count(url: str) -> Callable[[], int]:
    def count() -> int:
        with urllib.request.urlopen(f"{url}/stats", timeout=5) as r:
            return int(json.load(r)["accepted_rcpts"])
    return count


def run_target(name: str, work: Path, args: argparse.Namespace) -> Result:
    """Start one target in its own folder, load it, stop it."""
    stops: list[Callable[[], None]] = []
    try:
        if name == "sesv2":
            port = free_port()
            fake = subprocess.Popen([sys.executable, str(ROOT / "bench" / "fake_ses.py"),
                                     "--port", str(port)])
            stops.append(lambda: (fake.terminate(), fake.wait(10)))
            wait_port(port)
            url = f"http://127.0.0.1:{port}"
            target = relay_target("sesv2", work, {"transport": "sesv2", "endpoint_url": url},
                                  fake_ses_count(url), AWS_ENV, args.workers)
        else:
            sink = Sink(work)
            stops.append(sink.stop)
            if name == "smtp":
                target = relay_target("smtp", work, {
                    "transport": "smtp", "smtp": {"host": "127.0.0.1", "port": sink.port,
                                                  "tls": "none"}},
                    sink.count, AWS_ENV, args.workers)
            else:
                target = postfix_target(work, sink)
        stops.insert(0, target.stop)
        return run_load(target, args.messages, args.sessions, args.size)
    finally:
        for stop in stops:
            stop()


def row(name: str, accepted: float, delivered: float, p50: float, p99: float, rss: float,
        cpu: float) -> str:
    return (f"| {name} | {accepted:.0f} | {delivered:.0f} | {p50 * 1000:.1f} ms "
            f"| {p99 * 1000:.1f} ms | {rss:.0f} MB | {cpu:.1f} |")


def measures(r: Result) -> tuple[float, float, float, float, float, float]:
    lat = sorted(r.latencies) or [0.0]
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return (r.messages / r.accepted_s, r.messages / r.delivered_s, statistics.median(lat),
            p99, r.peak_rss, r.cpu / r.messages * 1000)


HEADER = ("| target | accepted msg/s | delivered msg/s | p50 connect-to-250 | p99 | peak RSS | "
          "CPU s / 1000 msg |\n|---|---|---|---|---|---|---|")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--size", type=int, default=5120)
    ap.add_argument("--only", action="append", choices=("sesv2", "smtp", "postfix"))
    ap.add_argument("--workers", default="auto", type=lambda v: v if v == "auto" else int(v),
                    help="ses-relay's workers setting (default auto: one per CPU)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every target this many times, in turn (every other round in "
                         "reverse order); medians at the end (this machine's speed drifts "
                         "by 15%% or more within minutes)")
    args = ap.parse_args()
    names = args.only or ["sesv2", "smtp", "postfix"]
    results: dict[str, list[Result]] = {name: [] for name in names}
    print(f"\n{args.messages} messages of {args.size} bytes, {args.sessions} sessions "
          f"(smtp-source), {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory() as d:
        for n in range(args.rounds):
            work = Path(d) / f"round{n}"
            work.mkdir()
            # Every other round in reverse order: a machine that speeds up or slows down
            # during a round favours neither end of the list.
            for name in (names if n % 2 == 0 else names[::-1]):
                results[name].append(run_target(name, work, args))
            if args.rounds > 1:
                print(f"\nround {n + 1} of {args.rounds}\n\n{HEADER}")
                for name in names:
                    print(row(name, *measures(results[name][-1])), flush=True)
    print(f"\n{'median of ' + str(args.rounds) + ' rounds' if args.rounds > 1 else 'result'}"
          f"\n\n{HEADER}")
    for name in names:
        per_round = [measures(r) for r in results[name]]
        print(row(name, *(statistics.median(m[i] for m in per_round) for i in range(6))))
    if "postfix" in names and args.rounds > 1:
        for name in (n for n in names if n != "postfix"):
            ratios = [measures(a)[1] / measures(b)[1]
                      for a, b in zip(results[name], results["postfix"], strict=True)]
            print(f"\n{name} / postfix, delivered msg/s, each round: "
                  f"{' '.join(f'{x:.2f}' for x in ratios)} (median "
                  f"{statistics.median(ratios):.2f})")


if __name__ == "__main__":
    main()
