"""The durable queue: a message is ours only once it is fsynced in ``active/``.

Layout under the queue directory (Postfix's split, in one process)::

    tmp/      drafts being received; anything here at start-up was never acknowledged
    active/   committed messages waiting for delivery, one file each, named by queue id
    state/    delivery bookkeeping (attempts, last error) beside each active message
    failed/   messages that failed permanently, with a ``.json`` record of why
    hold/     messages an operator put aside (``ses-relay queue hold``); never retried
    corrupt/  entries that could not be read, moved aside so the rest keeps flowing
    trigger/  requests from ``ses-relay queue`` commands to the running relay

A queue file is the raw message followed by a JSON envelope and a fixed-size trailer that
names the envelope's length. The trailer is written last and doubles as the "complete"
marker: a file without a valid trailer was never committed (Postfix does the same with its
end-of-record marker). Streaming the message first lets DATA go to disk as it arrives, so
memory per upload stays bounded no matter the message size.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from relay import groupcommit, queueentry
from relay.draft import Draft as Draft
from relay.errors import Busy, SpoolError

# The entry's records and format live in relay.queueentry; Envelope and DeliveryState
# are imported from here as before.
from relay.queueentry import DeliveryState as DeliveryState
from relay.queueentry import Envelope as Envelope
from relay.queueentry import read_entry, read_meta
from relay.queueshare import ALONE as ALONE
from relay.queueshare import Share as Share
from relay.queueshare import is_queue_id as _is_queue_id
from relay.queueshare import new_queue_id as new_queue_id
from relay.queueshare import queue_id_time as queue_id_time
from relay.spoolclaim import Claim as Claim
from relay.spoolclaim import size_if_same_file

_FOLDER_MODE = 0o750  # before the umask; see Spool._make_folders


def _fsync_dir(path: Path) -> None:
    groupcommit.fsync_dir(str(path))


class Spool:
    def __init__(self, directory: Path, share: Share = ALONE) -> None:
        self.directory = directory
        self.share = share
        self.tmp = directory / "tmp"
        self.active = directory / "active"
        self.state = directory / "state"
        # The per-message paths are built as strings: pathlib's joins and str() were 5.3%
        # of the event loop's samples (py-spy under bench/loadprofile.py).
        self._tmp = str(self.tmp)
        self._active = str(self.active)
        self._state = str(self.state)
        self.failed = directory / "failed"
        self.corrupt = directory / "corrupt"
        self.hold_dir = directory / "hold"
        self.triggers = directory / "trigger"
        # With several processes each has its own trigger folder; a command writes to all.
        self._trigger_dirs = ([self.triggers] if share.deliverers == 1 else
                              [self.triggers / str(i) for i in range(share.deliverers)])
        # Writing, fsyncing and renaming a draft's file: one trip to a commit thread.
        self._committer = groupcommit.GroupCommitter(self._active)

    # -- start-up

    def open(self) -> list[str]:
        """Create the layout, drop unacknowledged drafts, and list the committed ids this
        process delivers (none, for a process that only takes mail)."""
        try:
            self._make_folders()
            for leftover in self.tmp.iterdir():
                if self._mine(leftover.name):
                    # missing_ok: a relay that is still stopping (its supervisor killed,
                    # its workers in their grace) may commit or drop it meanwhile.
                    leftover.unlink(missing_ok=True)
        except OSError as e:
            raise SpoolError(f"cannot prepare queue directory {self.directory}: {e}") from e
        if self.share.role == "smtp":
            return []  # active/ and state/ are the delivery process's
        ids = []
        for name in os.listdir(self.active):
            if not _is_queue_id(name):
                if self.share.first:
                    self._move(self.active / name, self.corrupt / name)
            elif self.share.delivers(name):
                ids.append(name)
        # A held message keeps its delivery progress for when it is released.
        self._drop_orphan_states(set(ids) | set(os.listdir(self.hold_dir)))
        return sorted(ids)

    def _mine(self, name: str) -> bool:
        """A draft or other file in tmp/ this process may clean up: its own ids; anything
        else is the first SMTP process's (no live process writes such files)."""
        if _is_queue_id(name):
            return self.share.owns(name)
        return self.share.index == 0 and self.share.role != "delivery"

    def _make_folders(self) -> None:
        # Queued mail (password resets, invoices) is not for other local users: no access
        # for "other" on the queue and its folders, whatever the umask of the shell or
        # container that started the relay (Postfix keeps its queue 0700). The group
        # keeps what the umask gives it, for admins in the relay's group.
        self.directory.mkdir(parents=True, exist_ok=True, mode=_FOLDER_MODE)
        for d in (self.directory, self.tmp, self.active, self.state, self.failed,
                  self.corrupt, self.hold_dir, self.triggers, *self._trigger_dirs):
            d.mkdir(exist_ok=True, mode=_FOLDER_MODE)
            mode = d.stat().st_mode
            if mode & 0o007:
                d.chmod(mode & 0o770)

    def open_for_admin(self) -> None:
        """Make sure the folders exist, without the start-up clean-up (the relay may run)."""
        try:
            self._make_folders()
        except OSError as e:
            raise SpoolError(f"cannot open queue directory {self.directory}: {e}") from e

    def _drop_orphan_states(self, ids: set[str]) -> None:
        for p in self.state.glob("*.json"):
            if p.stem not in ids and self.share.delivers(p.stem):
                p.unlink(missing_ok=True)

    # -- receiving

    def draft(self) -> Draft:
        queue_id = new_queue_id()
        while not self.share.owns(queue_id):  # about `count` tries
            queue_id = new_queue_id()
        return Draft(f"{self._tmp}/{queue_id}", queue_id)  # no file yet: see Draft.write

    async def commit(self, draft: Draft, envelope: Envelope) -> str:
        """Make the draft durable, then return its queue id.

        The file is written and fsynced, renamed into active/, and active/ is fsynced
        after the rename (relay.groupcommit). Shielded: a client that disconnects while we fsync
        cancels our caller, but the commit still completes (or fails) as a whole. A commit
        that completes for a vanished client may be delivered once more if the client
        resends; that is the at-least-once half of the bargain.
        """
        draft.committing = True  # before anything can cancel our caller
        task = asyncio.ensure_future(self._commit(draft, envelope))
        # Retrieved even when our caller is gone, so a failure is not logged as unhandled.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(task)

    async def _commit(self, draft: Draft, envelope: Envelope) -> str:
        try:
            await self._committer.commit(lambda: draft._write_out(envelope),
                                         lambda: self._rename(draft))
        except OSError as e:
            draft._discard()
            raise SpoolError(f"cannot commit {draft.queue_id}: {e}") from e
        return draft.queue_id

    def _rename(self, draft: Draft) -> None:
        """On a commit thread, after the file's fsync; active/'s fsync follows (one for
        the batch: relay.groupcommit)."""
        draft._close_file()
        os.rename(draft.path, f"{self._active}/{draft.queue_id}")

    def close(self) -> None:
        self._committer.close()

    # -- delivery side: a worker claims a message (an exclusive lock) while it delivers it

    def claim(self, queue_id: str) -> Claim | None:
        """Lock an active message for delivery; None if it is gone (held, deleted...).

        Raises Busy while an operator's command holds it. The lock is an flock on the file,
        so a queue command of another process cannot move a message out from under a
        delivery, nor a delivery send one an operator just held or deleted.
        """
        path = f"{self._active}/{queue_id}"
        try:
            # Unbuffered: a claim reads a few known ranges, and a buffered reader's set-up
            # (isatty, two seeks) would cost more system calls than the reads themselves.
            f = open(path, "rb", buffering=0)  # noqa: SIM115  # closed by Claim.release
        except FileNotFoundError:
            return None
        except OSError as e:
            raise SpoolError(f"cannot open {queue_id}: {e}") from e
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise Busy(queue_id) from None
        size = size_if_same_file(f, path)
        if size is None:  # moved away between our open and our lock
            f.close()
            return None
        return Claim(self, queue_id, f, size)

    def probe(self) -> None:
        """Write, fsync and remove a file in tmp/: raises OSError if the queue cannot take
        mail (full disk, read-only file system, permissions)."""
        path = self.tmp / f".probe-{os.getpid()}"
        with open(path, "wb") as f:
            f.write(b"probe")
            f.flush()
            os.fsync(f.fileno())
        path.unlink()

    def load_state(self, queue_id: str) -> DeliveryState:
        """The delivery state for display (queue commands): a fresh one if unreadable."""
        try:
            return self.read_state(queue_id)
        except SpoolError:
            return DeliveryState()

    def read_state(self, queue_id: str) -> DeliveryState:
        """The delivery state for a delivery: a fresh one if there is none yet;
        CorruptEntry if the file is not one (its recipients done would be sent again, and
        wrong types would fail every attempt); SpoolError if it cannot be read."""
        try:
            with open(f"{self._state}/{queue_id}.json", "rb", buffering=0) as f:
                raw = f.read()
        except FileNotFoundError:
            return DeliveryState()
        except OSError as e:
            raise SpoolError(f"cannot read the delivery state of {queue_id}: {e}") from e
        if not raw:
            # Created, not yet written when the machine stopped (attempt counts are
            # written without fsync); durable progress is fsynced before its rename.
            return DeliveryState()
        return queueentry.parse_state(raw, queue_id)

    def save_state(self, queue_id: str, state: DeliveryState, *, durable: bool = False) -> None:
        """Write bookkeeping atomically (rename). Attempt counts are advisory and skip the
        fsync; per-recipient progress is not (``durable``): losing it would send twice."""
        final = self.state / f"{queue_id}.json"
        tmp = self.state / f".{queue_id}.tmp"
        with open(tmp, "wb") as f:
            f.write(json.dumps(asdict(state)).encode())
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, final)
        if durable:
            _fsync_dir(self.state)

    def _move(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)
        _fsync_dir(dst.parent)

    def active_ids(self, *, owned: bool = False) -> list[str]:
        """The queue ids in active/; with *owned*, only this process's (see Share)."""
        return [n for n in os.listdir(self.active)
                if _is_queue_id(n) and (not owned or self.share.delivers(n))]

    # -- operator commands (ses-relay queue ...), safe while the relay runs

    def find(self, queue_id: str) -> str | None:
        """The folder (active, hold, failed) that holds *queue_id*, if any."""
        if not _is_queue_id(queue_id):
            return None
        for folder in ("active", "hold", "failed"):
            if (self.directory / folder / queue_id).exists():
                return folder
        return None

    def read(self, queue_id: str, folder: str = "active") -> tuple[Envelope, bytes]:
        try:
            with open(self.directory / folder / queue_id, "rb") as f:
                return read_entry(f, queue_id)
        except FileNotFoundError:
            raise
        except OSError as e:
            raise SpoolError(f"cannot read {queue_id}: {e}") from e

    def summary(self, queue_id: str, folder: str) -> tuple[Envelope, int]:
        with open(self.directory / folder / queue_id, "rb") as f:
            return read_meta(f, queue_id)

    def ids(self, folder: str) -> list[str]:
        return sorted(n for n in os.listdir(self.directory / folder) if _is_queue_id(n))

    def read_headers(self, queue_id: str, folder: str, limit: int = 256 * 1024) -> bytes:
        """The header section of a stored message, without reading its body."""
        with open(self.directory / folder / queue_id, "rb") as f:
            head = f.read(limit)
        return head.split(b"\r\n\r\n", 1)[0]

    def failure_record(self, queue_id: str) -> dict[str, Any]:
        try:
            return dict(queueentry.loads((self.failed / f"{queue_id}.json").read_bytes()))
        except (OSError, ValueError, TypeError):
            return {}

    def hold(self, queue_id: str) -> None:
        """Move an active message to hold/: it is never retried until released."""
        with self._locked(self.active / queue_id):
            self._move(self.active / queue_id, self.hold_dir / queue_id)

    def release(self, queue_id: str) -> None:
        self._move(self.hold_dir / queue_id, self.active / queue_id)

    def requeue(self, queue_id: str) -> None:
        """Send a failed message again, to the recipients that did not get it."""
        record = self.failure_record(queue_id)
        done = record.get("delivered") or {}
        if isinstance(done, dict) and done:
            self.save_state(queue_id, DeliveryState(done={str(k): str(v)
                                                          for k, v in done.items()}),
                            durable=True)
        self._move(self.failed / queue_id, self.active / queue_id)
        (self.failed / f"{queue_id}.json").unlink(missing_ok=True)

    def delete(self, queue_id: str, folder: str) -> None:
        path = self.directory / folder / queue_id
        with self._locked(path):
            path.unlink()
        (self.state / f"{queue_id}.json").unlink(missing_ok=True)
        if folder == "failed":
            (self.failed / f"{queue_id}.json").unlink(missing_ok=True)
        _fsync_dir(path.parent)

    def trigger(self, name: str) -> None:
        """Ask the running relay to act (``flush``, ``retry.<ID>``); it looks every few
        seconds. A file is the whole protocol: no socket, no PID file, no signal."""
        for d in self._trigger_dirs:
            d.mkdir(exist_ok=True)
            (d / name).touch()

    def paused(self) -> str | None:
        """Why delivery is paused (the reputation guard), or None."""
        try:
            return (self.directory / "paused").read_text().strip() or "paused"
        except FileNotFoundError:
            return None

    def set_paused(self, reason: str | None) -> None:
        path = self.directory / "paused"
        if reason is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(reason + "\n")

    def take_triggers(self) -> list[str]:
        names = []
        for p in self._trigger_dirs[self.share.trigger_index].iterdir():
            if p.is_dir():
                continue  # another process's folder
            names.append(p.name)
            p.unlink(missing_ok=True)
        return names

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        with open(path, "rb") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Busy(path.name) from None
            yield


