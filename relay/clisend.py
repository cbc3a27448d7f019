"""``ses-relay send``: an SES stored template to a few addresses, or in bulk from a CSV.

Imported by relay.cli only when this command runs. The sending itself is relay.bulk's;
this module reads the command line, prints, and keeps the results file.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from pathlib import Path

from tqdm import tqdm

from relay import bulk, config, log
from relay.addresses import AddressError, normalize
from relay.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE
from relay.errors import DeliveryError
from relay.suppression import SuppressionList


def send(cfg: config.Config, args: argparse.Namespace) -> int:
    log.configure("console" if sys.stderr.isatty() else "json", "warning", stream=sys.stderr)
    try:
        sender = normalize(args.sender)
        rows = (bulk.read_rows(args.bulk.open(newline="", encoding="utf-8")) if args.bulk
                else None)
        to = [normalize(a) for a in args.to] if args.to else []
        data = json.loads(args.data)
        if not isinstance(data, dict):
            raise ValueError("--data must be a JSON object")
    except (AddressError, bulk.BulkFileError, OSError, ValueError) as e:
        print(f"ses-relay: {getattr(e, 'reason', e)}", file=sys.stderr)
        return EXIT_USAGE
    suppression = SuppressionList(cfg.suppression.database)
    try:
        if rows is not None:
            return asyncio.run(_send_bulk(cfg, args, sender, rows, suppression))
        return asyncio.run(_send_template(cfg, args, sender, to, json.dumps(data),
                                          suppression))
    except DeliveryError as e:
        print(f"ses-relay: send failed: {e.code}: {e}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return EXIT_FAIL
    except (OSError, UnicodeError, csv.Error) as e:  # the results file (SES's are mapped)
        print(f"ses-relay: the results file: {e}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        suppression.close()


def _sender(cfg: config.Config, args: argparse.Namespace, sender: str) -> bulk.TemplateSender:
    """SES's options as the relay's delivery sets them: policy's default configuration
    set (unless --configuration-set) and tags, delivery's from/source/return-path ARNs."""
    return bulk.TemplateSender(
        cfg.delivery, sender=sender, template=args.template,
        configuration_set=args.configuration_set or cfg.policy.configuration_set,
        tags=cfg.policy.tags)


async def _send_template(cfg: config.Config, args: argparse.Namespace, sender: str,
                         to: list[str], data: str, suppression: SuppressionList) -> int:
    allowed = []
    for address in to:
        entry = suppression.lookup(address)
        if entry is not None:
            print(f"ses-relay: skipping {address}: suppressed ({entry.reason})",
                  file=sys.stderr)
        else:
            allowed.append(address)
    if not allowed:
        return EXIT_FAIL
    async with _sender(cfg, args, sender) as ses:
        if ses.quota_left is not None and ses.quota_left < len(allowed):
            print(f"ses-relay: not sent: {len(allowed)} recipients, {ses.quota_left} left "
                  "in the account's 24-hour sending quota", file=sys.stderr)
            return EXIT_FAIL
        print(await ses.send_one(allowed, data))
    return EXIT_OK


async def _send_bulk(cfg: config.Config, args: argparse.Namespace, sender: str,
                     rows: list[bulk.Row], suppression: SuppressionList) -> int:
    out: Path = args.results or args.bulk.with_suffix(".results.csv")
    carried = bulk.already_sent(out, rows)
    skip = {r.row.line for r in carried}
    todo = [r for r in rows if r.line not in skip]
    results = bulk.ResultsFile(out, carried)
    try:
        async with _sender(cfg, args, sender) as ses:
            with tqdm(total=len(todo), unit="row", file=sys.stderr, desc="sending",
                      disable=None) as bar:
                await bulk.send_bulk(ses, todo, suppression, progress=bar.update,
                                     record=results.add)
    finally:
        results.close()
    counts = {s: sum(r.status == s for r in results.results)
              for s in ("sent", "suppressed", "failed", "unsent")}
    print(f"{counts['sent']} sent, {counts['suppressed']} suppressed, {counts['failed']} "
          f"failed; results in {out}" + (f" ({len(carried)} sent by an earlier run, "
                                         "skipped)" if carried else ""))
    if counts["unsent"]:
        print(f"ses-relay: stopped at the account's 24-hour sending quota: {counts['unsent']} "
              f"rows not sent; run the same command again (same results file) when SES's "
              "window has room", file=sys.stderr)
    return EXIT_OK if not (counts["failed"] or counts["unsent"]) else EXIT_FAIL
