"""``ses-relay send``: SES stored templates, one message or a CSV in bulk (SESv2).

This path does not go through SMTP or the queue: it is for people who have a template in
SES and a list of recipients. It keeps the same rules as the relay where they apply: the
suppression list is checked for every row, the account's send rate is respected (charged
per recipient), the default configuration set, tags and sending authorisation ARNs are
the relay's, and every row gets a result line, so a run can be checked and repeated for
the rows that failed.

A run stops cleanly before it would exceed the account's 24-hour quota (Max24HourSend
minus SentLast24Hours, read when it starts): the rows it did not send are marked
``unsent``. The results file is written as the batches go, so a run stopped by the quota,
by Ctrl-C or by a crash is resumed by the same command with the same results file: rows
already sent there are skipped.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from relay import aws
from relay.addresses import AddressError, normalize
from relay.config import DeliveryConfig
from relay.errors import DeliveryError, RelayError
from relay.ratelimit import TokenBucket
from relay.suppression import SuppressionList
from relay.transports.base import Quota
from relay.transports.errors import classify

BATCH = 50  # SendBulkEmail takes at most 50 entries
_THROTTLE_RETRIES = 5


class BulkFileError(RelayError):
    """The CSV cannot be used; nothing was sent."""


@dataclass(frozen=True)
class Row:
    line: int
    address: str
    data: str  # the row's replacement data, as JSON


@dataclass(frozen=True)
class Result:
    row: Row
    status: str  # sent | suppressed | failed | unsent (the 24-hour quota was reached)
    detail: str  # the SES message id, or why not


UNSENT_DETAIL = ("not sent: the account's 24-hour sending quota is reached; run the same "
                 "command again with the same results file to send the rest")


def read_rows(f: TextIO) -> list[Row]:
    """Rows of a CSV with an ``email`` (or ``address``) column; every other column is
    replacement data, or a single ``data`` column holds it as JSON. Validated whole first:
    a bad file sends nothing."""
    reader = csv.DictReader(f)
    fields = [c.strip().lower() for c in reader.fieldnames or []]
    column = next((c for c in reader.fieldnames or [] if c.strip().lower() in
                   ("email", "address")), None)
    if column is None:
        raise BulkFileError(f"the CSV needs an 'email' column (found: {', '.join(fields)})")
    rows = []
    for n, record in enumerate(reader, start=2):
        try:
            address = normalize((record.get(column) or "").strip())
        except AddressError as e:
            raise BulkFileError(f"line {n}: {e.reason}") from None
        rows.append(Row(n, address, _row_data(n, record, column)))
    return rows


def _row_data(n: int, record: dict[str, str], column: str) -> str:
    if "data" in record and len(record) == 2:
        try:
            data = json.loads(record["data"] or "{}")
        except ValueError:
            raise BulkFileError(f"line {n}: the data column is not JSON") from None
        if not isinstance(data, dict):
            raise BulkFileError(f"line {n}: the data column must be a JSON object")
        return json.dumps(data)
    return json.dumps({k: v for k, v in record.items() if k != column and k is not None})


class TemplateSender:
    """A SESv2 client for template sends, with the relay's rate limit and error table."""

    def __init__(self, config: DeliveryConfig, *, sender: str, template: str,
                 configuration_set: str | None = None,
                 tags: Sequence[tuple[str, str]] = ()) -> None:
        self.config = config
        self.sender = sender
        self.template = template
        self.configuration_set = configuration_set
        self.tags = tuple(tags)
        self.limiter = TokenBucket(config.max_send_rate)
        # Sends left in the account's 24-hour quota; None: unknown or unlimited.
        self.quota_left: int | None = None
        self._client: Any = None
        self._cm: Any = None

    async def __aenter__(self) -> TemplateSender:
        session = await aws.session(self.config)
        self._cm = session.client("sesv2", region_name=self.config.region,
                                  endpoint_url=self.config.endpoint_url,
                                  config=aws.client_config(self.config))
        self._client = await self._cm.__aenter__()
        await self._read_account()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._cm.__aexit__(None, None, None)

    async def _read_account(self) -> None:
        """The account's send rate (unless configured) and what is left of its 24-hour
        quota. Without an answer (permissions, emulators) both are unknown: no limit of
        ours, and SES's own throttling and quota answers still stop us."""
        try:
            fields = dict((await self._client.get_account()).get("SendQuota", {}))
        except Exception:  # foreign errors: only "no answer" matters here
            return
        quota = Quota.from_ses(fields)
        if quota is None:
            return
        if self.config.max_send_rate is None:
            self.limiter.set_rate(quota.max_send_rate)
        # -1: unlimited. An answer without the field is no reason to send nothing.
        if "Max24HourSend" in fields and quota.max_24_hour_send >= 0:
            self.quota_left = max(0, int(quota.max_24_hour_send - quota.sent_last_24_hours))

    def _common(self) -> dict[str, Any]:
        """The parameters the relay's own SESv2 delivery passes (relay.transports.sesv2)."""
        params: dict[str, Any] = {"FromEmailAddress": self.sender}
        if self.configuration_set:
            params["ConfigurationSetName"] = self.configuration_set
        if self.config.from_arn or self.config.source_arn:
            params["FromEmailAddressIdentityArn"] = self.config.from_arn or self.config.source_arn
        if self.config.return_path_arn:
            params["FeedbackForwardingEmailAddressIdentityArn"] = self.config.return_path_arn
        return params

    def _tags(self) -> list[dict[str, str]]:
        return [{"Name": n, "Value": v} for n, v in self.tags]

    def charge(self, n: int) -> None:
        """Count *n* sends against the quota left."""
        if self.quota_left is not None:
            self.quota_left = max(0, self.quota_left - n)

    async def send_one(self, to: Sequence[str], data: str) -> str:
        await self.limiter.acquire(len(to))
        response = await self._call(
            "send_email", Destination={"ToAddresses": list(to)},
            Content={"Template": {"TemplateName": self.template, "TemplateData": data}},
            **self._common(), **({"EmailTags": self._tags()} if self.tags else {}))
        self.charge(len(to))
        return str(response["MessageId"])

    async def send_batch(self, rows: Sequence[Row]) -> list[Result]:
        await self.limiter.acquire(len(rows))
        response = await self._call(
            "send_bulk_email",
            DefaultContent={"Template": {"TemplateName": self.template, "TemplateData": "{}"}},
            BulkEmailEntries=[{"Destination": {"ToAddresses": [r.address]},
                               "ReplacementEmailContent": {"ReplacementTemplate": {
                                   "ReplacementTemplateData": r.data}}} for r in rows],
            **self._common(), **({"DefaultEmailTags": self._tags()} if self.tags else {}))
        self.charge(len(rows))
        results = []
        for row, entry in zip(rows, response.get("BulkEmailEntryResults", []), strict=False):
            if entry.get("Status") == "SUCCESS":
                results.append(Result(row, "sent", str(entry.get("MessageId", ""))))
            else:
                results.append(Result(row, "failed", f"{entry.get('Status')}: "
                                                     f"{entry.get('Error', '')}"))
        return results

    async def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        """One SES call; throttling waits and tries again, anything else is raised mapped."""
        for attempt in range(_THROTTLE_RETRIES):
            try:
                return dict(await getattr(self._client, operation)(**params))
            except Exception as e:
                error = classify(e, region=self.config.region)
                if error.throttle != "rate" or attempt == _THROTTLE_RETRIES - 1:
                    raise error from e
                self.limiter.throttled()
                await asyncio.sleep(1.0 + attempt)
        raise AssertionError("unreachable")


