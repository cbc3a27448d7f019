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
