"""``ses-relay events export | import-insights``: the event store's SES history, out to a
warehouse and in from SES's Message Insights.

Imported by relay.cli when it builds its parser (the subcommands are defined here) and
when one of these commands runs; relay.insights and the AWS SDK only when an import runs.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from relay import config, log
from relay.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE, iso_time
from relay.errors import DeliveryError

if TYPE_CHECKING:
    from relay.eventstore import EventStore

_FIRST_IMPORT = 86400.0  # without a cursor or --since: the last day


def add_subcommands(p: argparse.ArgumentParser,
                    add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    esub = p.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    e = esub.add_parser("export", help="export events, incrementally with --cursor")
    e.add_argument("--since", metavar="TIME", help="ISO date/time, or a duration ago (7d)")
    e.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    e.add_argument("--cursor", type=Path, metavar="FILE",
                   help="read the last exported position from FILE, write the new one")
    add_config(e)
    i = esub.add_parser("import-insights",
                        help="import SES's Message Insights (export jobs) into the event "
                             "store, from where the last import stopped")
    i.add_argument("--since", metavar="TIME",
                   help="ISO date/time, or a duration ago (7d); default: where the last "
                        "import stopped, less --lookback (the first time: a day ago)")
    i.add_argument("--range", default="1h", metavar="DURATION",
                   help="time range per export job (default 1h); a range over SES's "
                        "10,000 records per export is split in halves")
    i.add_argument("--lookback", default="1h", metavar="DURATION",
                   help="start this much before where the last import stopped, for "
                        "records SES updated since (default 1h)")
    add_config(i)


def events(cfg: config.Config, args: argparse.Namespace) -> int:
    if args.events_command == "import-insights":
        return import_insights(cfg, args)
    return export(cfg, args)


def _since(value: str) -> float:
    """A point in time: ISO, or a duration ago. ValueError if neither."""
    try:
        return time.time() - config.parse_duration(value)
    except ValueError:
        return datetime.datetime.fromisoformat(value).timestamp()


def export(cfg: config.Config, args: argparse.Namespace) -> int:
    from relay.eventstore import EventStoreError, open_store

    since = 0.0
    if args.since:
        try:
            since = _since(args.since)
        except ValueError:
            print("ses-relay: --since takes an ISO time or a duration (7d)", file=sys.stderr)
            return EXIT_USAGE
    after = int(args.cursor.read_text().strip() or 0) if args.cursor and \
        args.cursor.exists() else 0
    try:
        store = open_store(cfg, buffered=False)
        try:
            rows = list(store.export(after_seq=after, since=since))
        finally:
            store.close()
    except EventStoreError as e:  # names the store, without a password
        print(f"ses-relay: the event store: {e}", file=sys.stderr)
        return EXIT_FAIL
    fields = ["seq", "at", "ses_message_id", "queue_id", "kind", "recipient", "sender",
              "user", "bounce_type", "bounce_subtype", "feedback_id", "diagnostic"]
    if args.format == "csv":
        w = csv.DictWriter(sys.stdout, fields, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    else:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
    if args.cursor and rows:
        args.cursor.write_text(f"{rows[-1]['seq']}\n")
    return EXIT_OK


def import_insights(cfg: config.Config, args: argparse.Namespace) -> int:
    from relay import insights
    from relay.eventstore import EventStoreError, open_store

    try:
        step, lookback = config.parse_duration(args.range), config.parse_duration(args.lookback)
        since = _since(args.since) if args.since else None
    except ValueError as e:
        print(f"ses-relay: {e} (durations such as 30m, 1h; --since also takes an ISO time)",
              file=sys.stderr)
        return EXIT_USAGE
    if not cfg.delivery.region:
        print("ses-relay: import-insights needs delivery.region (the SES region whose "
              "Message Insights to import)", file=sys.stderr)
        return EXIT_USAGE
    if step < insights.MIN_SPAN:
        print(f"ses-relay: --range must be at least {insights.MIN_SPAN:.0f} s", file=sys.stderr)
        return EXIT_USAGE
    log.configure("console" if sys.stderr.isatty() else "json", "warning", stream=sys.stderr)
    try:
        store = open_store(cfg, buffered=False)
    except (OSError, EventStoreError) as e:  # names the store, without a password
        print(f"ses-relay: cannot open the event store: {e}", file=sys.stderr)
        return EXIT_FAIL
    try:
        return _import(cfg, store, since, step, lookback)
    except EventStoreError as e:
        print(f"ses-relay: import failed: the event store: {e}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        store.close()


def _import(cfg: config.Config, store: EventStore, since: float | None, step: float,
            lookback: float) -> int:
    from relay import insights

    end = time.time()
    if since is None:
        cursor = store.insights_cursor()
        since = end - _FIRST_IMPORT if cursor is None else cursor - lookback
    if since >= end:
        print("nothing to import: the range starts in the future")
        return EXIT_OK

    async def run() -> insights.Stats:
        async with insights.InsightsExporter(cfg.delivery, progress=_progress) as ses:
            return await insights.import_range(ses, store, since, end, step)

    try:
        stats = asyncio.run(run())
    except (DeliveryError, insights.InsightsError) as e:
        code = f"{e.code}: " if isinstance(e, DeliveryError) else ""
        print(f"ses-relay: import failed: {code}{e}", file=sys.stderr)
        if isinstance(e, DeliveryError) and e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        cursor = store.insights_cursor()
        if cursor is not None and cursor > since:
            print(f"imported up to {iso_time(cursor)}; the next run goes on from there",
                  file=sys.stderr)
        return EXIT_FAIL
    print(f"imported {stats.records} insights records ({stats.new} new) from "
          f"{iso_time(since)} to {iso_time(end)} in {stats.exports} export"
          f"{'s' if stats.exports != 1 else ''} ({stats.splits} split"
          f"{'s' if stats.splits != 1 else ''} at {insights.LIMIT:,} records)")
    for a, b in stats.incomplete:
        print(f"ses-relay: {iso_time(a)} .. {iso_time(b)} has more than {insights.LIMIT:,} "
              f"records even in {insights.MIN_SPAN:.0f} s: some were not exported",
              file=sys.stderr)
    return EXIT_FAIL if stats.incomplete else EXIT_OK


def _progress(line: str) -> None:
    print(f"ses-relay: {line}", file=sys.stderr, flush=True)
