"""The durable queue: commit, recovery after a crash, corrupt entries."""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import os
import threading
import time
from dataclasses import fields
from pathlib import Path

import pytest
from conftest import SENDER, Setup, events, wait_until

from relay import groupcommit
from relay import spool as spool_mod
from relay.errors import CorruptEntry, SpoolError
from relay.spool import DeliveryState, Envelope, Spool, new_queue_id, queue_id_time

ENVELOPE = Envelope(mail_from=SENDER, rcpt_tos=("a@example.net", "b@example.net"), user="app")


def commit(spool: Spool, data: bytes, envelope: Envelope = ENVELOPE) -> str:
    draft = spool.draft()
    draft.write(data)
    return asyncio.run(spool.commit(draft, envelope))


def test_a_committed_message_reads_back_exactly(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    data = b"Subject: x\r\n\r\n" + bytes(range(256)) * 10 + b"\r\n"
    qid = commit(spool, data)
    assert (tmp_path / "active" / qid).exists()
    assert list((tmp_path / "tmp").iterdir()) == []
    assert spool.read(qid) == (ENVELOPE, data)


def test_a_commit_fsyncs_the_file_then_renames_it_then_fsyncs_the_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Promise 1 rests on this order: the rename only once the file is on disk, and the
    # rename durable only through an fsync of active/ that started after it.
    calls: list[str] = []
    spool = Spool(tmp_path / "queue")
    spool.open()
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        calls.append("fsync file")
        real_fsync(fd)

    def rename(src: str, dst: str) -> None:
        calls.append(f"rename to {Path(dst).parent.name}")
        real_rename(src, dst)

    def fsync_dir(path: str) -> None:
        calls.append(f"fsync {Path(path).name}")
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            real_fsync(fd)
        finally:
            os.close(fd)

    monkeypatch.setattr(spool_mod.os, "fsync", fsync)
    monkeypatch.setattr(spool_mod.os, "rename", rename)
    monkeypatch.setattr(groupcommit, "fsync_dir", fsync_dir)
    queue_id = commit(spool, b"Subject: x\r\n\r\nbody\r\n")
    assert calls == ["fsync file", "rename to active", "fsync active"]
    assert (spool.active / queue_id).exists()


def test_a_failed_folder_fsync_fails_the_commit_and_leaves_no_draft(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fsync_dir(path: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(groupcommit, "fsync_dir", fsync_dir)
    spool = Spool(tmp_path / "queue")
    spool.open()
    with pytest.raises(SpoolError, match="Input/output error"):
        commit(spool, b"Subject: x\r\n\r\nbody\r\n")
    assert list(spool.tmp.iterdir()) == []


def test_a_commit_goes_on_whole_when_the_client_hangs_up_during_its_fsync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The SMTP side's task is cancelled when the client goes, and its finally aborts the
    # draft: that must not pull the file out from under the fsync running for it.
    release = threading.Event()
    real_fsync = spool_mod.os.fsync

    def slow_fsync(fd: int) -> None:
        release.wait(5)
        real_fsync(fd)

    monkeypatch.setattr(spool_mod.os, "fsync", slow_fsync)
    spool = Spool(tmp_path)
    spool.open()
    errors: list[dict[str, object]] = []

    async def main() -> str:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        draft = spool.draft()
        draft.write(b"Subject: x\r\n\r\nbody\r\n")
        session = asyncio.create_task(spool.commit(draft, ENVELOPE))
        await asyncio.sleep(0.1)  # in the fsync now
        session.cancel()
        with pytest.raises(asyncio.CancelledError):
            await session
        draft.abort()  # as RelaySMTP.smtp_DATA's finally does
        release.set()
        await asyncio.to_thread(wait_until, lambda: (tmp_path / "active" / draft.queue_id).exists())
        return draft.queue_id

    qid = asyncio.run(main())
    assert spool.read(qid) == (ENVELOPE, b"Subject: x\r\n\r\nbody\r\n")
    assert list((tmp_path / "tmp").iterdir()) == []
    assert errors == []  # no "Task exception was never retrieved"


def test_a_commit_that_fails_after_its_client_hung_up_leaves_no_unread_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nobody awaits the commit any more; its failure must still be read (and the draft
    # cleaned up), or asyncio reports "Task exception was never retrieved".
    release = threading.Event()

    def failing_fsync(fd: int) -> None:
        release.wait(5)
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(spool_mod.os, "fsync", failing_fsync)
    spool = Spool(tmp_path)
    spool.open()
    errors: list[dict[str, object]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        draft = spool.draft()
        draft.write(b"Subject: x\r\n\r\nbody\r\n")
        session = asyncio.create_task(spool.commit(draft, ENVELOPE))
        await asyncio.sleep(0.1)  # in the fsync now
        session.cancel()
        with pytest.raises(asyncio.CancelledError):
            await session
        draft.abort()
        release.set()
        await asyncio.to_thread(wait_until, lambda: not list((tmp_path / "tmp").iterdir()))
        await asyncio.sleep(0.05)
        gc.collect()  # an unread failure is reported when its task is collected

    asyncio.run(main())
    assert [e["message"] for e in errors if "never retrieved" in str(e["message"])] == []
    assert list((tmp_path / "active").iterdir()) == []


def test_drafts_never_committed_are_dropped_at_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    draft = spool.draft()
    draft.write(b"x" * 300 * 1024)  # large enough to be written as it arrives
    draft._file.flush()  # type: ignore[union-attr]  # as if the process died here
    kept = commit(spool, b"Subject: kept\r\n\r\n")
    assert Spool(tmp_path).open() == [kept]  # as after a crash: a new process opens it
    draft._file.close()  # type: ignore[union-attr]
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("damage", ["truncated", "garbage", "bad_envelope"])
def test_incomplete_or_garbled_entries_are_detected(tmp_path: Path, damage: str) -> None:
    spool = Spool(tmp_path)
    spool.open()
    qid = commit(spool, b"Subject: x\r\n\r\nbody\r\n")
    path = tmp_path / "active" / qid
    blob = path.read_bytes()
    path.write_bytes({"truncated": blob[:-5], "garbage": b"\x00" * 40,
                      "bad_envelope": blob.replace(b'"mail_from"', b'"mail_frum"')}[damage])
    with pytest.raises(CorruptEntry):
        spool.read(qid)
    claim = spool.claim(qid)  # the delivery side reads a small entry in one piece
    assert claim is not None
    with pytest.raises(CorruptEntry):
        claim.read()
    claim.release()


def test_queue_ids_sort_by_arrival_and_carry_their_time() -> None:
    t = 1_790_000_000.25
    first, second = new_queue_id(t), new_queue_id(t + 1)
    assert first < second
    assert queue_id_time(first) == pytest.approx(t)


def test_messages_queued_before_start_are_delivered(setup: Setup, start_relay, logs) -> None:
    # chasquid's t-03: an item in the queue before start is delivered after start.
    spool = Spool(setup.queue_dir)
    spool.open()
    qid = commit(spool, b"Subject: from a previous life\r\n\r\nbody\r\n")
    start_relay(setup)
    deadline = time.monotonic() + 10
    while not list(setup.outbox_dir.glob("*.eml")) and time.monotonic() < deadline:
        time.sleep(0.02)
    [eml] = setup.outbox_dir.glob("*.eml")
    assert eml.read_bytes() == b"Subject: from a previous life\r\n\r\nbody\r\n"
    assert json.loads(eml.with_suffix(".json").read_text())["rcpt_tos"] == list(ENVELOPE.rcpt_tos)
    wait_until(lambda: events(logs, "delivered"))
    assert [e["queue_id"] for e in events(logs, "delivered")] == [qid]
    # Removed right after the "delivered" line is written.
    wait_until(lambda: list((setup.queue_dir / "active").iterdir()) == [])


def test_a_corrupt_entry_is_quarantined_and_the_rest_delivered(
        setup: Setup, start_relay, logs) -> None:
    spool = Spool(setup.queue_dir)
    spool.open()
    good = commit(spool, b"Subject: good\r\n\r\nbody\r\n")
    bad = commit(spool, b"Subject: bad\r\n\r\nbody\r\n")
    (setup.queue_dir / "active" / bad).write_bytes(b"Subject: bad\r\n\r\nbo")  # torn write
    stray = setup.queue_dir / "active" / "not-a-queue-file"
    stray.write_bytes(b"?")
    start_relay(setup)
    deadline = time.monotonic() + 10
    while not (setup.queue_dir / "corrupt" / bad).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (setup.queue_dir / "corrupt" / bad).exists()
    assert (setup.queue_dir / "corrupt" / "not-a-queue-file").exists()
    # The file moves first, the log line follows: wait for the line, not the file.
    wait_until(lambda: events(logs, "delivered") and events(logs, "quarantined"))
    assert [e["queue_id"] for e in logs if e["event"] == "delivered"] == [good]
    assert [e["queue_id"] for e in logs if e["event"] == "quarantined"] == [bad]


def test_a_held_message_keeps_its_delivery_progress_across_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    qid = commit(spool, b"Subject: half sent\r\n\r\nbody\r\n")
    spool.save_state(qid, DeliveryState(done={"a@example.net": "ses-1"}), durable=True)
    spool.hold(qid)
    Spool(tmp_path).open()  # a restart while it is held
    spool.release(qid)
    assert spool.load_state(qid).done == {"a@example.net": "ses-1"}


def test_the_envelope_record_carries_every_field_and_reads_back_equal() -> None:
    envelope = Envelope(mail_from=SENDER, rcpt_tos=("a@example.net",), user="app",
                        peer="127.0.0.1", listener="submission", configuration_set="cs",
                        tags=(("campaign", "x"),), no_dsn=True)
    assert set(json.loads(envelope.to_json())) == {f.name for f in fields(Envelope)}
    assert Envelope.from_json(envelope.to_json()) == envelope
