"""Feedback events applied to a real suppression list."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import events

from relay.feedback.notifications import Event, parse_event
from relay.feedback.processor import FeedbackProcessor
from relay.suppression import SuppressionList

FIXTURES = Path(__file__).parent / "feedback"
DAY = 86400.0


def event(name: str) -> Event:
    return parse_event((FIXTURES / f"{name}.json").read_text())


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def suppression(tmp_path: Path) -> Iterator[SuppressionList]:
    db = SuppressionList(tmp_path / "suppression.sqlite3")
    yield db
    db.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def processor(suppression: SuppressionList, clock: Clock) -> Iterator[FeedbackProcessor]:
    p = FeedbackProcessor(suppression, transient_bounce_limit=3, transient_window=7 * DAY,
                          clock=clock)
    yield p
    p.close()


def entries(suppression: SuppressionList) -> list[tuple[str, str, str]]:
    return [(e.address, e.reason, e.source) for e in suppression.entries()]


def test_permanent_bounce_suppresses_every_bounced_recipient(
        processor: FeedbackProcessor, suppression: SuppressionList,
        logs: list[dict[str, Any]]) -> None:
    actions = processor.process(event("bounce-permanent"))
    source = "ses:0100017c0a1b2c3d-perm-000000"
    assert entries(suppression) == [("jane@example.com", "bounce", source),
                                    ("richard@example.com", "bounce", source)]
    assert actions == [f"suppressed jane@example.com (bounce, {source})",
                       f"suppressed richard@example.com (bounce, {source})"]
    logged = events(logs, "feedback_suppressed")
    assert [e["address"] for e in logged] == ["jane@example.com", "richard@example.com"]
    assert "secret body-ish header" not in repr(logs)


def test_account_suppression_list_bounce_is_recorded_as_such(
        processor: FeedbackProcessor, suppression: SuppressionList) -> None:
    processor.process(event("bounce-account-list"))
    assert entries(suppression) == [
        ("listed@example.com", "bounce",
         "ses:account-suppression-list:0100017c0a1b2c3d-acct-000000")]


def test_complaint_suppresses_the_complainer_only(processor: FeedbackProcessor,
                                                  suppression: SuppressionList) -> None:
    processor.process(event("complaint"))
    assert entries(suppression) == [
        ("angry@example.com", "complaint", "ses:0100017c0a1b2c3d-compl-000000")]


def transient(n: int) -> Event:
    return replace(event("bounce-transient"), feedback_id=f"transient-{n}")


def test_transient_bounces_suppress_only_past_the_limit(
        processor: FeedbackProcessor, suppression: SuppressionList, clock: Clock,
        logs: list[dict[str, Any]]) -> None:
    for n in range(3):
        assert processor.process(transient(n)) == [f"counted full@example.com ({n + 1}/3)"]
        clock.now += DAY
    assert len(suppression) == 0
    assert processor.process(transient(3))[0].startswith("suppressed full@example.com")
    assert entries(suppression) == [("full@example.com", "bounce",
                                     "ses:transient:transient-3")]
    assert [e["count"] for e in events(logs, "feedback_counted")] == [1, 2, 3, 4]


def test_transient_bounces_outside_the_window_are_forgotten(
        processor: FeedbackProcessor, suppression: SuppressionList, clock: Clock) -> None:
    for n in range(8):
        processor.process(transient(n))
        clock.now += 3 * DAY  # never more than three within seven days
    assert len(suppression) == 0


def test_a_redelivered_transient_bounce_counts_once(processor: FeedbackProcessor,
                                                   suppression: SuppressionList) -> None:
    for _ in range(5):
        processor.process(transient(0))
    assert processor.process(transient(1)) == ["counted full@example.com (2/3)"]
    assert len(suppression) == 0


def test_undetermined_bounces_are_counted_like_transient_ones(
        processor: FeedbackProcessor) -> None:
    undetermined = replace(transient(0), bounce_type="Undetermined")
    assert processor.process(undetermined) == ["counted full@example.com (1/3)"]


def test_transient_counts_survive_a_restart_when_kept_in_a_file(
        suppression: SuppressionList, clock: Clock, tmp_path: Path) -> None:
    for n in range(4):
        p = FeedbackProcessor(suppression, clock=clock, counts_path=tmp_path / "counts.db")
        p.process(transient(n))
        p.close()
    assert [e.address for e in suppression.entries()] == ["full@example.com"]


@pytest.mark.parametrize("name", ["delivery", "send", "open", "click", "reject",
                                  "delivery-delay"])
def test_other_events_change_nothing(processor: FeedbackProcessor,
                                     suppression: SuppressionList, name: str,
                                     logs: list[dict[str, Any]]) -> None:
    [action] = processor.process(event(name))
    assert action.startswith("ignored")
    assert len(suppression) == 0
    assert events(logs, "feedback_ignored")[0]["ses_message_id"].startswith("0100017c-")


def test_bounce_of_unknown_type_or_without_recipients_changes_nothing(
        processor: FeedbackProcessor, suppression: SuppressionList) -> None:
    bounce = event("bounce-permanent")
    assert processor.process(replace(bounce, bounce_type="Sideways"))[0].startswith("ignored")
    assert processor.process(replace(bounce, recipients=()))[0].startswith("ignored")
    assert len(suppression) == 0


def test_malformed_address_never_suppresses_a_domain(processor: FeedbackProcessor,
                                                     suppression: SuppressionList) -> None:
    bounce = replace(event("bounce-permanent"),
                     recipients=("@example.com", "no-at-sign", "ok@example.com"))
    actions = processor.process(bounce)
    assert [a.split()[0] for a in actions] == ["ignored", "ignored", "suppressed"]
    assert [e.address for e in suppression.entries()] == ["ok@example.com"]


def test_addresses_are_matched_case_insensitively_for_counting(
        processor: FeedbackProcessor) -> None:
    processor.process(transient(0))
    upper = replace(transient(1), recipients=("FULL@Example.com",))
    assert processor.process(upper) == ["counted FULL@Example.com (2/3)"]

