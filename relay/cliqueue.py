"""``ses-relay queue | trace | resume | pause``: the queue and the history of its messages.

Imported by relay.cli only when one of these commands runs.
"""

from __future__ import annotations

import argparse
import sys

from relay import config, queueadmin
from relay.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE, iso_time
from relay.spool import Spool


def queue(cfg: config.Config, args: argparse.Namespace) -> int:
    spool = queueadmin.open_spool(cfg.queue.directory, cfg.deliverers)
    command = args.queue_command
    if command == "list":
        n = 0
        for row in queueadmin.rows(spool):
            print(queueadmin.format_row(row))
            n += 1
        print(f"-- {n} message{'s' if n != 1 else ''}", file=sys.stderr)
        return EXIT_OK
    if command == "flush":
        spool.trigger("flush")
        print("flush requested: deferred messages are retried within seconds")
        return EXIT_OK
    if command == "delete" and args.failed:
        ids = spool.ids("failed")
        for qid in ids:
            spool.delete(qid, "failed")
        print(f"deleted {len(ids)} failed message{'s' if len(ids) != 1 else ''}")
        return EXIT_OK
    if command == "retry" and args.all:
        failed = spool.ids("failed")
        for qid in failed:
            spool.requeue(qid)
        spool.trigger("flush")
        print(f"requeued {len(failed)} failed; deferred messages are retried within seconds")
        return EXIT_OK
    if not args.queue_id:
        print(f"ses-relay: queue {command} needs a queue id", file=sys.stderr)
        return EXIT_USAGE
    return _queue_one(spool, command, args.queue_id)


def _queue_one(spool: Spool, command: str, qid: str) -> int:
    if command == "show":
        text = queueadmin.show(spool, qid)
        if text is None:
            print(f"ses-relay: no message {qid} in the queue", file=sys.stderr)
            return EXIT_FAIL
        print(text, end="")
        return EXIT_OK
    try:
        print(queueadmin.act(spool, command, qid))
    except queueadmin.Refused as e:
        print(f"ses-relay: {e}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


def trace(cfg: config.Config, args: argparse.Namespace) -> int:
    from relay.eventstore import EventStoreError, open_store, story_lines

    try:
        store = open_store(cfg, buffered=False)
        try:
            story = store.trace(args.key)
        finally:
            store.close()
    except EventStoreError as e:  # names the store, without a password
        print(f"ses-relay: the event store: {e}", file=sys.stderr)
        return EXIT_FAIL
    if not story:
        print(f"ses-relay: nothing known about {args.key}", file=sys.stderr)
        return EXIT_FAIL
    for when, what, details in story_lines(story):
        print(f"{iso_time(when)}  {what:<12} {details}")
    return EXIT_OK


def resume(cfg: config.Config) -> int:
    from relay import reputationhold

    reason = queueadmin.resume(queueadmin.open_spool(cfg.queue.directory, cfg.deliverers))
    if reason is None:
        print("delivery is not paused")
    else:
        print(f"resumed (was paused: {reason})")
    hold = reputationhold.load(cfg.queue.directory)
    for line in reputationhold.describe(hold, cfg.feedback) if hold else ():
        print(f"hold: {line}")
    return EXIT_OK


def pause(cfg: config.Config, reason: str) -> int:
    spool = queueadmin.open_spool(cfg.queue.directory, cfg.deliverers)
    was = spool.paused()
    if was is not None:
        print(f"delivery is already paused: {was}")
        return EXIT_OK
    queueadmin.pause(spool, reason)
    print(f"paused: {spool.paused()}; `ses-relay resume` resumes")
    return EXIT_OK