async def send_bulk(sender: TemplateSender, rows: Sequence[Row],
                    suppression: SuppressionList | None,
                    progress: Callable[[int], object] | None = None,
                    record: Callable[[Sequence[Result]], object] | None = None
                    ) -> list[Result]:
    """Send every row that is not suppressed, in batches of 50; a failed batch fails its
    rows and the run goes on. Rows beyond the 24-hour quota are not sent (``unsent``).
    *record* gets each batch's results as soon as they are known."""
    results: list[Result] = []

    def done(batch: Sequence[Result]) -> None:
        results.extend(batch)
        if record:
            record(batch)
        if progress:
            progress(len(batch))

    todo: list[Row] = []
    for row in rows:
        entry = suppression.lookup(row.address) if suppression is not None else None
        if entry is not None:
            done([Result(row, "suppressed", f"{entry.reason} ({entry.address})")])
        else:
            todo.append(row)
    while todo:
        batch, todo = _fitting(sender, todo)
        if not batch:  # the quota is used up: stop before exceeding it
            done([Result(r, "unsent", UNSENT_DETAIL) for r in todo])
            break
        try:
            done(await sender.send_batch(batch))
        except DeliveryError as e:
            if e.throttle == "daily":  # SES says so before we knew: the same clean stop
                sender.quota_left = 0
                todo = [*batch, *todo]
                continue
            done([Result(r, "failed", f"{e.code}: {e} ({e.hint})") for r in batch])
    return sorted(results, key=lambda r: r.row.line)


def _fitting(sender: TemplateSender, rows: Sequence[Row]
             ) -> tuple[Sequence[Row], list[Row]]:
    """The next batch (at most 50 rows, and no more than the quota left), and the rest."""
    size = BATCH if sender.quota_left is None else min(BATCH, sender.quota_left)
    return rows[:size], list(rows[size:])


_FIELDS = ["line", "email", "status", "detail"]


def write_results(f: TextIO, results: Iterable[Result]) -> None:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(_FIELDS)
    for r in results:
        w.writerow([r.row.line, r.row.address, r.status, r.detail])


def already_sent(path: Path, rows: Sequence[Row]) -> list[Result]:
    """The rows a previous run recorded as sent in the results file at *path* (none if
    there is no such file). A row counts only if its line still holds the same address:
    an edited list is not mistaken for the old one."""
    try:
        f = path.open(newline="", encoding="utf-8")
    except FileNotFoundError:
        return []
    by_line = {r.line: r for r in rows}
    sent = []
    with f:
        for record in csv.DictReader(f):
            line = record.get("line") or ""
            row = by_line.get(int(line)) if line.isdigit() else None
            if row is not None and record.get("status") == "sent" and \
                    record.get("email") == row.address:
                sent.append(Result(row, "sent", record.get("detail") or ""))
    return sent


class ResultsFile:
    """The results file, written as a run goes: what is in it when the run stops (the
    quota, Ctrl-C, a crash) is what the next run skips. Each batch is flushed to disk
    before the next is sent; the file is replaced whole (atomically) at the start and
    at the end."""

    def __init__(self, path: Path, carried: Sequence[Result]) -> None:
        self.path = path
        self.results = list(carried)
        _replace(path, self.results)
        self._f = path.open("a", newline="", encoding="utf-8")
        self._w = csv.writer(self._f, lineterminator="\n")

    def add(self, results: Sequence[Result]) -> None:
        self.results.extend(results)
        for r in results:
            self._w.writerow([r.row.line, r.row.address, r.status, r.detail])
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        """Rewrite the file in the list's order (one line per row)."""
        self._f.close()
        _replace(self.path, sorted(self.results, key=lambda r: r.row.line))


def _replace(path: Path, results: Iterable[Result]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        write_results(f, results)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
