"""workers > 1: several relay processes on the same ports and one queue, under a supervisor.

Each test runs the real `ses-relay serve` with two workers; clients connect many times so
the kernel spreads the sessions over both.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from clients import implicit
from conftest import (
    PASSWORD,
    SENDER,
    USER,
    NotifySocket,
    Process,
    Setup,
    port_of,
    ses_relay_exe,
    wait_until,
)
from fakeses import FakeSES
from test_cli import run
from test_metrics import get

from relay import serving
from relay.spool import Share, Spool

MESSAGE = b"From: sender@example.com\r\nTo: to@example.net\r\nSubject: %d\r\n\r\nHello.\r\n"


def two_workers(setup: Setup, hold: Any, **extra: object) -> None:
    """Two workers; port 0 cannot be shared, so each listener gets a port held (bound, not
    listening, SO_REUSEPORT) for the test, which the workers bind beside it."""
    setup.doc["workers"] = 2
    # Each worker delivers what it owns (separate delivery has its own tests below).
    setup.doc["delivery"]["process"] = "shared"
    for listener in setup.doc["listeners"]:
        listener["port"] = port_of(hold(reuse_port=True))
    setup.doc.update(extra)
    setup.write()


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def send(setup: Setup, n: int) -> None:
    for i in range(n):  # a session each: new source ports, spread by the kernel
        with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
            s.sendmail(SENDER, ["to@example.net"], MESSAGE % i)


def test_two_workers_share_the_ports_and_deliver_every_message_once(
        make_setup, start_process, hold) -> None:
    with FakeSES() as ses:
        setup: Setup = make_setup("sesv2", region="us-east-1", endpoint_url=ses.url,
                                  max_send_rate=200)
        # Only the first worker serves metrics: port 0 is fine there.
        two_workers(setup, hold, metrics={"address": "127.0.0.1", "port": 0})
        relay = start_process(setup)
        relay.wait_event("workers_ready")
        metrics_port = relay.wait_event("started", worker=0)["http"]["metrics"]
        send(setup, 40)
        wait_until(lambda: len(ses.accepted) >= 40, timeout=20)
        # Every message removed from the queue: nothing is left that could be sent twice.
        wait_until(lambda: not list((setup.queue_dir / "active").iterdir()), timeout=10)
        subjects = sorted(int(m["raw"].split(b"Subject: ")[1].split(b"\r\n")[0])
                          for m in ses.accepted)
        assert subjects == list(range(40))
        # Both processes took mail, and the metrics of both are served by the first.
        queued = [e for e in relay.events() if e["event"] == "queued"]
        assert {e["worker"] for e in queued} == {0, 1}
        wait_until(lambda: "ses_relay_send_rate_limit 200.0" in scrape(metrics_port), 15)
        assert "ses_relay_messages_queued_total 40.0" in scrape(metrics_port)
        workers = children(relay.proc.pid)
        relay.proc.send_signal(signal.SIGTERM)
        assert relay.proc.wait(30) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    assert list((setup.queue_dir / "active").iterdir()) == []


def scrape(port: int) -> str:
    return get(port, "/metrics")[1]


def test_the_queue_tools_see_one_queue_and_reach_every_worker(
        make_setup, start_process, hold) -> None:
    closed = hold()  # SES unreachable (bound, not listening): everything stays queued
    setup: Setup = make_setup("sesv2", region="us-east-1",
                              endpoint_url=f"http://127.0.0.1:{port_of(closed)}")
    two_workers(setup, hold)
    relay = start_process(setup)
    relay.wait_event("workers_ready")
    send(setup, 12)
    listing = run("queue", "list", "--config", str(setup.path)).stdout.splitlines()
    assert len(listing) == 12
    owners = {Share(0, 2).owns(line.split()[0]) for line in listing}
    assert owners == {True, False}  # both workers hold part of it
    # Both workers now wait at least 16 s before trying the upstream again.
    wait_until(lambda: {e["worker"] for e in relay.events()
                        if e["event"] == "upstream_down" and e["pause"] >= 16} == {0, 1},
               timeout=20)
    # The endpoint comes back on its port; a flush reaches both workers, which try at
    # once despite their pause: well within it.
    with FakeSES(sock=closed) as ses:
        assert run("queue", "flush", "--config", str(setup.path)).returncode == 0
        wait_until(lambda: len(ses.accepted) >= 12, timeout=8)
    wait_until(lambda: not list((setup.queue_dir / "active").iterdir()), timeout=10)


def test_a_worker_that_dies_is_started_again(make_setup, start_process, hold) -> None:
    setup: Setup = make_setup()
    two_workers(setup, hold)
    relay = start_process(setup)
    relay.wait_event("workers_ready")
    victim = children(relay.proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    died = relay.wait_event("worker_died")
    assert died["exit_code"] == -signal.SIGKILL
    wait_until(lambda: len(children(relay.proc.pid)) == 2 and victim not in children(
        relay.proc.pid), timeout=15)
    wait_until(lambda: sum(e["event"] == "started" for e in relay.events()) == 3, 15)
    send(setup, 10)  # whichever worker a session meets, it is served
    assert relay.proc.poll() is None


def two_workers_and_a_new_user(make_setup: Any, start_process: Any, tmp_path: Path,
                               hold: Any) -> tuple[Setup, Process]:
    """Two workers running; then a user added to the file, which a reload must bring in."""
    setup: Setup = make_setup()
    users_file = tmp_path / "own-users.yaml"
    users_file.write_bytes(Path(setup.doc["users_file"]).read_bytes())
    two_workers(setup, hold, users_file=str(users_file))
    relay = start_process(setup)
    relay.wait_event("workers_ready")
    assert run("user", "add", "newcomer", "--config", str(setup.path),
               stdin="newcomer-password\n").returncode == 0
    return setup, relay


def every_worker_knows_the_new_user(setup: Setup) -> None:
    for _ in range(6):  # whichever worker a session meets knows the new user
        with implicit(setup.implicit_port, setup.certs.ca, "newcomer",
                      "newcomer-password") as s:
            assert s.noop()[0] == 250


def test_sighup_reaches_every_worker(make_setup, start_process, tmp_path: Path,
                                     hold) -> None:
    setup, relay = two_workers_and_a_new_user(make_setup, start_process, tmp_path, hold)
    relay.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: {e.get("worker") for e in relay.events()
                        if e["event"] == "reloaded"} == {0, 1}, timeout=15)
    every_worker_knows_the_new_user(setup)


def worker_arg(pid: int, flag: str) -> str:
    """What follows *flag* on a worker's command line (--worker, --role)."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return args[args.index(flag) + 1]


