"""Queue entries whose envelope or delivery state is not what the queue writes (wrong
types, JSON nested 100,000 deep) go to corrupt/ once, with a log line, and the rest of the
queue is delivered: no delivery_bug, no retry loop."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from conftest import SENDER, Setup, events, wait_until

from relay.spool import Envelope, Spool

MAGIC = b"\nSESRELAY1 "
GOOD = Envelope(mail_from=SENDER, rcpt_tos=("a@example.net",), user="app")
DEEP = b"[" * 100_000 + b"]" * 100_000


def entry(spool_dir: Path, qid: str, envelope_json: bytes) -> None:
    """A committed entry, written the way Draft writes one, with this envelope text."""
    message = b"Subject: crafted\r\n\r\nbody\r\n"
    trailer = envelope_json + MAGIC + b"%010d\n" % len(envelope_json)
    (spool_dir / "active" / qid).write_bytes(message + trailer)


def commit(spool: Spool, subject: str) -> str:
    draft = spool.draft()
    draft.write(f"Subject: {subject}\r\n\r\nbody\r\n".encode())
    return asyncio.run(spool.commit(draft, GOOD))


def good_envelope(**changes: object) -> bytes:
    d = json.loads(GOOD.to_json())
    d.update(changes)
    return json.dumps(d).encode()


BAD_ENVELOPES = {
    "deeply nested": DEEP,
    "deeply nested, unclosed": b"[" * 100_000,
    "deeply nested recipient": good_envelope(rcpt_tos=[]).replace(b"[]", DEEP),
    "user not a string": good_envelope(user=5),
    "peer a list": good_envelope(peer=["127.0.0.1"]),
    "tags of numbers": good_envelope(tags=[[1, 2]]),
    "no_dsn a string": good_envelope(no_dsn="no"),
    "not utf-8": good_envelope(user="cafe").replace(b"cafe", b"caf\xe9"),
    "CR LF in a recipient": good_envelope(rcpt_tos=["a@example.net\r\nRSET"]),
    "NUL in the sender": good_envelope(mail_from="sender@example.com\x00"),
}

BAD_STATES = {
    "attempts a string": {"attempts": "3"},
    "attempts a boolean": {"attempts": True},
    "last_attempt a string": {"last_attempt": "yesterday"},
    "last_attempt beyond a float": {"last_attempt": 10**400},
    "last_error a number": {"last_error": 7},
    "done a list": {"done": ["a@example.net"]},
    "done of numbers": {"done": {"a@example.net": 1}},
    "rejected not triples": {"rejected": {"a@example.net": "550"}},
    "last_deferred not triples": {"last_deferred": {"a@example.net": [450]}},
    "state a list": [],
}


def test_entries_with_bad_envelopes_or_states_go_to_corrupt_once(
        setup: Setup, start_relay, logs) -> None:
    spool = Spool(setup.queue_dir)
    spool.open()
    before = commit(spool, "good, first")
    bad: dict[str, str] = {}
    for case, raw in BAD_ENVELOPES.items():
        qid = bad[case] = commit(spool, case)
        entry(setup.queue_dir, qid, raw)
    for case, state in BAD_STATES.items():
        qid = bad[case] = commit(spool, case)
        (setup.queue_dir / "state" / f"{qid}.json").write_text(json.dumps(state))
    qid = bad["state nested deeply"] = commit(spool, "state nested deeply")
    (setup.queue_dir / "state" / f"{qid}.json").write_bytes(DEEP)
    after = commit(spool, "good, last")

    start_relay(setup)
    corrupt = setup.queue_dir / "corrupt"
    wait_until(lambda: len(events(logs, "quarantined")) == len(bad)
               and len(events(logs, "delivered")) == 2, timeout=20)
    for case, qid in bad.items():
        assert (corrupt / qid).exists(), case
        assert not (setup.queue_dir / "active" / qid).exists(), case
    quarantined = events(logs, "quarantined")
    assert sorted(e["queue_id"] for e in quarantined) == sorted(bad.values())  # once each
    assert sorted(e["queue_id"] for e in events(logs, "delivered")) == sorted([before, after])
    assert events(logs, "delivery_bug") == []
    assert events(logs, "queue_read_failed") == []
    for e in quarantined:
        assert "bad envelope" in e["reason"] or "bad delivery state" in e["reason"], e


def test_an_empty_state_file_is_a_fresh_start_not_corruption(
        setup: Setup, start_relay, logs) -> None:
    # What a machine stopping between creating and writing an attempt count leaves.
    spool = Spool(setup.queue_dir)
    spool.open()
    qid = commit(spool, "empty state")
    (setup.queue_dir / "state" / f"{qid}.json").write_bytes(b"")
    start_relay(setup)
    wait_until(lambda: events(logs, "delivered"))
    assert [e["queue_id"] for e in events(logs, "delivered")] == [qid]
    assert events(logs, "quarantined") == []


def test_queue_commands_list_and_show_such_entries_without_a_traceback(setup: Setup) -> None:
    import subprocess

    from conftest import ses_relay_exe

    spool = Spool(setup.queue_dir)
    spool.open()
    deep = commit(spool, "deep envelope")
    entry(setup.queue_dir, deep, DEEP)
    typed = commit(spool, "bad state")
    (setup.queue_dir / "state" / f"{typed}.json").write_text('{"attempts": "3"}')

    def queue(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ses_relay_exe(), "queue", *args, "--config", str(setup.path)],
                              capture_output=True, text=True, timeout=60)

    listed = queue("list")
    assert listed.returncode == 0, listed.stderr
    assert typed in listed.stdout and deep not in listed.stdout
    shown = queue("show", deep)
    assert shown.returncode == 1 and "bad envelope" in shown.stderr, shown.stderr
    for result in (listed, shown, queue("show", typed)):
        assert "Traceback" not in result.stderr
