"""Peak memory of the relay while many clients upload large messages at once.

Starts the real relay process (outbox transport, implicit TLS), has N clients each send one
message of SIZE bytes at the same moment, waits until all are delivered, and reads the
relay's peak RSS (VmHWM) from /proc.

    .venv/bin/python bench/upload_memory.py [--clients 50] [--size-mb 10] [--concurrency N]
        [--plain] [--workers 1]
"""

from __future__ import annotations

import argparse
import smtplib
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, pss_mb, tree  # noqa: E402

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
        doc["limits"] = {"max_message_size": int(args.size_mb * 1.1 * 2**20)}
        doc["delivery"]["concurrency"] = args.concurrency
        doc["log"] = {"format": "json", "level": "warning"}
        doc["workers"] = args.workers
        (dev / "ses-relay.yaml").write_text(yaml.safe_dump(doc))
        relay = subprocess.Popen([BIN / "ses-relay", "serve", "--config",
                                  str(dev / "ses-relay.yaml")])
        try:
            time.sleep(1.5 if args.workers == 1 else 4)
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
            while len(list((dev / "outbox").glob("*.eml"))) < args.clients - len(errors):
                time.sleep(0.1)
            # With workers, the sum of each process's own peak: an upper bound of the peak
            # of the sum.
            peak = sum(rss_kib(pid, "VmHWM") for pid in tree(relay.pid))
            sampling.set()
            sampler.join()
            print(f"clients={args.clients} size={args.size_mb} MB processes={args.workers} "
                  f"delivery_concurrency={args.concurrency} "
                  f"errors={len(errors)} accepted_in={accepted:.1f}s "
                  f"rss_idle={base / 1024:.0f} MB peak_rss={peak / 1024:.0f} MB "
                  f"peak_pss={pss[0]:.0f} MB")
        finally:
            relay.terminate()
            relay.wait(30)


if __name__ == "__main__":
    main()