def worker_pid(relay: Process, index: int) -> int:
    [pid] = [p for p in children(relay.proc.pid) if worker_arg(p, "--worker") == str(index)]
    return pid


def test_a_reload_reaches_every_worker_when_the_first_dies_during_it(
        make_setup, start_process, tmp_path: Path, hold) -> None:
    """The first worker reloads first and the others after its word; if it dies before
    it says anything, its successor starts on the new file and the others must still
    reload, or each session would meet one file or the other."""
    setup, relay = two_workers_and_a_new_user(make_setup, start_process, tmp_path, hold)
    first = worker_pid(relay, 0)
    os.kill(first, signal.SIGSTOP)  # the SIGHUP waits, undelivered, until it is killed
    relay.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: pending(first, signal.SIGHUP), timeout=10)  # the supervisor sent it
    os.kill(first, signal.SIGKILL)
    relay.wait_event("reload_lead_died")
    wait_until(lambda: any(e["event"] == "reloaded" and e.get("worker") == 1
                           for e in relay.events()), timeout=20)
    every_worker_knows_the_new_user(setup)


def pending(pid: int, sig: signal.Signals) -> bool:
    """Whether *sig* waits in *pid*'s process-wide pending set (/proc's ShdPnd mask)."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    mask = next(line.split()[1] for line in status if line.startswith("ShdPnd:"))
    return bool(int(mask, 16) & (1 << (sig - 1)))


def test_a_worker_that_cannot_start_stops_the_relay_with_its_exit_code(make_setup,
                                                                        hold) -> None:
    setup: Setup = make_setup()
    two_workers(setup, hold)
    # Someone else listens on the port without SO_REUSEPORT: no worker can bind it.
    with hold() as other:
        other.listen()
        setup.doc["listeners"][1]["port"] = port_of(other)
        setup.write()
        done = run("serve", "--config", str(setup.path))
    assert done.returncode != 0
    [failed] = [json.loads(line) for line in done.stdout.splitlines()
                if "worker_failed_to_start" in line]
    assert failed["exit_code"] == done.returncode


def test_systemd_hears_ready_once_every_worker_is_and_stopping_at_the_end(
        make_setup, start_process, notify_socket: NotifySocket, hold) -> None:
    setup: Setup = make_setup()
    two_workers(setup, hold)
    relay = start_process(setup)
    notify_socket.wait_for(b"READY=1")
    # READY came from the supervisor after both workers were ready.
    assert sum(e["event"] == "started" for e in relay.events()) == 2
    notify_socket.wait_for(b"WATCHDOG=1")  # fed while both feed theirs
    relay.proc.send_signal(signal.SIGTERM)
    notify_socket.wait_for(b"STOPPING=1")
    assert relay.proc.wait(30) == 0


def test_every_queue_id_has_exactly_one_owner_and_drafts_are_their_makers(
        tmp_path: Path) -> None:
    spools = [Spool(tmp_path, Share(i, 3)) for i in range(3)]
    for spool in spools:
        spool.open()
    for i, spool in enumerate(spools):
        for _ in range(50):
            draft = spool.draft()
            assert [s.share.owns(draft.queue_id) for s in spools] == [j == i for j in range(3)]
            draft.abort()


def test_a_separate_delivery_process_delivers_what_the_smtp_process_took(
        make_setup, start_process) -> None:
    """delivery.process: separate: the SMTP process never delivers; its word reaches the
    delivery process at once (no wait for the queue scan), and queue tools reach it."""
    with FakeSES() as ses:
        setup: Setup = make_setup("sesv2", region="us-east-1", endpoint_url=ses.url,
                                  max_send_rate=200)
        setup.doc["delivery"]["process"] = "separate"
        setup.doc["metrics"] = {"address": "127.0.0.1", "port": 0}
        setup.write()
        relay = start_process(setup)
        relay.wait_event("workers_ready")
        roles = {e["role"]: e for e in relay.events() if e["event"] == "started"}
        assert set(roles) == {"smtp", "delivery"}
        assert roles["smtp"]["listeners"] and not roles["smtp"]["http"]
        assert roles["delivery"]["http"]["metrics"] and not roles["delivery"]["listeners"]
        setup.ports = {**roles["smtp"]["listeners"], **roles["delivery"]["http"]}
        send(setup, 10)
        wait_until(lambda: len(ses.accepted) >= 10, timeout=20)
        events = relay.events()
        assert {e.get("role") for e in events if e["event"] == "queued"} == {"smtp"}
        assert {e.get("role") for e in events if e["event"] == "delivered"} == {"delivery"}
        # Each message was sent within the queue scan's period of its 250: by word.
        wait_until(lambda: not list((setup.queue_dir / "active").iterdir()), timeout=10)
        assert "ses_relay_messages_queued_total 10.0" in scrape(roles["delivery"]["http"][
            "metrics"])
        # A queue command reaches the one process that delivers.
        assert run("pause", "--reason", "test", "--config", str(setup.path)).returncode == 0
        relay.wait_event("delivery_paused", role="delivery")
        workers = children(relay.proc.pid)
        relay.proc.send_signal(signal.SIGTERM)
        assert relay.proc.wait(30) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


def nice_of_threads(pid: int) -> set[int]:
    values = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        values.add(int(stat[stat.rindex(")") + 2:].split()[16]))  # field 19, nice
    return values


@pytest.mark.parametrize("nice", [None, 0, 19])
def test_the_delivery_process_gives_way_to_the_smtp_process(make_setup, start_process,
                                                           nice: int | None) -> None:
    """A client waits on every reply, a queued message only for its turn: the delivery
    process, every thread of it, runs at a lower priority than the SMTP process
    (delivery.nice, 10 unless set; 0 keeps them level)."""
    with FakeSES() as ses:
        setup: Setup = make_setup("sesv2", region="us-east-1", endpoint_url=ses.url)
        setup.doc["delivery"]["process"] = "separate"
        if nice is not None:
            setup.doc["delivery"]["nice"] = nice
        setup.write()
        relay = start_process(setup)
        relay.wait_event("workers_ready")
        roles = {e["role"]: e for e in relay.events() if e["event"] == "started"}
        setup.ports = roles["smtp"]["listeners"]
        send(setup, 3)  # every thread started: the commit threads, the event store's...
        wait_until(lambda: len(ses.accepted) >= 3, timeout=20)
        pids = {worker_arg(pid, "--role"): pid for pid in children(relay.proc.pid)}
        ours = os.nice(0)
        assert nice_of_threads(pids["smtp"]) == {ours}
        assert nice_of_threads(pids["delivery"]) == {min(19, ours + (10 if nice is None
                                                                     else nice))}
        assert len(os.listdir(f"/proc/{pids['delivery']}/task")) > 1


def test_a_delivery_process_that_may_not_lower_its_priority_says_so_and_goes_on(
        monkeypatch: Any, logs: list[dict[str, Any]]) -> None:
    """A seccomp filter of the admin's own that refuses setpriority (EPERM, as the
    shipped unit answers what it filters) costs the priority, not the process."""
    def refused(increment: int) -> int:
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "nice", refused)
    serving.give_way(10)
    assert [e for e in logs if e["event"] == "delivery_priority_unchanged"] == [
        {"event": "delivery_priority_unchanged", "log_level": "warning",
         "error": "[Errno 1] Operation not permitted"}]


def test_a_sigterm_while_the_workers_start_is_a_clean_stop(setup: Setup,
                                                           tmp_path: Path) -> None:
    """systemctl stop right after start: the supervisor passes SIGTERM on to workers that
    have no handler yet, and they die of it. That is the stop it asked for: exit 0, or
    systemd would call a plain stop a failure."""
    setup.doc["delivery"]["process"] = "separate"
    setup.write()
    log_path = tmp_path / "relay.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([ses_relay_exe(), "serve", "--config", str(setup.path)],
                                stdout=log, stderr=subprocess.STDOUT)
    relay = Process(proc, log_path)
    try:
        relay.wait_event("supervisor_started")
        proc.send_signal(signal.SIGTERM)  # before the workers' interpreters are up
        assert proc.wait(30) == 0, log_path.read_text()
    finally:
        relay.kill()


def test_the_smtp_process_advertises_each_transports_own_size_limit() -> None:
    """An SMTP-only process takes the limit from a table (it does not import the
    transport): the table must say what each transport says."""
    from relay.transports.base import MAX_MESSAGE_SIZE
    from relay.transports.outbox import OutboxTransport
    from relay.transports.sesv1 import SESv1Transport
    from relay.transports.sesv2 import SESv2Transport
    from relay.transports.smtp import SMTPTransport

    classes = {"sesv2": SESv2Transport, "sesv1": SESv1Transport, "smtp": SMTPTransport,
               "outbox": OutboxTransport}
    assert {name: cls.max_message_size for name, cls in classes.items()} == MAX_MESSAGE_SIZE
