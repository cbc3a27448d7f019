"""queue.min_free: with the queue on a small file system of its own (a 2 MiB tmpfs, mounted
for the test: CI runs as root), MAIL FROM is refused with 452 4.3.1 while the free space is
below the minimum, or below it plus SIZE=, and accepted again once space is freed, without
a restart."""

from __future__ import annotations

import os
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clients import implicit
from conftest import PASSWORD, SENDER, USER, Setup, events, wait_until

from relay import config as config_mod
from relay.errors import ConfigError

MAX_SIZE = 256 * 1024  # limits.max_message_size: the default min_free is twice that
MIN_FREE = 2 * MAX_SIZE
NO_SPACE = (452, b"4.3.1 Insufficient system storage, try again later")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "qfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, size: int) -> None:
    """Append *size* bytes (written, not sparse: tmpfs counts the pages)."""
    with (path / "filler").open("ab") as f:
        f.write(b"\0" * size)


def mail(setup: Setup, *options: str) -> tuple[int, bytes]:
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        return s.mail(SENDER, list(options))


def test_mail_is_refused_with_452_below_min_free_and_accepted_when_space_returns(
        small_fs: Path, setup: Setup, start_relay, logs: list[dict[str, Any]]) -> None:
    setup.doc["queue"]["directory"] = str(small_fs / "queue")
    setup.doc["limits"] = {"max_message_size": MAX_SIZE}
    setup.write()
    start_relay(setup)
    # 150 KiB left above the minimum: mail fits, a SIZE= above what is left does not.
    fill(small_fs, free(small_fs) - MIN_FREE - 150 * 1024)
    wait_until(lambda: mail(setup, f"SIZE={200 * 1024}") == NO_SPACE)
    assert mail(setup, f"SIZE={100 * 1024}")[0] == 250
    assert mail(setup)[0] == 250
    # Below the minimum: every MAIL, with or without SIZE=.
    fill(small_fs, 300 * 1024)
    wait_until(lambda: mail(setup) == NO_SPACE)
    assert mail(setup, "SIZE=10") == NO_SPACE
    refused = [e for e in events(logs, "rejected") if e["step"] == "MAIL"]
    assert refused and "below queue.min_free" in refused[-1]["reason"]  # the log says why
    # Space freed: accepted again, by itself.
    (small_fs / "filler").unlink()
    wait_until(lambda: mail(setup)[0] == 250)
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        s.sendmail(SENDER, ["to@example.net"], b"From: sender@example.com\r\n\r\nHello.\r\n")


def test_a_client_that_ignores_452_at_mail_gets_no_further(
        small_fs: Path, setup: Setup, start_relay) -> None:
    setup.doc["queue"]["directory"] = str(small_fs / "queue")
    # Explicit: the whole 2 MiB, of which the queue's own files already took some.
    setup.doc["queue"]["min_free"] = "2MiB"
    setup.write()
    start_relay(setup)
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        assert s.mail(SENDER) == NO_SPACE
        assert s.rcpt("to@example.net")[0] == 503  # no transaction was started
        with pytest.raises(smtplib.SMTPResponseException):
            s.data(b"Subject: x\r\n\r\nbody\r\n")


def test_queue_min_free_is_a_size(tmp_path: Path, setup: Setup) -> None:
    setup.doc["queue"]["min_free"] = "20MB"
    setup.write()
    assert config_mod.load(setup.path).queue.min_free == 20 * 1000 * 1000
    setup.doc["queue"]["min_free"] = "plenty"
    setup.write()
    with pytest.raises(ConfigError) as e:
        config_mod.load(setup.path)
    assert any(p.startswith("queue.min_free") for p in e.value.problems)
