"""``ses-relay send``: SES stored templates, one message or a CSV in bulk (SESv2).

This path does not go through SMTP or the queue: it is for people who have a template in
SES and a list of recipients. It keeps the same rules as the relay where they apply: the
suppression list is checked for every row, the account's send rate is respected (charged
per recipient), and every row gets a result line, so a run can be checked and repeated
for the rows that failed.
"""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from relay import aws
from relay.addresses import AddressError, normalize
from relay.config import DeliveryConfig
from relay.errors import DeliveryError, RelayError
from relay.ratelimit import TokenBucket
from relay.suppression import SuppressionList
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
    status: str  # sent | suppressed | failed
    detail: str  # the SES message id, or why not


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
                 configuration_set: str | None = None) -> None:
        self.config = config
        self.sender = sender
        self.template = template
        self.configuration_set = configuration_set
        self.limiter = TokenBucket(config.max_send_rate)
        self._client: Any = None
        self._cm: Any = None

    async def __aenter__(self) -> TemplateSender:
        session = await aws.session(self.config)
        self._cm = session.client("sesv2", region_name=self.config.region,
                                  endpoint_url=self.config.endpoint_url,
                                  config=aws.client_config(self.config))
        self._client = await self._cm.__aenter__()
        await self._follow_account_rate()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._cm.__aexit__(None, None, None)

    async def _follow_account_rate(self) -> None:
        if self.config.max_send_rate is not None:
            return
        try:
            account = await self._client.get_account()
            self.limiter.set_rate(float(account["SendQuota"]["MaxSendRate"]))
        except Exception:  # noqa: S110  # no quota to read (permissions, emulators)
            pass  # unlimited; throttling answers still slow us down

    def _common(self) -> dict[str, Any]:
        params: dict[str, Any] = {"FromEmailAddress": self.sender}
        if self.configuration_set:
            params["ConfigurationSetName"] = self.configuration_set
        return params

    async def send_one(self, to: Sequence[str], data: str) -> str:
        await self.limiter.acquire(len(to))
        response = await self._call(
            "send_email", Destination={"ToAddresses": list(to)},
            Content={"Template": {"TemplateName": self.template, "TemplateData": data}},
            **self._common())
        return str(response["MessageId"])

    async def send_batch(self, rows: Sequence[Row]) -> list[Result]:
        await self.limiter.acquire(len(rows))
        response = await self._call(
            "send_bulk_email",
            DefaultContent={"Template": {"TemplateName": self.template, "TemplateData": "{}"}},
            BulkEmailEntries=[{"Destination": {"ToAddresses": [r.address]},
                               "ReplacementEmailContent": {"ReplacementTemplate": {
                                   "ReplacementTemplateData": r.data}}} for r in rows],
            **self._common())
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
                    progress: Callable[[int], object] | None = None) -> list[Result]:
    """Send every row that is not suppressed, in batches of 50; a failed batch fails its
    rows and the run goes on."""
    results: list[Result] = []
    todo: list[Row] = []
    for row in rows:
        entry = suppression.lookup(row.address) if suppression is not None else None
        if entry is not None:
            results.append(Result(row, "suppressed", f"{entry.reason} ({entry.address})"))
            if progress:
                progress(1)
        else:
            todo.append(row)
    for batch in _batches(todo, BATCH):
        try:
            results.extend(await sender.send_batch(batch))
        except DeliveryError as e:
            results.extend(Result(r, "failed", f"{e.code}: {e} ({e.hint})") for r in batch)
        if progress:
            progress(len(batch))
    return sorted(results, key=lambda r: r.row.line)


def _batches(rows: Sequence[Row], size: int) -> Iterable[Sequence[Row]]:
    for i in range(0, len(rows), size):
        yield rows[i:i + size]


def write_results(f: TextIO, results: Iterable[Result]) -> None:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(["line", "email", "status", "detail"])
    for r in results:
        w.writerow([r.row.line, r.row.address, r.status, r.detail])
