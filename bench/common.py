"""What the benchmarks share: loopback ports, a relay configuration for a plain-SMTP
listener open to loopback (smtp-source speaks no TLS) with its state in one folder, and
the CPU and memory of a process tree from /proc."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import yaml

# Fake credentials: the benchmarks only ever talk to endpoints on this machine.
AWS_ENV = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_EC2_METADATA_DISABLED": "true"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing on port {port}")


def write_relay_config(home: Path, port: int, delivery: dict[str, Any],
                       workers: int | str = 1, **sections: Any) -> Path:
    """*sections* replace whole top-level sections (``queue``, ``feedback``...)."""
    path = home / "c.yaml"
    path.write_text(yaml.safe_dump({
        **({"workers": workers} if workers != 1 else {}),  # (older relays lack the key)
        "hostname": "bench.test",
        "listeners": [{"name": "bench", "address": "127.0.0.1", "port": port, "tls": "none",
                       "auth": "none", "trusted_networks": ["127.0.0.0/8"]}],
        "queue": {"directory": str(home / "queue")},
        "suppression": {"database": str(home / "s.sqlite3")},
        "feedback": {"database": str(home / "e.sqlite3")},
        "limits": {"max_connections_per_ip": 10000, "max_message_size": "4MiB"},
        "delivery": {"region": "us-east-1", **delivery},
        # The level an operator runs with: a line per message received, queued and
        # delivered, as Postfix logs each message in the comparison.
        "log": {"format": "json", "level": "info"}, **sections}))
    return path


TICK = os.sysconf("SC_CLK_TCK")


# --- process accounting ----------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            children.setdefault(int(st[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(root: int) -> float:
    """CPU of *root* and its descendants, living and reaped."""
    total = 0
    for pid in tree(root):
        st = _stat(pid)
        if st is not None:
            total += sum(int(x) for x in st[11:15])  # utime stime cutime cstime
    return total / TICK


def pss_mb(root: int) -> float:
    """Proportional set size of the whole tree: shared pages (Postfix's many processes
    share their code, so do ses-relay's workers) are counted once, split between the
    processes that share them."""
    kib = 0
    for pid in tree(root):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    kib += int(line.split()[1])
        except OSError:
            pass
    return kib / 1024
