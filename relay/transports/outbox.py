"""The embedded default transport: each message becomes an .eml file in a local folder.

It writes exactly the bytes SES would have received, plus a .json with the envelope (which
is where Bcc recipients live), so the relay can be tried and tested without an AWS account.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import uuid
from pathlib import Path

from relay.errors import DeliveryError, SpoolError
from relay.queueentry import FileBlob
from relay.spool import Envelope
from relay.transports.base import Quota, SendResult

# A large message is copied from its queue file this much at a time (send_file).
_COPY_SLICE = 1024 * 1024

# Mirrors SESv2's limit so that trying the relay on the outbox behaves like production.
_SES_RAW_LIMIT = 40 * 1000 * 1000 * 3 // 4


class OutboxTransport:
    name = "outbox"
    max_message_size = _SES_RAW_LIMIT
    max_recipients = 50
    memory_per_byte = 1.0  # the message as read from the queue, written as it is

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def start(self) -> None:
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)

    async def send(self, envelope: Envelope, data: bytes) -> SendResult:
        return await self._send(envelope, data)

    async def send_file(self, envelope: Envelope, message: FileBlob) -> SendResult:
        """``send``, copying a large message from its queue file a slice at a time: 50
        uploads of 10 MB held 231 MB at the peak with the messages read whole, as the
        relay makes them (bench/upload_memory.py, bench/RESULTS.md)."""
        return await self._send(envelope, message)

    async def _send(self, envelope: Envelope, data: bytes | FileBlob) -> SendResult:
        message_id = f"outbox-{uuid.uuid4()}"
        try:
            await asyncio.to_thread(self._write, message_id, envelope, data)
        except SpoolError as e:  # reading the queue file, not writing the outbox
            raise DeliveryError(str(e), permanent=False, code="QueueReadError",
                                hint="check the queue's disk") from e
        except OSError as e:
            raise DeliveryError(str(e), permanent=False, code="OutboxWriteError",
                                hint=f"check that {self.directory} is writable and not full"
                                ) from e
        return SendResult(message_id)

    async def quota(self) -> Quota | None:
        return None

    async def probe(self) -> None:
        """Readiness: the folder exists and takes a file (a nameless one, gone on close)."""
        try:
            await asyncio.to_thread(self._probe)
        except OSError as e:
            raise DeliveryError(str(e), permanent=False, code="OutboxNotWritable",
                                hint=f"check that {self.directory} exists, is a directory, "
                                     f"is writable and is not full") from e

    def _probe(self) -> None:
        # TemporaryFile: O_TMPFILE where the file system has it (the file never has a name,
        # so nothing is left behind even after a crash), else a name unlinked at once.
        with tempfile.TemporaryFile(dir=self.directory) as f:
            f.write(b"probe")
            f.flush()
            os.fsync(f.fileno())

    def _write(self, message_id: str, envelope: Envelope, data: bytes | FileBlob) -> None:
        meta = {"message_id": message_id, "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "configuration_set": envelope.configuration_set,
                "tags": dict(envelope.tags)}
        # Envelope first, message last: a reader that sees the .eml sees its .json too.
        # A failure leaves neither (the retry writes under a new name).
        done: list[Path] = []
        for suffix, blob in ((".json", json.dumps(meta).encode()), (".eml", data)):
            tmp = self.directory / f".{message_id}{suffix}.tmp"
            try:
                with tmp.open("wb") as f:
                    f.writelines(blob.slices(_COPY_SLICE) if isinstance(blob, FileBlob)
                                 else (blob,))
                done.append(self.directory / f"{message_id}{suffix}")
                os.replace(tmp, done[-1])
            except BaseException:
                for path in (tmp, *done):
                    path.unlink(missing_ok=True)
                raise

    async def aclose(self) -> None:
        return None
