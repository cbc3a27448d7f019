"""`ses-relay send`: SES stored templates, to a few addresses or in bulk from a CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from conftest import SENDER, Setup
from fakeses import Failure, FakeSES
from test_cli import run

from relay.suppression import SuppressionList


def setup_for(make_setup, ses: FakeSES) -> Setup:
    return make_setup("sesv2", region="us-east-1", endpoint_url=ses.url)


def test_a_template_goes_to_the_given_addresses_with_its_data(make_setup) -> None:
    with FakeSES() as ses:
        setup = setup_for(make_setup, ses)
        result = run("send", "--config", str(setup.path), "--from", SENDER, "--template",
                     "welcome", "--to", "a@example.net", "--to", "b@example.net",
                     "--data", '{"name": "Ada"}')
        assert result.returncode == 0, result.stderr
        [sent] = ses.templated
    assert sent["to"] == ["a@example.net", "b@example.net"]
    assert (sent["TemplateName"], json.loads(sent["TemplateData"])) == ("welcome",
                                                                        {"name": "Ada"})
    assert result.stdout.strip() == sent["id"]


def test_suppressed_addresses_are_skipped(make_setup) -> None:
    with FakeSES() as ses:
        setup = setup_for(make_setup, ses)
        SuppressionList(Path(setup.doc["suppression"]["database"])).add("a@example.net",
                                                                        "bounce")
        result = run("send", "--config", str(setup.path), "--from", SENDER, "--template",
                     "welcome", "--to", "a@example.net", "--to", "b@example.net")
        assert "skipping a@example.net: suppressed (bounce)" in result.stderr
        assert [s["to"] for s in ses.templated] == [["b@example.net"]]


def test_bulk_sends_in_batches_of_50_and_writes_a_result_per_row(
        make_setup, tmp_path: Path) -> None:
    rows = tmp_path / "list.csv"
    with rows.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["email", "name"])
        for i in range(120):
            w.writerow([f"user{i}@example.net", f"User {i}"])
    with FakeSES() as ses:
        setup = setup_for(make_setup, ses)
        db = SuppressionList(Path(setup.doc["suppression"]["database"]))
        for i in (3, 4, 5):
            db.add(f"user{i}@example.net", "complaint")
        ses.reject_in_bulk = {"user7@example.net"}
        # The second batch is throttled once: it is retried, not failed.
        ses.rule = lambda n: Failure(429, "TooManyRequestsException") if n == 2 else None
        result = run("send", "--config", str(setup.path), "--from", SENDER, "--template",
                     "news", "--bulk", str(rows))
        assert result.returncode == 1  # one row failed
        assert "116 sent, 3 suppressed, 1 failed" in result.stdout
        assert ses.calls == 4  # 117 rows: batches of 50, 50, 17, one of them twice
        sent = {s["to"][0]: json.loads(s["TemplateData"]) for s in ses.templated}
    assert sent["user0@example.net"] == {"name": "User 0"}
    assert len(sent) == 116
    with (tmp_path / "list.results.csv").open() as f:
        results = {r["email"]: r for r in csv.DictReader(f)}
    assert len(results) == 120
    assert results["user3@example.net"]["status"] == "suppressed"
    assert results["user7@example.net"]["status"] == "failed"
    assert results["user8@example.net"]["status"] == "sent"
    assert results["user8@example.net"]["detail"].startswith("fake-")


def test_a_bad_bulk_file_sends_nothing(make_setup, tmp_path: Path) -> None:
    rows = tmp_path / "bad.csv"
    rows.write_text("email,name\nok@example.net,A\nnot an address,B\n")
    with FakeSES() as ses:
        setup = setup_for(make_setup, ses)
        result = run("send", "--config", str(setup.path), "--from", SENDER, "--template",
                     "news", "--bulk", str(rows))
        assert result.returncode == 2
        assert "line 3" in result.stderr
        assert ses.calls == 0


def write_list(path: Path, n: int) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["email", "name"])
        for i in range(n):
            w.writerow([f"user{i}@example.net", f"User {i}"])
    return path


def results_of(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as f:
        return {r["email"]: r for r in csv.DictReader(f)}


def test_bulk_stops_at_the_daily_quota_and_the_same_command_again_sends_only_the_rest(
        make_setup, tmp_path: Path) -> None:
    rows = write_list(tmp_path / "list.csv", 120)
    with FakeSES() as ses:
        setup = setup_for(make_setup, ses)
        # 70 sends left of the account's 24 hours: the run must stop after exactly 70.
        ses.account = {"SendQuota": {"Max24HourSend": 100.0, "MaxSendRate": 1000.0,
                                     "SentLast24Hours": 30.0}}
        command = ("send", "--config", str(setup.path), "--from", SENDER, "--template",
                   "news", "--bulk", str(rows))
        first = run(*command)
        assert first.returncode == 1
        assert "70 sent, 0 suppressed, 0 failed" in first.stdout
        assert "stopped at the account's 24-hour sending quota: 50 rows not sent" in \
            first.stderr
        assert len(ses.templated) == 70
        results = results_of(tmp_path / "list.results.csv")
        assert len(results) == 120
        assert sum(r["status"] == "sent" for r in results.values()) == 70
        assert sum(r["status"] == "unsent" for r in results.values()) == 50

        ses.account = {"SendQuota": {"Max24HourSend": 1000.0, "MaxSendRate": 1000.0,
                                     "SentLast24Hours": 100.0}}  # the window moved on
        second = run(*command)
        assert second.returncode == 0, second.stderr
        assert "(70 sent by an earlier run, skipped)" in second.stdout
        sent = [s["to"][0] for s in ses.templated]
    assert len(sent) == 120 and len(set(sent)) == 120  # each row once, over two runs
    results = results_of(tmp_path / "list.results.csv")
    assert {r["status"] for r in results.values()} == {"sent"}
    assert len(results) == 120


def test_bulk_stops_cleanly_when_ses_says_the_daily_quota_is_used_up(
        make_setup, tmp_path: Path) -> None:
    rows = write_list(tmp_path / "list.csv", 120)
    with FakeSES() as ses:
        setup = setup_for(make_setup, ses)  # no GetAccount answer: the quota is unknown
        ses.rule = lambda n: (Failure(400, "Throttling", "Daily message quota exceeded.")
                              if n >= 2 else None)
        result = run("send", "--config", str(setup.path), "--from", SENDER, "--template",
                     "news", "--bulk", str(rows))
        assert result.returncode == 1
        assert ses.calls == 2  # nothing tried after SES said so
    results = results_of(tmp_path / "list.results.csv")
    assert sum(r["status"] == "sent" for r in results.values()) == 50
    assert sum(r["status"] == "unsent" for r in results.values()) == 70  # not "failed"


def test_template_sends_use_the_default_configuration_set_tags_and_from_arn(
        make_setup, tmp_path: Path) -> None:
    rows = write_list(tmp_path / "list.csv", 3)
    arn = "arn:aws:ses:us-east-1:123456789012:identity/example.com"
    with FakeSES() as ses:
        setup = make_setup("sesv2", region="us-east-1", endpoint_url=ses.url, from_arn=arn)
        setup.doc["policy"] = {"configuration_set": "marketing",
                               "tags": {"app": "crm", "env": "prod"}}
        setup.write()
        common = ("send", "--config", str(setup.path), "--from", SENDER, "--template", "news")
        assert run(*common, "--bulk", str(rows)).returncode == 0
        assert run(*common, "--to", "one@example.net").returncode == 0
        chosen = run(*common, "--to", "two@example.net", "--configuration-set", "other")
        assert chosen.returncode == 0
        options = [(s["configuration_set"], s["tags"], s["from_arn"]) for s in ses.templated]
    tags = {"app": "crm", "env": "prod"}
    assert options == [("marketing", tags, arn)] * 4 + [("other", tags, arn)]


def test_a_template_send_over_the_quota_left_is_not_sent(make_setup) -> None:
    with FakeSES() as ses:
        setup = setup_for(make_setup, ses)
        ses.account = {"SendQuota": {"Max24HourSend": 200.0, "MaxSendRate": 14.0,
                                     "SentLast24Hours": 199.0}}
        result = run("send", "--config", str(setup.path), "--from", SENDER, "--template",
                     "welcome", "--to", "a@example.net", "--to", "b@example.net")
        assert result.returncode == 1
        assert "2 recipients, 1 left in the account's 24-hour sending quota" in result.stderr
        assert ses.calls == 0


def test_a_results_file_that_cannot_be_used_stops_the_run_before_it_sends(
        make_setup, tmp_path: Path) -> None:
    rows = write_list(tmp_path / "list.csv", 3)
    (tmp_path / "a-folder").mkdir()
    with FakeSES() as ses:
        setup = setup_for(make_setup, ses)
        result = run("send", "--config", str(setup.path), "--from", SENDER, "--template",
                     "news", "--bulk", str(rows), "--results", str(tmp_path / "a-folder"))
        assert result.returncode == 1
        assert "ses-relay: the results file:" in result.stderr
        assert "Traceback" not in result.stderr
        assert ses.calls == 0
