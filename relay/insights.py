"""Message Insights import: SES's own per-message history, from SESv2 export jobs.

``ses-relay events import-insights`` asks SES for its Message Insights (Virtual
Deliverability Manager) records one time range at a time: CreateExportJob with a
MessageInsightsDataSource, GetExportJob until the job is done (polled with a growing
delay), then the file behind the pre-signed URL that GetExportJob returns as
ExportDestination.S3Url. The records go into the event store keyed by SES MessageId (and
recipient), so importing a range twice stores each record once, and a later import of the
same message replaces what SES said earlier (its last delivery and engagement events
change for days).

One export holds at most 10,000 records (MaxResults' maximum) and says nothing about the
ones it left out. A range whose export comes back full is therefore split in halves and
each half exported again, down to MIN_SPAN; only a range that is still full at that size
is stored as it came, and reported as possibly incomplete.

The import is incremental: after each range the event store remembers its end, and the
next run starts there, less ``--lookback`` for the records that changed since.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime
import gzip
import io
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from relay import aws, log
from relay.config import DeliveryConfig
from relay.errors import RelayError
from relay.events import EventStore
from relay.ratelimit import TokenBucket
from relay.transports.errors import classify

LIMIT = 10_000  # records per export: MessageInsightsDataSource.MaxResults at most
MIN_SPAN = 1.0  # seconds: a range is not split below this
_FIRST_POLL, _MAX_POLL = 0.5, 15.0  # seconds between GetExportJob calls, doubling
_JOB_DEADLINE = 3600.0  # an export job that runs longer than this is given up
_RETRIES = 5  # CreateExportJob throttled or at the account's limit of running jobs
_DONE = ("COMPLETED", "FAILED", "CANCELLED")

_log = log.get("insights")
Progress = Callable[[str], object]


class InsightsError(RelayError):
    """An export job failed, was cancelled, or its file could not be read."""


@dataclass(frozen=True)
class Export:
    records: list[dict[str, Any]]
    exported: int  # Statistics.ExportedRecordsCount (or the records, if SES says none)

    @property
    def full(self) -> bool:
        return max(self.exported, len(self.records)) >= LIMIT


@dataclass
class Stats:
    exports: int = 0
    records: int = 0
    new: int = 0
    splits: int = 0
    incomplete: list[tuple[float, float]] = field(default_factory=list)


class InsightsExporter:
    """The SES side: one export job per call of ``export``, through the relay's own AWS
    session (profile, role, region and endpoint_url from ``delivery``)."""

    def __init__(self, config: DeliveryConfig, progress: Progress | None = None) -> None:
        self.config = config
        self.progress = progress or (lambda _line: None)
        # SES takes CreateExportJob at most once per second.
        self._creates = TokenBucket(1.0)
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> InsightsExporter:
        session = await aws.session(self.config)
        try:
            self._client = await self._stack.enter_async_context(session.client(
                "sesv2", region_name=self.config.region,
                endpoint_url=self.config.endpoint_url, config=aws.client_config(self.config)))
        except Exception as e:  # botocore's (no region, a bad endpoint): ours, mapped once
            raise classify(e, region=self.config.region) from e
        # The pre-signed URL needs no signing; trust_env: the proxy settings botocore uses.
        self._http = await self._stack.enter_async_context(aiohttp.ClientSession(
            trust_env=True, timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=aws.connect_timeout(self.config),
                sock_read=self.config.timeout)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def export(self, start: float, end: float) -> Export:
        job_id = await self._create(start, end)
        job = await self._wait(job_id, f"{_iso(start)} .. {_iso(end)}")
        url = job.get("ExportDestination", {}).get("S3Url")
        if not url:
            raise InsightsError(f"export job {job_id} completed without a download URL")
        records = parse_records(await self._download(url),
                                job.get("ExportDestination", {}).get("DataFormat", "JSON"))
        exported = int(job.get("Statistics", {}).get("ExportedRecordsCount") or 0)
        return Export(records, exported)

    async def _create(self, start: float, end: float) -> str:
        params = {"ExportDataSource": {"MessageInsightsDataSource": {
                      "StartDate": _utc(start), "EndDate": _utc(end), "MaxResults": LIMIT}},
                  "ExportDestination": {"DataFormat": "JSON"}}
        for attempt in range(_RETRIES):
            await self._creates.acquire(1)
            try:
                return str((await self._client.create_export_job(**params))["JobId"])
            except Exception as e:
                error = classify(e, region=self.config.region)
                busy = error.throttle is not None or error.code == "LimitExceededException"
                if not busy or attempt == _RETRIES - 1:
                    raise error from e
                self.progress(f"SES is busy ({error.code}): trying again")
                await asyncio.sleep(2.0 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _wait(self, job_id: str, what: str) -> dict[str, Any]:
        began, delay = time.monotonic(), _FIRST_POLL
        while True:
            try:
                job = dict(await self._client.get_export_job(JobId=job_id))
            except Exception as e:
                raise classify(e, region=self.config.region) from e
            status = str(job.get("JobStatus", "?"))
            waited = time.monotonic() - began
            self.progress(f"export {what}: {status.lower()} ({waited:.0f} s)")
            if status == "COMPLETED":
                return job
            if status in _DONE:
                reason = job.get("FailureInfo", {}).get("ErrorMessage") or "no reason given"
                raise InsightsError(f"export job {job_id} {status.lower()}: {reason}")
            if waited > _JOB_DEADLINE:
                raise InsightsError(f"export job {job_id} still {status.lower()} after "
                                    f"{waited:.0f} s: given up (SES may finish it later)")
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_POLL)

    async def _download(self, url: str) -> bytes:
        assert self._http is not None, "use as an async context manager"
        try:
            async with self._http.get(url) as response:
                if response.status != 200:
                    raise InsightsError(f"the export file's download answered "
                                        f"{response.status} (the pre-signed URL may have "
                                        "expired)")
                return await response.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise InsightsError(f"the export file could not be downloaded: {e}") from e


async def import_range(exporter: InsightsExporter, store: EventStore, start: float,
                       end: float, step: float) -> Stats:
    """Import [start, end] in ranges of *step* seconds, each split further when full;
    the event store's cursor moves to each range's end once it is stored.

    In whole seconds: the SDK sends StartDate and EndDate as whole seconds (botocore's
    rest-json timestamps), so that is what SES gets anyway; both ends are inclusive, so
    ranges that share an end leave no gap."""
    start, end = math.floor(start), math.floor(end)
    stats = Stats()
    for a, b in _ranges(start, end, step):
        await _import_span(exporter, store, a, b, stats)
        store.set_insights_cursor(b)
    return stats


async def _import_span(exporter: InsightsExporter, store: EventStore, start: float,
                       end: float, stats: Stats) -> None:
    export = await exporter.export(start, end)
    stats.exports += 1
    if export.full and end - start > MIN_SPAN:
        # The export stopped at the limit: the records it left out are unknown, so ask
        # again for each half (what it did return is asked for again with them).
        stats.splits += 1
        middle = math.floor(start + (end - start) / 2)
        exporter.progress(f"{_iso(start)} .. {_iso(end)} holds {LIMIT:,} records or more: "
                          "split in halves")
        await _import_span(exporter, store, start, middle, stats)
        await _import_span(exporter, store, middle, end, stats)
        return
    if export.full:
        stats.incomplete.append((start, end))
        _log.warning("insights_range_full", start=_iso(start), end=_iso(end),
                     hint=f"more than {LIMIT} records within {MIN_SPAN} s: some are missing")
    rows = list(insight_rows(export.records))
    stats.records += len(rows)
    stats.new += store.put_insights(rows)


def _ranges(start: float, end: float, step: float) -> Iterator[tuple[float, float]]:
    """[start, end] in ranges of *step*; a remainder under MIN_SPAN joins the last one
    (no export job for the second that passed since the command started)."""
    while start < end:
        stop = math.floor(start + step) if end - (start + step) >= MIN_SPAN else end
        yield start, stop
        start = stop


# -- the export file


def parse_records(body: bytes, data_format: str = "JSON") -> list[dict[str, Any]]:
    """The records of an export file: JSON (one document, or one per line) or CSV,
    gzip-compressed or not."""
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    text = body.decode("utf-8-sig")
    try:
        if data_format.upper() == "CSV":
            return [dict(r) for r in csv.DictReader(io.StringIO(text))]
        return _json_records(text)
    except (ValueError, csv.Error) as e:
        raise InsightsError(f"the export file is not {data_format.upper()}: {e}") from e


def _json_records(text: str) -> list[dict[str, Any]]:
    stripped = text.strip()
    if not stripped:
        return []
    if stripped[0] == "[":
        return [r for r in json.loads(stripped) if isinstance(r, dict)]
    try:
        document = json.loads(stripped)
    except ValueError:  # JSON Lines
        return [r for line in stripped.splitlines() if line.strip()
                for r in [json.loads(line)] if isinstance(r, dict)]
    if isinstance(document, dict):
        inner = next((v for v in document.values() if isinstance(v, list)), None)
        return [r for r in inner if isinstance(r, dict)] if inner is not None else [document]
    return []


def insight_rows(records: list[dict[str, Any]]
                 ) -> Iterator[tuple[str, str, float, dict[str, Any]]]:
    """(MessageId, recipient, when, record) per record that names its message. The
    file's field names are matched without regard to case or underscores (messageId,
    MessageId, message_id)."""
    for record in records:
        fields = {k.replace("_", "").lower(): v for k, v in record.items()}
        message_id = fields.get("messageid") or fields.get("sesmessageid")
        if not message_id:
            continue
        recipient = fields.get("destination") or fields.get("recipient") or ""
        if not isinstance(recipient, str):
            recipient = ""
        yield str(message_id), recipient.lower(), _when(fields), record


def _when(fields: dict[str, Any]) -> float:
    for key in ("sendtimestamp", "senttimestamp", "timestamp", "sendtime", "senttime"):
        t = _time(fields.get(key))
        if t is not None:
            return t
    events = [e for i in fields.get("insights") or [] if isinstance(i, dict)
              for e in i.get("Events") or [] if isinstance(e, dict)]
    times = [t for t in (_time(e.get("Timestamp")) for e in events) if t is not None]
    return min(times) if times else time.time()


def _time(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) / (1000 if value > 1e11 else 1)  # milliseconds, or seconds
    if isinstance(value, str) and value:
        with contextlib.suppress(ValueError):
            t = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            return (t if t.tzinfo else t.replace(tzinfo=datetime.UTC)).timestamp()
    return None


def _utc(t: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(t, datetime.UTC)


def _iso(t: float) -> str:
    return _utc(t).strftime("%Y-%m-%dT%H:%M:%SZ")

