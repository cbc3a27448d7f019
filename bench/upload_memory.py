"""Peak memory of the relay while many clients upload large messages at once.

Starts the real relay process (outbox transport, implicit TLS), has N clients each send one
message of SIZE bytes at the same moment, waits until all are delivered, and reads the
relay's peak RSS (VmHWM) from /proc.

    .venv/bin/python bench/upload_memory.py [--clients 50] [--size-mb 10] [--concurrency N]
        [--plain] [--workers 1] [--preload 3000] [--transport outbox|sesv2]

--preload N first has smtp-source send N messages of 5 KB from 50 sessions to a second,
plain listener, and waits until they are delivered: the peak is then that of a relay that
has carried the small-message load, not of a fresh process (issue 16 measured 205-247 MB
so). --transport sesv2 delivers to bench/fake_ses.py instead of the outbox.
"""

from __future__ import annotations

import argparse
import json
import smtplib
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import AWS_ENV, free_port, pss_mb, tree, wait_port  # noqa: E402

BIN = Path(sys.executable).parent



def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--size-mb", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=10, help="delivery workers")
    ap.add_argument("--plain", action="store_true", help="no TLS, trusted network, no AUTH")
    ap.add_argument("--workers", type=int, default=1,
                    help="relay processes (peak RSS is then the sum of their peaks)")
    ap.add_argument("--preload", type=int, default=0,
                    help="5 KB messages sent (50 sessions, smtp-source) before the uploads")
    ap.add_argument("--transport", choices=("outbox", "sesv2"), default="outbox")
    ap.add_argument("--delivery-process", choices=("shared", "separate", "auto"),
                    default=None, help="delivery.process (default: the relay's own)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        dev = Path(d)
        out = subprocess.run([BIN / "ses-relay", "dev-init", str(dev)], capture_output=True,
                             text=True, check=True).stdout
        password = next(line.split()[-1] for line in out.splitlines() if "password:" in line)
        doc = yaml.safe_load((dev / "ses-relay.yaml").read_text())
        port = free_port()
        doc["listeners"] = [{"name": "tls", "address": "127.0.0.1", "port": port,
                             "tls": "implicit", "auth": "required"}]
        if args.plain:
            doc["listeners"] = [{"name": "plain", "address": "127.0.0.1", "port": port,
                                 "tls": "none", "auth": "none",
                                 "trusted_networks": ["127.0.0.0/8"]}]
        plain_port = free_port()
        if args.preload:
            doc["listeners"].append({"name": "preload", "address": "127.0.0.1",
                                     "port": plain_port, "tls": "none", "auth": "none",
                                     "trusted_networks": ["127.0.0.0/8"]})
        fake = None
        ses_url = None
        if args.transport == "sesv2":
            ses_port = free_port()
            fake = subprocess.Popen([sys.executable, str(ROOT / "bench" / "fake_ses.py"),
                                     "--port", str(ses_port)])
            wait_port(ses_port)
            ses_url = f"http://127.0.0.1:{ses_port}"
            doc["delivery"] = {**doc["delivery"], "transport": "sesv2",
                               "region": "us-east-1",
                               "endpoint_url": ses_url}
        doc["limits"] = {"max_message_size": int(args.size_mb * 1.1 * 2**20)}
        doc["delivery"]["concurrency"] = args.concurrency
        if args.delivery_process:
            doc["delivery"]["process"] = args.delivery_process
        doc["log"] = {"format": "json", "level": "warning"}
        doc["workers"] = args.workers
        (dev / "ses-relay.yaml").write_text(yaml.safe_dump(doc))
        relay = subprocess.Popen([BIN / "ses-relay", "serve", "--config",
                                  str(dev / "ses-relay.yaml")], env=AWS_ENV)
        try:
            time.sleep(1.5 if args.workers == 1 and args.delivery_process == "shared"
                       else 4)  # a supervisor and its workers take longer to start
            if args.preload:
                preload(dev, plain_port, args.preload, ses_url)
            base = sum(rss_kib(pid, "VmRSS") for pid in tree(relay.pid))
            line = b"x" * 76 + b"\r\n"
            body = b"Subject: big\r\n\r\n" + line * int(args.size_mb * 2**20 / len(line))
            ctx = ssl.create_default_context(cafile=str(dev / "tls" / "cert.pem"))
            barrier = threading.Barrier(args.clients)
            errors: list[BaseException] = []

            def client() -> None:
                try:
                    if args.plain:
                        s = smtplib.SMTP("127.0.0.1", port, timeout=300)
                    else:
                        s = smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=300)
                        s.login("dev", password)
                    with s:
                        barrier.wait()
                        s.sendmail("bench@example.com", ["sink@example.net"], body)
                except BaseException as e:  # reported below
                    errors.append(e)

            pss = [0.0]
            sampling = threading.Event()

            def sample() -> None:  # proportional set size of the relay and its workers
                while not sampling.is_set():
                    pss[0] = max(pss[0], pss_mb(relay.pid))
                    time.sleep(0.1)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            t0 = time.monotonic()
            threads = [threading.Thread(target=client) for _ in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            accepted = time.monotonic() - t0
            wait_delivered(dev, args.preload + args.clients - len(errors), ses_url)
            # With workers, the sum of each process's own peak: an upper bound of the peak
            # of the sum.
            peak = sum(rss_kib(pid, "VmHWM") for pid in tree(relay.pid))
            for pid in tree(relay.pid):  # which process holds what
                print(f"  pid {pid}: peak {rss_kib(pid, 'VmHWM') / 1024:.0f} MB, now anon "
                      f"{rss_kib(pid, 'RssAnon') / 1024:.0f} file "
                      f"{rss_kib(pid, 'RssFile') / 1024:.0f} shmem "
                      f"{rss_kib(pid, 'RssShmem') / 1024:.0f} MB")
            sampling.set()
            sampler.join()
            print(f"clients={args.clients} size={args.size_mb} MB processes={args.workers} "
                  f"delivery_concurrency={args.concurrency} preload={args.preload} "
                  f"transport={args.transport} "
                  f"errors={len(errors)} accepted_in={accepted:.1f}s "
                  f"rss_idle={base / 1024:.0f} MB peak_rss={peak / 1024:.0f} MB "
                  f"peak_pss={pss[0]:.0f} MB")
        finally:
            relay.terminate()
            relay.wait(30)
            if fake is not None:
                fake.terminate()
                fake.wait(10)


def delivered(dev: Path, ses_url: str | None) -> int:
    if ses_url is None:
        return len(list((dev / "outbox").glob("*.eml")))
    with urllib.request.urlopen(f"{ses_url}/stats", timeout=5) as r:
        return int(json.load(r)["accepted_rcpts"])


def wait_delivered(dev: Path, want: int, ses_url: str | None, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while delivered(dev, ses_url) < want:
        if time.monotonic() > deadline:
            raise TimeoutError("messages not delivered in time")
        time.sleep(0.1)


def preload(dev: Path, port: int, messages: int, ses_url: str | None) -> None:
    subprocess.run(["smtp-source", "-s", "50", "-m", str(messages), "-l", "5120",
                    "-f", "load@example.com", "-t", "sink@example.net",
                    f"127.0.0.1:{port}"], check=True, timeout=1800)
    wait_delivered(dev, messages, ses_url)


if __name__ == "__main__":
    main()
