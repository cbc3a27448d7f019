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

from relay.errors import CorruptEntry
from relay.spool import Spool, queue_id_time


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
