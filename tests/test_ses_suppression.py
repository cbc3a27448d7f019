"""SES's account suppression list: sync both ways, and backend: ses for several relays."""

from __future__ import annotations

from pathlib import Path

from clients import implicit
from conftest import PASSWORD, SENDER, USER, Setup, wait_until
from fakeses import FakeSES
from test_cli import run
from test_feedback_e2e import SIGNER, post, ses_event, start_with_webhook

from relay.suppression import SuppressionList


def local(setup: Setup) -> SuppressionList:
    return SuppressionList(Path(setup.doc["suppression"]["database"]))


def test_sync_from_ses_pages_through_the_account_list(make_setup) -> None:
    with FakeSES() as ses:
        ses.suppressed = [("a@example.net", "BOUNCE"), ("b@example.net", "COMPLAINT"),
                          ("C@Example.net", "BOUNCE")]
        setup: Setup = make_setup("sesv2", region="us-east-1", endpoint_url=ses.url)
        result = run("suppress", "sync", "--from-ses", "--config", str(setup.path))
        assert result.returncode == 0, result.stderr
        assert "3 new entries" in result.stdout
        again = run("suppress", "sync", "--from-ses", "--config", str(setup.path))
        assert "0 new entries" in again.stdout
    entries = {e.address: (e.reason, e.source) for e in local(setup).entries()}
    assert entries == {"a@example.net": ("bounce", "ses-account"),
                       "b@example.net": ("complaint", "ses-account"),
                       "c@example.net": ("bounce", "ses-account")}


def test_sync_to_ses_puts_addresses_but_not_domains(make_setup) -> None:
    with FakeSES() as ses:
        setup: Setup = make_setup("sesv2", region="us-east-1", endpoint_url=ses.url)
        db = local(setup)
        db.add("x@example.net", "complaint")
        db.add("y@example.net", "manual")
        db.add("@gone.example", "manual")
        result = run("suppress", "sync", "--to-ses", "--config", str(setup.path))
        assert "pushed to SES: 2 addresses" in result.stdout
        assert sorted(ses.suppressed_put) == [("x@example.net", "COMPLAINT"),
                                              ("y@example.net", "BOUNCE")]


def test_backend_ses_refuses_what_ses_suppresses_and_shares_what_it_learns(
        make_setup, start_relay, logs) -> None:
    with FakeSES() as ses:
        ses.suppressed = [("shared@example.net", "BOUNCE")]
        setup: Setup = make_setup("sesv2", region="us-east-1", endpoint_url=ses.url)
        setup.doc["suppression"]["backend"] = "ses"
        _, port = start_with_webhook(setup, start_relay)
        wait_until(lambda: local(setup).lookup("shared@example.net") is not None)
        with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
            s.mail(SENDER)
            assert s.rcpt("shared@example.net")[0] == 550
        doc = SIGNER.notification(message=ses_event("Complaint", "m-1", ["new@example.net"]),
                                  message_id="sns-share")
        assert post(port, doc) == 200
        wait_until(lambda: ("new@example.net", "COMPLAINT") in ses.suppressed_put)
