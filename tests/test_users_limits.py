"""Per-user limits (users file max_rate, max_per_day): set by the command line, answered at
RCPT over real SMTP sessions, counted across restarts and across relay processes."""

from __future__ import annotations

import smtplib
import subprocess
import sys
from pathlib import Path

import yaml
from clients import implicit
from conftest import PASSWORD, REPO, SENDER, USER, Setup
from test_cli import own_users_file, refused_user, run
from test_metrics import get, value

from relay import users

DB_NAME = "user-limits.sqlite3"  # relay.userlimits.DB_NAME, in the queue directory
MESSAGE = b"From: sender@example.com\r\nSubject: limits\r\n\r\nHello.\r\n"


def limited(setup: Setup, tmp_path: Path, **limits: object) -> Path:
    """The setup's own users file, its one user USER with *limits* (users file keys)."""
    path = own_users_file(setup, tmp_path)
    path.write_text(yaml.safe_dump({"users": {USER: {
        "password_hash": users.hash_password(PASSWORD), **limits}}}))
    return path


def rcpts(setup: Setup, *addresses: str) -> list[tuple[int, bytes]]:
    """One session, one transaction: MAIL, then RCPT for each address, then QUIT (nothing
    is queued: the recipients accepted are given back)."""
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        assert s.mail(SENDER)[0] == 250
        return [s.rcpt(a) for a in addresses]


def send(setup: Setup, *addresses: str) -> None:
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        s.sendmail(SENDER, list(addresses), MESSAGE)


def test_user_update_sets_lists_and_clears_the_limits(setup: Setup, tmp_path: Path) -> None:
    path = own_users_file(setup, tmp_path)
    cfg = ("--config", str(setup.path))
    assert run("user", "add", "app", "--max-rate", "5/s", *cfg,
               stdin="app-password-1\n").returncode == 0
    result = run("user", "update", "app", "--max-rate", "100/h", "--max-per-day", "1000", *cfg)
    assert result.returncode == 0, result.stderr
    user = users.load(path).get("app")
    assert user is not None and str(user.max_rate) == "100/h" and user.max_per_day == 1000
    line = run("user", "list", *cfg).stdout
    assert "max_rate=100/h  max_per_day=1000  sent_24h=0" in line
    assert run("user", "update", "app", "--max-rate", "none", "--max-per-day", "none",
               *cfg).returncode == 0
    assert "max_" not in path.read_text()
    assert "max_" not in run("user", "list", *cfg).stdout


def test_bad_limits_exit_2_and_leave_the_file_as_it_was(setup: Setup, tmp_path: Path) -> None:
    path = own_users_file(setup, tmp_path)
    cfg = ("--config", str(setup.path))
    assert run("user", "add", "app", *cfg, stdin="app-password-1\n").returncode == 0
    before = path.read_bytes()
    for option, bad in (("--max-rate", "10"), ("--max-rate", "0/s"), ("--max-rate", "-1/s"),
                        ("--max-rate", "ten/s"), ("--max-rate", "10/week"),
                        ("--max-rate", "nan/s"), ("--max-per-day", "0"),
                        ("--max-per-day", "1.5"), ("--max-per-day", "many")):
        result = run("user", "update", "app", f"{option}={bad}", *cfg)
        assert result.returncode == 2, (option, bad, result.stderr)
        assert result.stderr.startswith(f"ses-relay: {option} "), result.stderr
        assert path.read_bytes() == before
    # A new user with a bad limit is not added either, and no password is asked for.
    assert run("user", "add", "new", "--max-per-day", "x", *cfg,
               stdin="new-password-1\n").returncode == 2
    assert path.read_bytes() == before


def test_users_file_limits_are_checked_on_load(tmp_path: Path) -> None:
    assert "users.app.max_rate: " in refused_user(tmp_path, max_rate="fast")
    assert "users.app.max_per_day: " in refused_user(tmp_path, max_per_day=-3)
    assert "users.app.max_per_day: " in refused_user(tmp_path, max_per_day=True)


def test_over_the_day_limit_rcpt_gets_452_and_the_count_survives_a_restart(
        setup: Setup, tmp_path: Path, start_relay) -> None:
    limited(setup, tmp_path, max_per_day=3)
    setup.doc["metrics"] = {"address": "127.0.0.1", "port": 0}
    setup.write()
    relay = start_relay(setup)
    metrics_port = setup.port("metrics")
    before = _refusals(metrics_port, "day")
    send(setup, "a@example.net", "b@example.net")
    answers = rcpts(setup, "c@example.net", "d@example.net")
    assert answers[0][0] == 250
    assert answers[1] == (452, b"4.5.3 Daily recipient limit reached, try again later")
    assert _refusals(metrics_port, "day") == before + 1
    relay.stop()
    start_relay(setup)  # the same queue directory: the count is still there
    send(setup, "c@example.net")  # the third (the session above was given back)
    assert rcpts(setup, "e@example.net")[0][0] == 452
    assert (setup.queue_dir / DB_NAME).exists()
    line = run("user", "list", "--config", str(setup.path)).stdout
    assert "max_per_day=3  sent_24h=3" in line


def _refusals(port: int, reason: str) -> float:
    text = get(port, "/metrics")[1]
    name = f'ses_relay_user_limit_refusals_total{{reason="{reason}",user="{USER}"}}'
    return value(text, name) if name in text else 0.0


