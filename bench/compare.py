"""ses-relay against Postfix, side by side, on this machine (make bench).

The same smtp-source load goes to three targets in one run, so machine noise cancels:

  sesv2    ses-relay delivering with the SESv2 API to bench/fake_ses.py (no rate limit;
           it closes keep-alive connections idle for --ses-idle-timeout, 4 s, as SES does)
  smtp     ses-relay delivering with its smtp transport to smtp-sink
  postfix  a private Postfix instance relaying to smtp-sink (fsyncing its queue, as
           ses-relay does)

ses-relay runs in its default configuration (workers 1, delivery concurrency 10, the
account's send rate read from the fake's GetAccount) but for what smtp-source needs: a
plain listener open to loopback, and no per-IP connection limit (Postfix's is off too).
Before issue 16 this ran ses-relay with `workers: auto` (2 here) and `concurrency: 20`,
settings a user would not have, against a fake SES that never closed a connection.

For each: messages/s accepted (smtp-source's wall time), messages/s delivered end to end
(until the upstream has them all), p50/p99 time from connect to the 250 after DATA (a
probe session running beside the load), peak RSS and CPU seconds per 1,000 messages of
the whole target (for Postfix: master and every child process).

    python bench/compare.py [--messages 5000] [--sessions 50] [--size 5120] [--only sesv2]
                            [--workers 1] [--rounds 1] [--ses-idle-timeout 4]
                            [--ses-latency 0] [--ses-close-after 0]

Needs root (Postfix, smtp-sink -u nobody) and the postfix package (make peers).
"""

from __future__ import annotations

import argparse
import os
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import AWS_ENV, cpu_seconds, free_port, write_relay_config  # noqa: E402
from bench.targets import (  # noqa: E402
    FakeSES,
    Sink,
    Target,
    postfix_target,
    relay_events,
    relay_target,
)

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
    notes: dict[str, float] = field(default_factory=dict)  # log events, upstream's cost


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
    before_delivered = target.delivered()
    cpu0 = target.cpu()
    peak = [target.pss()]
    done = threading.Event()
    latencies: list[float] = []

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], target.pss())
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
        peak[0] = max(peak[0], target.pss())
        time.sleep(0.05)
    delivered = time.perf_counter() - t0
    sampler.join(5)
    return Result(target.name, messages, accepted, delivered, latencies, peak[0],
                  target.cpu() - cpu0)


def start_relay(name: str, work: Path, delivery: dict[str, object],
                delivered: Callable[[], int], workers: int | str,
                concurrency: int | None = None) -> tuple[Target, Path]:
    """ses-relay in its default configuration but for its plain listener open to loopback
    (smtp-source speaks neither TLS nor AUTH) and the per-IP connection limit (all the
    sessions come from 127.0.0.1; Postfix's limit is off too)."""
    home = work / name
    home.mkdir()
    port = free_port()
    if concurrency is not None:
        delivery = {**delivery, "concurrency": concurrency}
    config = write_relay_config(home, port, delivery, workers)
    return relay_target(name, config, port, delivered, AWS_ENV, workers=workers), config


def run_target(name: str, work: Path, args: argparse.Namespace) -> Result:
    """Start one target in its own folder, load it, stop it."""
    stops: list[Callable[[], None]] = []
    config: Path | None = None
    fake: FakeSES | None = None
    try:
        if name == "sesv2":
            fake = FakeSES(idle_timeout=args.ses_idle_timeout, latency=args.ses_latency,
                           close_after=args.ses_close_after)
            stops.append(fake.stop)
            delivery = {"transport": "sesv2", "endpoint_url": fake.url,
                        **({"process": args.delivery_process}
                           if args.delivery_process else {})}
            target, config = start_relay("sesv2", work, delivery,
                                         fake.count, args.workers, args.concurrency)
        else:
            sink = Sink(work)
            stops.append(sink.stop)
            if name == "smtp":
                target, config = start_relay("smtp", work, {
                    "transport": "smtp", "smtp": {"host": "127.0.0.1", "port": sink.port,
                                                  "tls": "none"}},
                    sink.count, args.workers, args.concurrency)
            else:
                target = postfix_target(sink)
        stops.insert(0, target.stop)
        upstream = fake.proc.pid if fake is not None else sink.proc.pid
        upstream_cpu = cpu_seconds(upstream)
        result = run_load(target, args.messages, args.sessions, args.size)
        # The upstream runs on the same cores as the target: what it costs is taken from
        # the target (real SES costs the relay's machine nothing).
        result.notes["upstream CPU ms/msg"] = round(
            (cpu_seconds(upstream) - upstream_cpu) / args.messages * 1000, 2)
        if fake is not None:
            stats = fake.stats()
            result.notes["fake SES idle closes"] = int(stats["idle_closed"])
            result.notes["of new connections"] = int(stats["idle_closed_unused"])
        if config is not None:
            target.stop()
            stops.remove(target.stop)
            events = relay_events(config)
            for event in ("deferred", "upstream_down"):
                result.notes[event] = events.get(event, 0)
            result.notes.update({k: v for k, v in events.items() if k.startswith("deferred:")})
        return result
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


def print_notes(results: dict[str, list[Result]], index: int) -> None:
    """What else the round saw: the relay's deferrals and upstream-down pauses, the fake
    SES's idle closes (a send failing on a closed keep-alive connection shows here)."""
    for name, rs in results.items():
        if rs[index].notes:
            print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in rs[index].notes.items()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--size", type=int, default=5120)
    ap.add_argument("--only", action="append", choices=("sesv2", "smtp", "postfix"))
    ap.add_argument("--workers", default=1, type=lambda v: v if v == "auto" else int(v),
                    help="ses-relay's workers setting (default 1, the relay's default; "
                         "auto: one per CPU)")
    ap.add_argument("--delivery-process", choices=("shared", "separate"), default=None,
                    help="ses-relay's delivery.process (default: the relay's default)")
    ap.add_argument("--concurrency", type=int, default=None,
                    help="ses-relay's delivery.concurrency (default: the relay's, 10)")
    ap.add_argument("--ses-idle-timeout", type=float, default=4.0,
                    help="the fake SES closes keep-alive connections idle this long "
                         "(seconds; 0: never, as before)")
    ap.add_argument("--ses-latency", type=float, default=0.0,
                    help="seconds the fake SES takes to answer a SendEmail")
    ap.add_argument("--ses-close-after", type=int, default=0,
                    help="the fake SES closes each connection after this many answers, "
                         "without a Connection: close (0: never)")
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
                print_notes(results, -1)
    print(f"\n{'median of ' + str(args.rounds) + ' rounds' if args.rounds > 1 else 'result'}"
          f"\n\n{HEADER}")
    for name in names:
        per_round = [measures(r) for r in results[name]]
        print(row(name, *(statistics.median(m[i] for m in per_round) for i in range(6))))
    if args.rounds == 1:
        print_notes(results, -1)
    if "postfix" in names and args.rounds > 1:
        for name in (n for n in names if n != "postfix"):
            ratios = [measures(a)[1] / measures(b)[1]
                      for a, b in zip(results[name], results["postfix"], strict=True)]
            print(f"\n{name} / postfix, delivered msg/s, each round: "
                  f"{' '.join(f'{x:.2f}' for x in ratios)} (median "
                  f"{statistics.median(ratios):.2f})")


if __name__ == "__main__":
    main()
