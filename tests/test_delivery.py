"""The scheduler's bookkeeping across recipient chunks, with a scripted transport (the
per-recipient refusals of an SMTP upstream, in chunks, without 50+ real recipients)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import wait_until

from relay.config import QueueConfig
from relay.delivery import Scheduler
from relay.errors import DeliveryError
from relay.spool import Envelope, Spool
from relay.transports.base import Quota, SendResult


class Chunked:
    """Two recipients per call; refuses *deferred* with a 451 once, accepts the rest."""

    name = "scripted"
    max_message_size = 10 * 2**20
    max_recipients = 2
    memory_per_byte = 1.0

    def __init__(self, deferred: str) -> None:
        self.deferred = deferred
        self.calls: list[tuple[str, ...]] = []

    async def start(self) -> None: ...

    async def send(self, envelope: Envelope, data: bytes) -> SendResult:
        self.calls.append(envelope.rcpt_tos)
        refused = {}
        if self.deferred in envelope.rcpt_tos and len(self.calls) == 1:
            refused[self.deferred] = DeliveryError("451 try later", permanent=False,
                                                   code="451", hint="deferred")
        return SendResult(f"id-{len(self.calls)}", refused)

    async def quota(self) -> Quota | None:
        return None

    async def aclose(self) -> None: ...


def test_a_recipient_deferred_in_one_chunk_is_retried_after_later_chunks_succeed(
        tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    transport = Chunked(deferred="a@example.net")

    async def main() -> None:
        draft = spool.draft()
        draft.write(b"Subject: chunks\r\n\r\nbody\r\n")
        qid = await spool.commit(draft, Envelope(
            "s@example.com", ("a@example.net", "b@example.net", "c@example.net")))
        scheduler = Scheduler(spool, transport, QueueConfig(min_backoff=0.1, max_backoff=0.2),
                              concurrency=1)
        scheduler.enqueue(qid)
        await scheduler.start()
        try:
            await asyncio.to_thread(wait_until, lambda: not (tmp_path / "active" / qid).exists(),
                                    5)
        finally:
            await scheduler.stop()

    asyncio.run(main())
    spool.close()
    # a was deferred in the first chunk, c went in the second: a is tried again, alone.
    assert transport.calls == [("a@example.net", "b@example.net"), ("c@example.net",),
                               ("a@example.net",)]
    assert list((tmp_path / "active").iterdir()) == []
    assert list((tmp_path / "failed").iterdir()) == []


class Heavy(Chunked):
    """Holds four bytes per message byte while it sends, and records how many sends
    overlap; each send waits for the test to let it go."""

    memory_per_byte = 4.0

    def __init__(self) -> None:
        super().__init__(deferred="")
        self.active = 0
        self.most = 0
        self.go = asyncio.Event()

    async def send(self, envelope: Envelope, data: bytes) -> SendResult:
        self.active += 1
        self.most = max(self.most, self.active)
        try:
            await self.go.wait()
            return await super().send(envelope, data)
        finally:
            self.active -= 1


def test_the_in_flight_budget_counts_what_the_transport_holds_not_raw_bytes(
        tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    transport = Heavy()
    message = b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * 10_000  # 0.8 MB each

    async def main() -> None:
        qids = []
        for _ in range(3):
            draft = spool.draft()
            draft.write(message)
            qids.append(await spool.commit(draft, Envelope("s@example.com",
                                                           ("a@example.net",))))
        # Raw, the three fit a 3 MB budget at once; at four bytes a byte, one at a time.
        scheduler = Scheduler(spool, transport, QueueConfig(min_backoff=0.1, max_backoff=0.2),
                              concurrency=3, max_inflight_bytes=3 * 2**20)
        for qid in qids:
            scheduler.enqueue(qid)
        await scheduler.start()
        try:
            await asyncio.sleep(0.3)  # time for every worker to take a message, if allowed
            transport.go.set()
            await asyncio.to_thread(wait_until, lambda: len(transport.calls) == 3, 5)
        finally:
            await scheduler.stop()

    asyncio.run(main())
    spool.close()
    assert transport.most == 1


def test_while_delivery_is_paused_no_message_is_held_back_from_an_operator(
        tmp_path: Path) -> None:
    # A pause is when an operator holds or deletes mail: no worker may sit on a claimed
    # message waiting for the pause to end ("being delivered right now").
    from relay import queueadmin

    spool = Spool(tmp_path)
    spool.open()
    transport = Chunked(deferred="")
    held: list[str] = []

    async def main() -> None:
        qids = []
        for _ in range(3):
            draft = spool.draft()
            draft.write(b"Subject: paused\r\n\r\nbody\r\n")
            qids.append(await spool.commit(draft, Envelope("s@example.com",
                                                           ("a@example.net",))))
        scheduler = Scheduler(spool, transport, QueueConfig(min_backoff=0.1, max_backoff=0.2),
                              concurrency=2)
        scheduler.pause("operator", persist=False)
        for qid in qids:
            scheduler.enqueue(qid)
        await scheduler.start()
        try:
            await asyncio.sleep(0.3)  # time for the workers to take messages, if they would
            for qid in qids:
                held.append(await asyncio.to_thread(queueadmin.act, spool, "hold", qid))
        finally:
            await scheduler.stop()

    asyncio.run(main())
    spool.close()
    assert len(held) == 3 and transport.calls == []
    assert len(list((tmp_path / "hold").iterdir())) == 3


def test_a_pause_while_the_workers_are_idle_holds_no_message_back_from_an_operator(
        tmp_path: Path) -> None:
    # The usual pause: `ses-relay pause` on a running relay whose workers all wait for
    # work. A message arriving then must not be claimed by a worker that was already
    # waiting for one before the pause began.
    from relay import queueadmin

    spool = Spool(tmp_path)
    spool.open()
    transport = Chunked(deferred="")
    held: list[str] = []

    async def main() -> None:
        scheduler = Scheduler(spool, transport, QueueConfig(min_backoff=0.1, max_backoff=0.2),
                              concurrency=2)
        await scheduler.start()
        try:
            await asyncio.sleep(0.1)  # the workers wait for work
            scheduler.pause("operator", persist=False)
            qids = []
            for _ in range(3):
                draft = spool.draft()
                draft.write(b"Subject: paused\r\n\r\nbody\r\n")
                qid = await spool.commit(draft, Envelope("s@example.com", ("a@example.net",)))
                qids.append(qid)
                scheduler.enqueue(qid)
            await asyncio.sleep(0.3)  # time for the workers to take messages, if they would
            for qid in qids:
                held.append(await asyncio.to_thread(queueadmin.act, spool, "hold", qid))
        finally:
            await scheduler.stop()

    asyncio.run(main())
    spool.close()
    assert len(held) == 3 and transport.calls == []
    assert len(list((tmp_path / "hold").iterdir())) == 3


def test_a_large_message_is_copied_from_its_queue_file_whole(tmp_path: Path) -> None:
    # Over 256 KiB the outbox (like SESv2) reads the message from its queue file a slice
    # at a time instead of holding it: the .eml must still be the message, byte for byte,
    # without the entry's envelope and trailer, across slice boundaries.
    from relay.transports.outbox import OutboxTransport

    spool = Spool(tmp_path / "queue")
    spool.open()
    outbox = OutboxTransport(tmp_path / "outbox")
    line = bytes(range(32, 127)) + b"\r\n"
    message = b"Subject: big\r\n\r\n" + line * (3 * 1024 * 1024 // len(line)) + b"end\r\n"

    async def main() -> None:
        draft = spool.draft()
        draft.write(message)
        await spool.commit(draft, Envelope("s@example.com", ("a@example.net",)))
        await outbox.start()
        scheduler = Scheduler(spool, outbox, QueueConfig(), concurrency=1)
        scheduler.load_backlog(spool.active_ids())
        await scheduler.start()
        try:
            await asyncio.to_thread(wait_until, lambda: list(outbox.directory.glob("*.eml")), 10)
        finally:
            await scheduler.stop()

    asyncio.run(main())
    spool.close()
    [eml] = outbox.directory.glob("*.eml")
    assert eml.read_bytes() == message


def test_a_queue_file_the_outbox_cannot_read_is_retried_and_leaves_nothing(
        tmp_path: Path) -> None:
    # The queue file is shorter than its trailer said (a disk error, a truncation): a
    # transient error that names the queue, not the outbox, and nothing left in the outbox
    # (not the .eml's envelope either: the retry writes both under a new name).
    from relay.queueentry import FileBlob
    from relay.transports.outbox import OutboxTransport

    outbox = OutboxTransport(tmp_path / "outbox")
    entry = tmp_path / "entry"
    entry.write_bytes(b"x" * (2 * 1024 * 1024))

    async def main() -> DeliveryError:
        await outbox.start()
        with entry.open("rb") as f:
            try:
                await outbox.send_file(Envelope("s@example.com", ("a@example.net",)),
                                       FileBlob(f.fileno(), 3 * 1024 * 1024))
            except DeliveryError as e:
                return e
        raise AssertionError("sent from a short file")

    error = asyncio.run(main())
    assert not error.permanent and error.code == "QueueReadError"
    assert list(outbox.directory.iterdir()) == []
