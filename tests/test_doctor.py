"""`ses-relay doctor`: each check against real peers (moto_server, sockets, trustme certs)."""

from __future__ import annotations

import asyncio
import datetime
import io
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
import trustme
from conftest import SENDER, Moto, Setup

from relay import config as config_mod
from relay import doctor, users

REGION = "us-east-1"


def run_doctor(cfg: config_mod.Config, now: float | None = None) -> tuple[int, str]:
    out = io.StringIO()
    code = asyncio.run(doctor.run(cfg, out, now=now))
    return code, out.getvalue()


def rows(report: str, status: str, check: str = "") -> list[str]:
    """The report's lines with this status (and check name, if given)."""
    return [line for line in report.splitlines()
            if line.startswith(f"{status} ") and check in line[6:30]]


def fix_after(report: str, line: str) -> str:
    lines = report.splitlines()
    following = lines[lines.index(line) + 1]
    assert following.strip().startswith("fix: "), following
    return following.strip()


def v2(moto: Moto) -> Any:
    return boto3.client("sesv2", region_name=REGION, endpoint_url=moto.url)


@pytest.fixture
def sts_at(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Point STS at a local URL: nothing in these tests may reach real AWS."""
    def point(url: str) -> None:
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", url)
    return point


@pytest.fixture
def ses_setup(make_setup: Callable[..., Setup], moto: Moto, tmp_path: Path,
              sts_at: Callable[[str], None]) -> Callable[..., Setup]:
    """A sesv2 setup on moto_server whose one user may send only as *senders*."""
    def make(*senders: str) -> Setup:
        sts_at(moto.url)
        setup = make_setup("sesv2", region=REGION, endpoint_url=moto.url)
        path = tmp_path / "doctor-users.yaml"
        users.save(path, users.UserDB({}).with_user(
            users.User("app", users.hash_password("pw"), tuple(senders))))
        setup.doc["users_file"] = str(path)
        setup.doc["hostname"] = "localhost"  # the session certificate's name
        setup.write()
        return setup
    return make


def test_healthy_setup_exits_0_with_ok_rows_for_credentials_account_and_sender(
        ses_setup: Callable[..., Setup]) -> None:
    code, report = run_doctor(ses_setup(SENDER).load())
    assert code == 0, report
    assert not rows(report, "FAIL"), report
    assert rows(report, "OK", "configuration")
    assert rows(report, "OK", "users file")[0].endswith("1 user(s)")
    assert rows(report, "OK", "TLS certificate")
    assert rows(report, "OK", "TLS hostname")
    assert len(rows(report, "OK", "listener")) == 2
    assert rows(report, "OK", "queue directory")
    assert "account 123456789012" in rows(report, "OK", "AWS credentials")[0]
    assert "from SES v1" in rows(report, "OK", "SES quota")[0]  # moto lacks GetAccount
    assert f"{SENDER}: verified address (used by user app)" in \
        rows(report, "OK", "sender identity")[0]
    assert "Traceback" not in report
    assert "0 FAIL: nothing found that would stop mail" in report


def test_unverified_sender_fails_naming_the_identity_and_region_with_a_fix(
        ses_setup: Callable[..., Setup]) -> None:
    code, report = run_doctor(ses_setup(SENDER, "app@unverified.example").load())
    assert code == 1
    [failed] = rows(report, "FAIL", "sender identity")
    assert "app@unverified.example: not verified in region us-east-1" in failed
    fix = fix_after(report, failed)
    assert "verify app@unverified.example or the domain unverified.example" in fix
    assert "region us-east-1" in fix
    assert rows(report, "OK", "sender identity")  # the verified one is still OK


def test_sender_verified_through_its_domain_passes_and_missing_dkim_warns(
        ses_setup: Callable[..., Setup], moto: Moto) -> None:
    moto.verify("example.org")
    code, report = run_doctor(ses_setup("news@example.org", "@example.org").load())
    assert code == 0, report
    ok = rows(report, "OK", "sender identity")
    assert any("news@example.org: verified through the domain example.org" in r for r in ok)
    assert any("@example.org: verified domain" in r for r in ok)
    [dkim] = rows(report, "WARN", "DKIM")  # one row per domain, not per address
    assert "example.org" in dkim
    assert "Easy DKIM" in fix_after(report, dkim)


def test_null_sender_rewrite_and_bounce_from_are_checked_as_identities(
        ses_setup: Callable[..., Setup]) -> None:
    setup = ses_setup(SENDER)
    setup.doc["policy"] = {"null_sender_rewrite": "bounces@unverified.example"}
    setup.doc["delivery"].update(bounce_notices=True, bounce_from=SENDER)
    setup.write()
    code, report = run_doctor(setup.load())
    assert code == 1
    [failed] = rows(report, "FAIL", "sender identity")
    assert "bounces@unverified.example" in failed
    assert "policy.null_sender_rewrite" in failed
    assert any("user app, delivery.bounce_from" in r for r in rows(report, "OK"))


def test_no_sender_restrictions_warns_and_suggests_send_test(
        ses_setup: Callable[..., Setup]) -> None:
    code, report = run_doctor(ses_setup().load())
    assert code == 0, report
    [warn] = rows(report, "WARN", "sender identities")
    assert "not restricted" in warn
    assert "ses-relay send-test" in fix_after(report, warn)


def test_listener_port_in_use_fails_and_says_a_running_relay_explains_it(
        ses_setup: Callable[..., Setup]) -> None:
    setup = ses_setup(SENDER)
    with socket.create_server(("127.0.0.1", 0)) as busy:  # another service, on its port
        port = busy.getsockname()[1]
        setup.doc["listeners"][0]["port"] = port
        setup.write()
        code, report = run_doctor(setup.load())
    assert code == 1
    [failed] = rows(report, "FAIL", "listener submission ")
    assert f"127.0.0.1:{port}: in use or not permitted" in failed
    fix = fix_after(report, failed)
    assert "stop the other service" in fix and "ses-relay itself" in fix
    assert rows(report, "OK", "listener submissions")


def issue(tmp_path: Path, name: str, *, not_before: datetime.datetime | None = None,
          not_after: datetime.datetime | None = None,
          identities: tuple[str, ...] = ("localhost",)) -> tuple[Path, Path]:
    leaf = trustme.CA().issue_cert(*identities, not_before=not_before, not_after=not_after)
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


def with_tls(setup: Setup, cert: Path, key: Path) -> config_mod.Config:
    setup.doc["tls"] = {"cert": str(cert), "key": str(key)}
    setup.write()
    return setup.load()


def test_expired_certificate_fails(ses_setup: Callable[..., Setup], tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    cert, key = issue(tmp_path, "old", not_before=now - datetime.timedelta(days=400),
                      not_after=now - datetime.timedelta(days=2))
    code, report = run_doctor(with_tls(ses_setup(SENDER), cert, key))
    assert code == 1
    [failed] = rows(report, "FAIL", "TLS expiry")
    assert "expired on" in failed
    assert "renew" in fix_after(report, failed)


def test_certificate_expiring_within_14_days_warns(
        ses_setup: Callable[..., Setup], tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    cert, key = issue(tmp_path, "soon", not_after=now + datetime.timedelta(days=5, hours=1))
    code, report = run_doctor(with_tls(ses_setup(SENDER), cert, key))
    assert code == 0, report
    [warn] = rows(report, "WARN", "TLS expiry")
    assert "(in 5 days)" in warn


def test_certificate_expiry_is_judged_at_the_given_time(ses_setup: Callable[..., Setup]) -> None:
    # trustme's certificates are valid until the year 3000.
    far_future = datetime.datetime(3001, 1, 1, tzinfo=datetime.UTC).timestamp()
    code, report = run_doctor(ses_setup(SENDER).load(), now=far_future)
    assert code == 1
    assert rows(report, "FAIL", "TLS expiry")


def test_key_of_another_certificate_fails(ses_setup: Callable[..., Setup],
                                          tmp_path: Path) -> None:
    cert, _ = issue(tmp_path, "one")
    _, other_key = issue(tmp_path, "two")
    code, report = run_doctor(with_tls(ses_setup(SENDER), cert, other_key))
    assert code == 1
    [failed] = rows(report, "FAIL", "TLS certificate")
    assert "is not the private key of" in failed


def test_certificate_for_another_name_warns(ses_setup: Callable[..., Setup],
                                            tmp_path: Path) -> None:
    cert, key = issue(tmp_path, "other", identities=("mail.example.net", "*.example.org"))
    code, report = run_doctor(with_tls(ses_setup(SENDER), cert, key))
    assert code == 0, report
    [warn] = rows(report, "WARN", "TLS hostname")
    assert "does not cover localhost" in warn and "mail.example.net" in warn


def test_configuration_set_without_bounce_and_complaint_destinations_warns(
        ses_setup: Callable[..., Setup], moto: Moto) -> None:
    v2(moto).create_configuration_set(ConfigurationSetName="relay-events")
    setup = ses_setup(SENDER)
    setup.doc["policy"] = {"configuration_set": "relay-events"}
    setup.write()
    code, report = run_doctor(setup.load())
    assert code == 0, report
    assert rows(report, "OK", "configuration set")
    [warn] = rows(report, "WARN", "event destinations")
    assert "none for BOUNCE and COMPLAINT" in warn
    assert "relay-events" in fix_after(report, warn)


def test_configuration_set_publishing_bounces_and_complaints_is_ok(
        ses_setup: Callable[..., Setup], moto: Moto) -> None:
    v2(moto).create_configuration_set(ConfigurationSetName="relay-events")
    boto3.client("ses", region_name=REGION, endpoint_url=moto.url) \
        .create_configuration_set_event_destination(
            ConfigurationSetName="relay-events",
            EventDestination={"Name": "feedback", "Enabled": True,
                              "MatchingEventTypes": ["bounce", "complaint"],
                              "SNSDestination": {"TopicARN": "arn:aws:sns:us-east-1:"
                                                             "123456789012:ses-feedback"}})
    setup = ses_setup(SENDER)
    setup.doc["policy"] = {"configuration_set": "relay-events"}
    setup.write()
    code, report = run_doctor(setup.load())
    assert code == 0, report
    assert "bounces and complaints are published" in rows(report, "OK", "event destinations")[0]


def test_missing_configuration_set_of_a_user_fails(
        ses_setup: Callable[..., Setup], tmp_path: Path) -> None:
    setup = ses_setup(SENDER)
    path = Path(setup.doc["users_file"])
    db = users.load(path)
    app = db.get("app")
    assert app is not None
    users.save(path, db.with_user(users.User("app", app.password_hash, app.allowed_senders,
                                             configuration_set="no-such-set")))
    code, report = run_doctor(setup.load())
    assert code == 1
    [failed] = rows(report, "FAIL", "configuration set")
    assert "no-such-set: does not exist in region us-east-1 (used by user app)" in failed
    assert "create-configuration-set" in fix_after(report, failed)


def test_outbox_transport_marks_aws_checks_not_applicable_and_exits_0(setup: Setup) -> None:
    code, report = run_doctor(setup.load())
    assert code == 0, report
    assert "not applicable" in rows(report, "OK", "AWS checks")[0]
    assert rows(report, "OK", "outbox directory")
    assert not rows(report, "OK", "AWS credentials")


def test_unreachable_ses_endpoint_fails_with_a_hint_and_no_traceback(
        make_setup: Callable[..., Setup], sts_at: Callable[[str], None],
        refused_url: str) -> None:
    closed = refused_url
    sts_at(closed)
    setup = make_setup("sesv2", region=REGION, endpoint_url=closed)
    setup.doc["policy"] = {"null_sender_rewrite": SENDER}  # something for the identity check
    setup.write()
    code, report = run_doctor(setup.load())
    assert code == 1
    for check, hint in (("AWS credentials", "cannot reach AWS STS"),
                        ("SES account", "cannot reach the SES endpoint"),
                        ("sender identity", "cannot reach the SES endpoint")):
        [failed] = rows(report, "FAIL", check)
        assert "ConnectionError" in failed
        assert hint in fix_after(report, failed)
    assert "Traceback" not in report


def test_required_auth_without_users_warns(setup: Setup, tmp_path: Path) -> None:
    setup.doc["users_file"] = str(tmp_path / "none-yet.yaml")
    setup.write()
    code, report = run_doctor(setup.load())
    assert code == 0, report
    [warn] = rows(report, "WARN", "users file")
    assert "require AUTH" in warn
    assert "ses-relay user add" in fix_after(report, warn)


def test_queue_directory_that_is_a_file_fails(setup: Setup, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    setup.doc["queue"]["directory"] = str(blocker)
    setup.write()
    code, report = run_doctor(setup.load())
    assert code == 1
    [failed] = rows(report, "FAIL", "queue directory")
    assert "not a directory" in failed


def test_doctor_command_prints_the_table_and_exits_by_verdict(setup) -> None:
    from test_cli import run

    result = run("doctor", "--config", str(setup.path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout and "Traceback" not in result.stdout + result.stderr


def test_the_data_fast_path_is_reported_and_its_absence_warns_with_a_fix(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    # Whether this install has it is tests/test_plainlines.py's to check.
    monkeypatch.setattr(doctor.plainlines, "COMPILED", True)
    code, report = run_doctor(setup.load())
    assert code == 0, report
    assert rows(report, "OK", "DATA fast path") == [
        f"OK     {'DATA fast path':<22} compiled"]
    monkeypatch.setattr(doctor.plainlines, "COMPILED", False)
    code, report = run_doctor(setup.load())
    assert code == 0, report  # mail flows either way
    [warn] = rows(report, "WARN", "DATA fast path")
    assert "regex" in warn
    assert "python3-dev" in fix_after(report, warn)


def test_beside_a_live_relay_its_ports_are_checked_by_asking_it(
        setup: Setup, start_process) -> None:
    setup.doc["metrics"] = {"address": "127.0.0.1", "port": 0}
    setup.write()
    relay = start_process(setup)
    # The file names the ports the relay got (port 0: any), as a real one names its own.
    for listener in setup.doc["listeners"]:
        listener["port"] = setup.port(listener["name"])
    setup.write()
    code, report = run_doctor(setup.load())
    assert code == 0, report
    pid = relay.proc.pid
    for name, port in (("submission", setup.starttls_port),
                       ("submissions", setup.implicit_port)):
        [row] = rows(report, "OK", f"listener {name} ")
        assert f"127.0.0.1:{port}: the running ses-relay (pid {pid}) answers: 220 relay.test" \
            in row, report
    assert rows(report, "OK", "running relay") and rows(report, "OK", "running config")
    [ready] = rows(report, "OK", "relay readiness")
    assert "ready" in ready
    # The file changed since: the doctor says what a reload or a restart would take.
    setup.doc["limits"] = {"max_recipients": 7}
    setup.doc["queue"]["max_age"] = "2h"
    setup.write()
    code, report = run_doctor(setup.load())
    [differs] = rows(report, "WARN", "running config")
    assert "a reload applies limits.max_recipients" in differs
    assert "a restart is needed for queue.max_age" in differs


def region_rows(report: str, status: str, check: str) -> list[str]:
    """rows(), for check names longer than its column (a region appended)."""
    return [line for line in report.splitlines()
            if line.startswith(f"{status} ") and line[7:].startswith(check)]


def test_with_failover_every_region_is_checked_and_an_identity_missing_in_one_fails(
        ses_setup: Callable[..., Setup], moto: Moto) -> None:
    # moto keeps identities per region, as SES does: the sender is verified in us-east-1
    # (the moto fixture) and not in eu-west-1, the failover region.
    setup = ses_setup(SENDER)
    setup.doc["delivery"]["failover"] = [{"region": "eu-west-1", "endpoint_url": moto.url}]
    setup.write()
    code, report = run_doctor(setup.load())
    assert code == 1, report
    [ok] = region_rows(report, "OK", "sender identity [us-east-1]")
    assert f"{SENDER}: verified address" in ok
    [failed] = region_rows(report, "FAIL", "sender identity [eu-west-1]")
    assert f"{SENDER}: not verified in region eu-west-1" in failed
    assert "region eu-west-1" in fix_after(report, failed)
    assert region_rows(report, "OK", "SES quota [eu-west-1]"), report
    assert len(region_rows(report, "OK", "AWS credentials")) == 1  # the same in every region