def test_recipients_of_a_transaction_not_queued_are_given_back(
        setup: Setup, tmp_path: Path, start_relay) -> None:
    limited(setup, tmp_path, max_per_day=2)
    start_relay(setup)
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        assert s.mail(SENDER)[0] == 250
        assert [s.rcpt(a)[0] for a in ("a@example.net", "b@example.net")] == [250, 250]
        assert s.rset()[0] == 250
        assert s.mail(SENDER)[0] == 250  # a new transaction: RSET gave both back
        assert [s.rcpt(a)[0] for a in ("a@example.net", "b@example.net")] == [250, 250]
        # A refused DATA gives them back too (any refusal: here, a line over 998).
        assert s.data(MESSAGE + b"x" * 2000 + b"\r\n")[0] == 554  # a line too long
    # QUIT after RCPT: given back as well; then two go, and the third is one too many.
    assert [code for code, _ in rcpts(setup, "a@example.net", "b@example.net")] == [250, 250]
    send(setup, "a@example.net", "b@example.net")
    assert rcpts(setup, "c@example.net")[0][0] == 452


def test_over_the_rate_rcpt_gets_451_with_a_retry_hint(
        setup: Setup, tmp_path: Path, start_relay) -> None:
    limited(setup, tmp_path, max_rate="2/h")  # a token each half hour: none comes back here
    start_relay(setup)
    # The same recipient twice is kept once, and counted once.
    answers = rcpts(setup, "a@example.net", "a@example.net", "b@example.net", "c@example.net")
    assert [code for code, _ in answers] == [250, 250, 250, 451]
    assert answers[3][1].startswith(b"4.7.1 Sending rate limit reached, try again in ")
    assert answers[3][1].endswith(b" seconds")
    # Tokens are not given back (the rate paces attempts), nor renewed by a new session.
    assert rcpts(setup, "z@example.net")[0][0] == 451


def test_a_reload_applies_new_limits(setup: Setup, tmp_path: Path, start_relay) -> None:
    path = limited(setup, tmp_path, max_per_day=1)
    relay = start_relay(setup)
    send(setup, "a@example.net")
    assert rcpts(setup, "b@example.net")[0][0] == 452
    doc = yaml.safe_load(path.read_text())
    doc["users"][USER]["max_per_day"] = 2
    path.write_text(yaml.safe_dump(doc))
    assert relay.call(relay.relay.reload())
    assert rcpts(setup, "b@example.net")[0][0] == 250
    del doc["users"][USER]["max_per_day"]
    path.write_text(yaml.safe_dump(doc))
    assert relay.call(relay.relay.reload())
    assert [c for c, _ in rcpts(setup, *(f"{i}@example.net" for i in range(5)))] == [250] * 5


# Several processes charging one user at once, as workers sharing a queue directory do.
_CHARGER = """
import sys
from pathlib import Path
from relay.userlimits import Charge, UserLimits
from relay.users import User
limits = UserLimits(Path(sys.argv[1]))
user = User("app", "", max_per_day=int(sys.argv[2]))
sys.stdin.readline()  # all started: go
print(sum(isinstance(limits.charge(user), Charge) for _ in range(int(sys.argv[3]))))
"""


def test_processes_sharing_the_queue_directory_share_the_day_limit(tmp_path: Path) -> None:
    """Four processes, 100 recipients each, one limit of 150: exactly 150 get through (a
    count per process would let all 400 through)."""
    db = tmp_path / DB_NAME
    procs = [subprocess.Popen([sys.executable, "-c", _CHARGER, str(db), "150", "100"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=REPO) for _ in range(4)]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    assert sum(int(out) for out, _ in results) == 150


def test_user_list_reads_the_counts_without_leaving_files_in_the_queue(
        setup: Setup, tmp_path: Path, start_relay) -> None:
    """Run as root while the relay is stopped, a read-only open would still leave a -wal
    and -shm owned by root, which the relay's own user could not write."""
    limited(setup, tmp_path, max_per_day=5)
    relay = start_relay(setup)
    send(setup, "a@example.net", "b@example.net")
    relay.stop()
    before = sorted(p.name for p in setup.queue_dir.iterdir())
    assert "max_per_day=5  sent_24h=2" in run("user", "list", "--config", str(setup.path)).stdout
    assert sorted(p.name for p in setup.queue_dir.iterdir()) == before


def test_two_workers_share_one_day_limit(make_setup, tmp_path: Path, start_process,
                                         hold) -> None:
    from test_workers import two_workers

    setup: Setup = make_setup()
    limited(setup, tmp_path, max_per_day=5)
    two_workers(setup, hold)
    relay = start_process(setup)
    relay.wait_event("workers_ready")
    sent = 0
    for i in range(20):  # a session each: the kernel spreads them over both workers
        try:
            send(setup, f"to{i}@example.net")
            sent += 1
        except smtplib.SMTPRecipientsRefused as e:
            assert e.recipients[f"to{i}@example.net"][0] == 452
    assert sent == 5
    seen = {e["worker"] for e in relay.events() if e["event"] in ("queued", "rejected")}
    assert seen == {0, 1}  # (all 20 on one worker: one chance in half a million)
