"""`ses-relay events import-insights`: SES's Message Insights exports into the event store,
against a stand-in for the export API and its download (tests/fakeinsights.py)."""

from __future__ import annotations

import datetime
import gzip
import json
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import Setup
from fakeinsights import FakeInsights
from test_cli import run

from relay.events import EventStore
from relay.insights import insight_rows, parse_records


def setup_for(make_setup, fake: FakeInsights) -> Setup:
    return make_setup("sesv2", region="us-east-1", endpoint_url=fake.url)


def iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat()


def database(setup: Setup) -> Path:
    return Path(setup.doc["feedback"]["database"])


def stored(setup: Setup) -> int:
    with sqlite3.connect(database(setup)) as db:
        return int(db.execute("SELECT count(DISTINCT ses_message_id) FROM insights")
                   .fetchone()[0])


def cursor_of(setup: Setup) -> float | None:
    store = EventStore(database(setup))
    try:
        return store.insights_cursor()
    finally:
        store.close()


def test_a_range_over_the_10000_record_limit_is_split_and_every_record_stored_once(
        make_setup) -> None:
    hour = 3600.0
    t0 = (time.time() // hour - 2) * hour  # two to three hours ago, on the hour
    with FakeInsights() as fake:
        setup = setup_for(make_setup, fake)
        ids = fake.add(25_000, t0, hour)  # all in the first hour
        result = run("events", "import-insights", "--since", iso(t0), "--range", "1h",
                     "--config", str(setup.path))
        assert result.returncode == 0, result.stderr
        # 1 h: full; its halves (12,500 each): full; the quarters (6,250) fit; then the
        # later hours up to now, one export each.
        spans = sorted(j.end - j.start for j in fake.jobs[:7])
        assert spans == [900.0] * 4 + [1800.0] * 2 + [3600.0]
        assert all(j.end - j.start <= 3600.0 for j in fake.jobs[7:])
        assert {j.max_results for j in fake.jobs} == {10_000}
    assert "(25000 new)" in result.stdout
    assert "processing" in result.stderr  # progress while SES works on the first job
    assert "split in halves" in result.stderr
    assert stored(setup) == 25_000
    trace = run("trace", ids[12_345], "--config", str(setup.path))
    assert "insights" in trace.stdout and "last_delivery=DELIVERY" in trace.stdout


def test_an_import_goes_on_from_where_the_last_stopped_and_stores_each_record_once(
        make_setup) -> None:
    now = time.time()
    with FakeInsights() as fake:
        setup = setup_for(make_setup, fake)
        fake.add(30, now - 3 * 3600 + 60, 1800, prefix="early")
        first = run("events", "import-insights", "--since", "3h", "--config",
                    str(setup.path))
        assert first.returncode == 0, first.stderr
        assert "(30 new)" in first.stdout
        cursor = cursor_of(setup)
        assert cursor is not None and cursor >= now - 1  # where it stopped: its start time

        # SES knows of more since, some of it from before where the import stopped.
        fake.add(5, cursor - 600, 10, prefix="late")
        jobs_before = len(fake.jobs)
        second = run("events", "import-insights", "--config", str(setup.path))
        assert second.returncode == 0, second.stderr
        assert "(5 new)" in second.stdout
        # Without --since: from the cursor, less the default --lookback of 1h.
        assert fake.jobs[jobs_before].start == pytest.approx(cursor - 3600, abs=0.01)

        again = run("events", "import-insights", "--since", "4h", "--config",
                    str(setup.path))
        assert again.returncode == 0, again.stderr
        assert "(0 new)" in again.stdout
    assert stored(setup) == 35


def test_trace_shows_the_imported_insights_of_a_message_the_relay_sent(
        make_setup) -> None:
    now = time.time()
    with FakeInsights() as fake:
        setup = setup_for(make_setup, fake)
        [mid] = fake.add(1, now - 1800, 1, prefix="sent")
        store = EventStore(database(setup))
        store.step("Q0000000000000001", "delivered", ses_message_id=mid,
                   rcpts=["sent0@example.net"])
        store.close()
        result = run("events", "import-insights", "--since", "1h", "--config",
                     str(setup.path))
        assert result.returncode == 0, result.stderr
    for key in ("Q0000000000000001", mid, "sent0@example.net"):
        trace = run("trace", key, "--config", str(setup.path))
        assert trace.returncode == 0, trace.stderr
        [line] = [x for x in trace.stdout.splitlines() if " insights " in x]
        assert f"ses_message_id={mid}" in line
        assert "recipient=sent0@example.net" in line
        assert "isp=Gmail last_delivery=DELIVERY last_engagement=OPEN" in line
        assert "delivered" in trace.stdout


def test_a_failed_export_job_is_reported_and_the_import_stays_where_it_was(
        make_setup) -> None:
    with FakeInsights() as fake:
        setup = setup_for(make_setup, fake)
        fake.add(3, time.time() - 1800, 60)
        fake.fail = "Virtual Deliverability Manager is not enabled"
        result = run("events", "import-insights", "--since", "1h", "--config",
                     str(setup.path))
        assert result.returncode == 1
        assert fake.downloads == 0
    assert "failed: Virtual Deliverability Manager is not enabled" in result.stderr
    assert "Traceback" not in result.stderr
    assert cursor_of(setup) is None
    assert stored(setup) == 0


@pytest.mark.parametrize("bad", [["--range", "soon"], ["--since", "yesterday-ish"],
                                 ["--lookback", "forever"]])
def test_a_bad_option_is_refused_and_changes_nothing(make_setup, bad: list[str]) -> None:
    with FakeInsights() as fake:
        setup = setup_for(make_setup, fake)
        result = run("events", "import-insights", *bad, "--config", str(setup.path))
        assert result.returncode == 2
        assert fake.jobs == []


def test_export_files_are_read_in_each_shape_ses_may_give() -> None:
    """JSON Lines (gzip or not), a JSON array of GetMessageInsights-shaped records, CSV."""
    lines = b'{"messageId": "a", "destination": "A@example.net"}\n{"no_id": 1}\n'
    array = json.dumps([{"MessageId": "b", "Insights": [{"Destination": "b@example.net",
                         "Events": [{"Type": "SEND", "Timestamp": 1790000000.0}]}]}])
    csv_text = b"message_id,destination,isp\nc,c@example.net,Yahoo\n"
    got = [(mid, rcpt) for body, fmt in ((lines, "JSON"), (gzip.compress(lines), "JSON"),
                                         (array.encode(), "JSON"), (csv_text, "CSV"))
           for mid, rcpt, _, _ in insight_rows(parse_records(body, fmt))]
    assert got == [("a", "a@example.net"), ("a", "a@example.net"), ("b", ""),
                   ("c", "c@example.net")]
    [(_, _, at, _)] = list(insight_rows(json.loads(array)))
    assert at == 1790000000.0


def test_an_import_without_a_region_is_refused(make_setup) -> None:
    setup = make_setup("outbox")  # no delivery.region: nothing says which SES to ask
    result = run("events", "import-insights", "--config", str(setup.path))
    assert result.returncode == 2
    assert "needs delivery.region" in result.stderr
    assert cursor_of(setup) is None
