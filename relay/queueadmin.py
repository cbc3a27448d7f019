"""``ses-relay queue``: Postfix's mailq/postsuper habits over the relay's queue.

Every command works while the relay runs: moves take the same per-message lock a delivery
holds (so nothing is held or deleted mid-send, and nothing held is sent), and requests that
need the running scheduler (flush, retry) go through trigger files it reads every few
seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from relay import reputationhold
from relay.errors import Busy, CorruptEntry, RelayError
from relay.spool import Share, Spool, queue_id_time

STATES = ("active", "deferred", "hold", "failed")
ACTIONS = ("hold", "release", "retry", "delete")


class Refused(RelayError):
    """A queue action that cannot be done on this message now; the text says why."""


def open_spool(directory: Path, deliverers: int) -> Spool:
    """The queue as the commands see it, beside a running relay: requests through trigger
    files reach every process that delivers (Config.deliverers)."""
    spool = Spool(directory, Share(0, deliverers))
    spool.open_for_admin()
    return spool


def act(spool: Spool, command: str, qid: str) -> str:
    """Hold, release, retry or delete one message; return what was done. Refused: why not.
    (``ses-relay queue ACTION ID`` and the console both come here.)"""
    folder = spool.find(qid)
    if folder is None:
        raise Refused(f"no message {qid} in the queue")
    wants = {"hold": "active", "release": "hold"}
    if command in wants and folder != wants[command]:
        raise Refused(f"{qid} is {folder}, not {wants[command]}")
    try:
        if command == "hold":
            spool.hold(qid)
        elif command == "release":
            spool.release(qid)
        elif command == "delete":
            spool.delete(qid, folder)
        elif command == "retry":
            if folder == "failed":
                spool.requeue(qid)
            elif folder == "active":
                spool.trigger(f"retry.{qid}")
            else:
                raise Refused(f"{qid} is held; release it first")
        else:
            raise Refused(f"unknown action {command!r}")
    except Busy:
        raise Refused(f"{qid} is being delivered right now; try again") from None
    return f"{command}: {qid}"


def counts(spool: Spool) -> dict[str, int]:
    """Messages by state (active, deferred, hold, failed)."""
    out = dict.fromkeys(STATES, 0)
    for qid in spool.ids("active"):
        out["deferred" if spool.load_state(qid).attempts else "active"] += 1
    out["hold"] = len(spool.ids("hold"))
    out["failed"] = len(spool.ids("failed"))
    return out


def pause(spool: Spool, reason: str) -> None:
    """Pause delivery, as the reputation guard does: mail stays queued until resume."""
    spool.set_paused(reason.strip() or "paused by an operator")
    spool.trigger("pause")


def resume(spool: Spool) -> str | None:
    """Resume paused delivery; return why it was paused (None: it was not)."""
    reason = spool.paused()
    if reason is not None:
        # The guard's pause becomes a hold first: it must not pause again at its next
        # check for the level the operator has just seen (relay/reputationhold.py).
        reputationhold.resumed(spool.directory, time.time())
        spool.set_paused(None)
        spool.trigger("resume")
    return reason


@dataclass(frozen=True)
class Row:
    queue_id: str
    state: str
    age: float
    size: int
    sender: str
    rcpts: tuple[str, ...]
    last_error: str


def rows(spool: Spool, *, now: float | None = None) -> Iterator[Row]:
    now = time.time() if now is None else now
    for folder in ("active", "hold", "failed"):
        for qid in spool.ids(folder):
            try:
                envelope, size = spool.summary(qid, folder)
            except (FileNotFoundError, CorruptEntry):
                continue  # delivered or quarantined while we looked
            yield Row(qid, _state(spool, qid, folder), now - queue_id_time(qid), size,
                      envelope.mail_from, envelope.rcpt_tos, _last_error(spool, qid, folder))


def _state(spool: Spool, qid: str, folder: str) -> str:
    if folder != "active":
        return folder
    return "deferred" if spool.load_state(qid).attempts else "active"


def _last_error(spool: Spool, qid: str, folder: str) -> str:
    if folder == "failed":
        record = spool.failure_record(qid)
        return f"{record.get('code', '')}: {record.get('error', '')}".strip(": ")
    return spool.load_state(qid).last_error


def format_row(row: Row) -> str:
    rcpts = ",".join(row.rcpts[:3]) + (f",+{len(row.rcpts) - 3}" if len(row.rcpts) > 3 else "")
    line = (f"{row.queue_id}  {_age(row.age):>6}  {row.size:>9}  {row.state:<8}  "
            f"{row.sender} -> {rcpts}")
    return f"{line}  ({row.last_error})" if row.last_error else line


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def show(spool: Spool, qid: str) -> str | None:
    folder = spool.find(qid)
    if folder is None:
        return None
    envelope, size = spool.summary(qid, folder)
    header = spool.read_headers(qid, folder).decode("utf-8", "replace")
    state = spool.load_state(qid)
    lines = [f"queue id:   {qid}", f"state:      {_state(spool, qid, folder)}",
             f"received:   {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(queue_id_time(qid)))}"
             " UTC", f"size:       {size}", f"sender:     {envelope.mail_from}",
             f"recipients: {', '.join(envelope.rcpt_tos)}",
             f"user:       {envelope.user or '-'} from {envelope.peer or '-'}",
             f"attempts:   {state.attempts}"]
    if state.last_error:
        lines.append(f"last error: {state.last_error}")
    if state.done:
        lines.append(f"delivered:  {', '.join(state.done)}")
    if folder == "failed":
        record = spool.failure_record(qid)
        lines.append(f"failed:     {record.get('code')}: {record.get('error')}")
        lines.append(f"hint:       {record.get('hint')}")
    return "\n".join(lines) + "\n\n" + header + "\n"
