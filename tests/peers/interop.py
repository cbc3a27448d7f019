"""Shared by the interop tests (tests/test_interop_*.py): find the real peers, read deliveries.

A missing peer fails the test with the command that installs it; it is never a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from email.policy import SMTP
from pathlib import Path
from typing import Any

PEERS = Path(__file__).resolve().parent
# Postfix's commands live in /usr/sbin, which a non-root PATH may lack.
_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def need(program: str) -> str:
    """The full path of *program*, or a failure that says how to install it."""
    exe = shutil.which(program, path=_PATH)
    assert exe, f"{program} is not installed: run `make peers` (make test does)"
    return exe


def need_file(path: Path, what: str) -> Path:
    assert path.exists(), f"{what} is not installed ({path} is missing): run `make peers`"
    return path


def run(args: list[str], *, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a peer to completion (killed after *timeout*), capturing its output."""
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)


@dataclass
class Delivered:
    """One message as the outbox transport delivered it: exact bytes and the envelope."""

    data: bytes
    envelope: dict[str, Any]

    @property
    def message(self) -> Message:
        return message_from_bytes(self.data, policy=SMTP)

    @property
    def header_section(self) -> bytes:
        return self.data.split(b"\r\n\r\n", 1)[0] + b"\r\n"

    @property
    def body(self) -> bytes:
        return self.data.split(b"\r\n\r\n", 1)[1]


def wait_delivered(outbox: Path, count: int = 1, timeout: float = 15) -> list[Delivered]:
    """Wait until *count* messages are in the outbox; return them, oldest first."""
    deadline = time.monotonic() + timeout
    found: list[Path] = []
    while time.monotonic() < deadline:
        found = sorted(outbox.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns) \
            if outbox.exists() else []
        if len(found) >= count:
            # The transport writes the .json envelope before the .eml.
            return [Delivered(p.read_bytes(), json.loads(p.with_suffix(".json").read_text()))
                    for p in found]
        time.sleep(0.05)
    raise AssertionError(f"expected {count} delivered message(s) in {outbox}, found {found}")
