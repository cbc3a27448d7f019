"""The bad day: kill -9 under load, an SES outage, a full disk. Bounded, loopback only."""

from __future__ import annotations

import email
import random
import smtplib
import subprocess
import threading
import time
from pathlib import Path

import pytest
from clients import implicit, tls_context
from conftest import PASSWORD, SENDER, USER, Setup, events, wait_until
from fakeses import Failure, FakeSES


def message(n: int) -> bytes:
    return (f"From: sender@example.com\r\nSubject: load {n}\r\nDate: Sun, 22 Nov 2026 "
            f"10:00:00 +0000\r\nMessage-ID: <load-{n}@example.com>\r\n\r\nbody {n}\r\n"
            ).encode()


class Load:
    """Sends numbered messages in a loop; remembers which ones got a 250."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.acked: set[int] = set()
        self.n = 0
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while self.running:
            try:
                with smtplib.SMTP_SSL("127.0.0.1", self.setup.implicit_port, timeout=5,
                                      context=tls_context(self.setup.certs.ca)) as s:
                    s.login(USER, PASSWORD)
                    while self.running:
                        self.n += 1
                        n = self.n
                        s.sendmail(SENDER, ["sink@example.net"], message(n))
                        self.acked.add(n)  # only after the 250
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)  # the relay is down: try again

    def stop(self) -> None:
        self.running = False
        self.thread.join(10)


def delivered_numbers(outbox: Path) -> list[int]:
    numbers = []
    for eml in outbox.glob("*.eml"):
        msg = email.message_from_bytes(eml.read_bytes())
        numbers.append(int(str(msg["Subject"]).split()[-1]))
    return numbers


def test_kill_9_under_load_loses_nothing_that_got_250(setup: Setup, start_process) -> None:
    rng = random.Random(7)
    relay = start_process(setup)
    load = Load(setup)
    load.thread.start()
    try:
        for _ in range(10):
            time.sleep(rng.uniform(0.2, 0.7))
            relay.kill()  # SIGKILL: no shutdown code runs, whatever it was doing
            relay = start_process(setup)
    finally:
        load.stop()
    assert len(load.acked) > 20, "the load generator should have got messages through"
    wait_until(lambda: not list((setup.queue_dir / "active").iterdir()), timeout=30)
    assert relay.terminate() == 0
    delivered = delivered_numbers(setup.outbox_dir)
    missing = load.acked - set(delivered)
    assert not missing, f"acknowledged but never delivered: {sorted(missing)}"
    duplicates = len(delivered) - len(set(delivered))
    assert duplicates <= 10  # at most what was in flight at each kill


def test_an_ses_outage_delays_but_loses_nothing(make_setup, start_relay, logs) -> None:
    with FakeSES() as ses:
        outage_until = time.monotonic() + 2.0
        ses.rule = lambda n: Failure(503, "ServiceUnavailable") \
            if time.monotonic() < outage_until else None
        setup: Setup = make_setup("sesv2", region="us-east-1", endpoint_url=ses.url)
        start_relay(setup)
        with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
            for n in range(20):
                s.sendmail(SENDER, ["sink@example.net"], message(n))
        wait_until(lambda: len(ses.accepted) >= 20, timeout=30)
        time.sleep(0.5)
        numbers = sorted(int(email.message_from_bytes(m["raw"])["Subject"].split()[-1])
                         for m in ses.accepted)
    assert numbers == list(range(20))  # each exactly once
    assert events(logs, "deferred")


@pytest.fixture
def tiny_queue(setup: Setup, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The queue on a 256 KiB file system of its own (tmpfs; the tests run as root)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                   check=True)
    setup.doc["queue"]["directory"] = str(mount / "queue")
    # Off (1 byte): the refusal at MAIL below queue.min_free is test_queue_minfree's;
    # these tests are about the disk filling up during DATA, after MAIL was accepted.
    setup.doc["queue"]["min_free"] = 1
    setup.write()
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_answers_4xx_and_recovers_when_space_returns(
        setup: Setup, tiny_queue: Path, start_relay) -> None:
    start_relay(setup)
    big = message(1).replace(b"body 1", b"x" * 76 + (b"\r\n" + b"x" * 76) * 4000)  # ~310 KB
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        s.mail(SENDER)
        s.rcpt("sink@example.net")
        code, text = s.data(big)
        assert (code, text[:5]) == (451, b"4.3.0")
        assert s.noop()[0] == 250  # the session is fine, and the body was not read as commands
        assert list((tiny_queue / "queue" / "tmp").iterdir()) == []  # no half-written file
        subprocess.run(["mount", "-o", "remount,size=8m", str(tiny_queue)], check=True)
        s.mail(SENDER)
        s.rcpt("sink@example.net")
        assert s.data(big)[0] == 250
    wait_until(lambda: list(setup.outbox_dir.glob("*.eml")))
