"""The ``ses-relay`` command line.

Exit codes: 0 success, 1 the operation failed, 2 the configuration or the command line is
wrong (systemd's RestartPreventExitStatus=2 keeps a bad config from restart-looping).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import errno
import getpass
import os
import re
import sys
import time
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from relay import __version__, config, log, users
from relay.addresses import AddressError, normalize
from relay.errors import ConfigError, DeliveryError, SpoolError, UsersFileError
from relay.spool import ALONE, Envelope, Share
from relay.suppression import REASONS, SuppressionError, SuppressionList

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _config_path(value: str | None) -> Path:
    return Path(value or os.environ.get("SES_RELAY_CONFIG") or config.DEFAULT_CONFIG_PATH)


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="PATH",
                   help="configuration file (default: $SES_RELAY_CONFIG or "
                        f"{config.DEFAULT_CONFIG_PATH})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ses-relay",
                                     description="A durable SMTP relay to Amazon SES.")
    parser.add_argument("--version", action="version", version=f"ses-relay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the relay")
    _add_config(p)
    # One of several relay processes, started by the supervisor (workers > 1).
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    # The supervisor's worker count: the file may say otherwise by the time a worker is
    # restarted, and the queue's ownership must not change under the running ones.
    p.add_argument("--of", type=int, default=None, help=argparse.SUPPRESS)
    # What the worker does: take mail, deliver, or both (relay.queueshare.Share).
    p.add_argument("--role", choices=("all", "smtp", "delivery"), default="all",
                   help=argparse.SUPPRESS)
    p = sub.add_parser("check-config", help="validate the configuration; exit 2 if invalid")
    _add_config(p)
    p.add_argument("--running", action="store_true",
                   help="compare it with the running relay's: exit 1 if they differ, 3 if "
                        "no relay runs (see relay/clirunning.py)")
    p.add_argument("--queue-dir", type=Path, default=None, metavar="DIR",
                   help="with --running: the running relay's queue directory (default: "
                        "the file's queue.directory)")
    p = sub.add_parser("doctor", help="check configuration, TLS, ports, queue and the SES "
                                      "account; exit 1 if something would stop mail")
    _add_config(p)

    from relay import cliusers  # here: it imports this module's exit codes

    cliusers.add_parsers(sub, _add_config)

    p = sub.add_parser("suppress", help="manage the local suppression list")
    ssub = p.add_subparsers(dest="suppress_command", required=True, metavar="ACTION")
    s = ssub.add_parser("add", help="suppress an address or @domain")
    s.add_argument("address")
    s.add_argument("--reason", default="manual", choices=REASONS)
    s.add_argument("--expires", metavar="DURATION", help="e.g. 30d; default: never")
    _add_config(s)
    s = ssub.add_parser("remove", help="stop suppressing an address or @domain")
    s.add_argument("address")
    _add_config(s)
    s = ssub.add_parser("list", help="list entries, one per line")
    _add_config(s)
    s = ssub.add_parser("import", help="import a CSV file (- for stdin); idempotent")
    s.add_argument("file")
    s.add_argument("--reason", default="import", choices=REASONS)
    _add_config(s)
    s = ssub.add_parser("export", help="write every entry as CSV to stdout")
    _add_config(s)
    s = ssub.add_parser("sync", help="copy SES's account suppression list here, or ours there")
    direction = s.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from-ses", action="store_true")
    direction.add_argument("--to-ses", action="store_true")
    _add_config(s)

    p = sub.add_parser("queue", help="inspect and manage the queue (safe while running)")
    qsub = p.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    q = qsub.add_parser("list", help="one line per message: id, age, size, state, "
                                     "sender -> recipients (last error)")
    _add_config(q)
    q = qsub.add_parser("show", help="envelope, headers, attempts of one message")
    q.add_argument("queue_id")
    _add_config(q)
    q = qsub.add_parser("retry", help="retry now (a failed message: queue it again)")
    q.add_argument("queue_id", nargs="?")
    q.add_argument("--all", action="store_true", help="every deferred and failed message")
    _add_config(q)
    for action, text in (("hold", "put a message aside: never retried until released"),
                         ("release", "put a held message back in the queue")):
        q = qsub.add_parser(action, help=text)
        q.add_argument("queue_id")
        _add_config(q)
    q = qsub.add_parser("delete", help="delete a message (or every failed one)")
    q.add_argument("queue_id", nargs="?")
    q.add_argument("--failed", action="store_true", help="every failed message")
    _add_config(q)
    q = qsub.add_parser("flush", help="retry every deferred message now")
    _add_config(q)

    p = sub.add_parser("trace", help="one message's story: SMTP receipt, queue, SES, "
                                     "Delivery/Bounce/Complaint...")
    p.add_argument("key", metavar="QUEUE_ID|SES_MESSAGE_ID|ADDRESS")
    _add_config(p)
    p = sub.add_parser("events", help="SES events with the relay's context")
    from relay import clievents  # export, import-insights

    clievents.add_subcommands(p, _add_config)
    p = sub.add_parser("resume", help="resume delivery paused by the reputation guard")
    _add_config(p)
    p = sub.add_parser("pause", help="pause delivery (mail stays queued) until resume")
    p.add_argument("--reason", default="paused by an operator")
    _add_config(p)

    p = sub.add_parser("send-test", help="send a test message through the configured "
                                         "transport (not through SMTP)")
    _add_config(p)
    p.add_argument("--from", dest="sender", required=True, metavar="ADDRESS")
    p.add_argument("--to", dest="recipients", required=True, action="append",
                   metavar="ADDRESS")
    p.add_argument("--subject", default="ses-relay test message")

    p = sub.add_parser("send", help="send an SES stored template (SESv2): to some "
                                    "addresses, or in bulk from a CSV")
    _add_config(p)
    p.add_argument("--from", dest="sender", required=True, metavar="ADDRESS")
    p.add_argument("--template", required=True, metavar="NAME")
    p.add_argument("--configuration-set", metavar="NAME")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", action="append", metavar="ADDRESS",
                        help="recipient (repeatable): one message to all of them")
    target.add_argument("--bulk", metavar="FILE.csv", type=Path,
                        help="one recipient per row, with an 'email' column; the other "
                             "columns (or a JSON 'data' column) are the template data")
    p.add_argument("--data", default="{}", metavar="JSON", help="template data for --to")
    p.add_argument("--results", metavar="FILE.csv", type=Path,
                   help="per-row results for --bulk (default: FILE.results.csv)")

    p = sub.add_parser("smtp-password", help="derive the SES SMTP password from an IAM "
                                             "secret access key read from stdin")
    p.add_argument("--region", required=True)

    p = sub.add_parser("dev-init", help="write a development setup (used by make run)")
    p.add_argument("directory", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except ConfigError as e:
        # The file's path too: a problem's key path alone does not say which file.
        where = f"{_config_path(args.config)}: " if hasattr(args, "config") else ""
        print(f"ses-relay: {where}invalid configuration ({len(e.problems)} problem"
              f"{'s' if len(e.problems) != 1 else ''}):", file=sys.stderr)
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    except UsersFileError as e:  # a configuration problem too: never restart-loop on it
        print(f"ses-relay: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (SuppressionError, SpoolError) as e:
        print(f"ses-relay: {e}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_FAIL


def _load(args: argparse.Namespace) -> config.Config:
    return config.load(_config_path(args.config))


def cmd_serve(args: argparse.Namespace) -> int:
    # Imported here, and relay.app only where it runs: the supervisor of several workers
    # stays a small process without the SMTP server or the AWS SDK in it.
    from relay import supervisor

    cfg = _load(args)
    log.configure(cfg.log.format, cfg.log.level)
    if args.worker is None:
        # Before a supervisor forks workers that would each fail on it: exit 2 here.
        _check_files(cfg)
    if args.worker is None and cfg.supervised:
        return supervisor.run(cfg)
    if args.worker is None:
        return _run_relay(cfg, ALONE)
    supervisor.follow_parent()
    log.bind(worker=args.worker, **({"role": args.role} if args.role != "all" else {}))
    return _run_relay(cfg, Share(args.worker, args.of or cfg.workers, args.role))


# A listener's address and port that this host will not give us: another process has the
# port, the address is not this host's, or a port below 1024 without the capability. Only
# the operator can mend that; restarting would loop.
_BIND_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


def _run_relay(cfg: config.Config, share: Share) -> int:
    from relay import serving

    try:
        return serving.run(cfg, share)
    except OSError as e:
        if e.errno not in _BIND_ERRNOS:
            raise
        print(f"ses-relay: cannot start: {e}", file=sys.stderr)
        return EXIT_USAGE


def cmd_check_config(args: argparse.Namespace) -> int:
    path = _config_path(args.config)
    cfg = config.load(path)
    db = _check_files(cfg)
    print(f"{path}: ok ({len(cfg.listeners)} listeners, transport {cfg.delivery.transport}, "
          f"{len(list(db))} users)")
    if args.running:
        from relay import clirunning

        return clirunning.compare(cfg, sys.stdout, args.queue_dir)
    return EXIT_OK


def _check_files(cfg: config.Config) -> users.UserDB:
    """The files the configuration names: the users file, and the certificate with its
    key. A problem is a UsersFileError or ConfigError (exit 2, with the path)."""
    db = users.load(cfg.users_file, must_exist=users.required_by(cfg.listeners))
    if cfg.tls.cert and cfg.tls.key:
        from relay.smtp import tlscontext

        tlscontext.build(cfg.tls.cert, cfg.tls.key)
    return db


def cmd_doctor(args: argparse.Namespace) -> int:
    from relay import doctor

    cfg = _load(args)  # an invalid config exits 2 through main()'s ConfigError handler
    log.configure("console" if sys.stderr.isatty() else "json", "warning", stream=sys.stderr)
    return asyncio.run(doctor.run(cfg, sys.stdout))


def cmd_user(args: argparse.Namespace) -> int:
    from relay import cliusers

    return cliusers.run(_load(args), args)


def cmd_suppress(args: argparse.Namespace) -> int:
    cfg = _load(args)
    db = SuppressionList(cfg.suppression.database)
    try:
        return _SUPPRESS[args.suppress_command](args, db)
    finally:
        db.close()


def _suppress_add(args: argparse.Namespace, db: SuppressionList) -> int:
    expires = None
    if args.expires:
        try:
            expires = time.time() + config.parse_duration(args.expires)
        except ValueError as e:
            print(f"ses-relay: --expires: {e}", file=sys.stderr)
            return EXIT_USAGE
    entry = db.add(args.address, args.reason, source="cli", expires_at=expires)
    print(f"suppressed {entry.address} ({entry.reason})")
    return EXIT_OK


def _suppress_remove(args: argparse.Namespace, db: SuppressionList) -> int:
    if not db.remove(args.address):
        print(f"ses-relay: {args.address} is not suppressed", file=sys.stderr)
        return EXIT_FAIL
    print(f"removed {args.address.lower()}")
    return EXIT_OK


def _suppress_list(args: argparse.Namespace, db: SuppressionList) -> int:
    for e in db.entries():
        expires = "never" if e.expires_at is None else iso_time(e.expires_at)
        print(f"{e.address}\t{e.reason}\t{e.source or '-'}\t{iso_time(e.created_at)}\t{expires}")
    return EXIT_OK


def _suppress_import(args: argparse.Namespace, db: SuppressionList) -> int:
    source = "import:" + ("stdin" if args.file == "-" else Path(args.file).name)
    with (contextlib.nullcontext(sys.stdin) if args.file == "-"
          else open(args.file, newline="", encoding="utf-8")) as f:
        # Validate every row before writing any: a bad file changes nothing.
        entries = list(db.read_csv(f, reason=args.reason, source=source))
    from tqdm import tqdm  # the progress bar: only the commands that show one load it

    with tqdm(total=len(entries), unit="row", file=sys.stderr, desc="importing",
              disable=None) as bar:
        added = db.import_entries(entries, progress=bar.update)
    print(f"imported {len(entries)} rows: {added} new, {len(entries) - added} already present")
    return EXIT_OK


def _suppress_export(args: argparse.Namespace, db: SuppressionList) -> int:
    db.write_csv(sys.stdout)
    return EXIT_OK


def iso_time(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _suppress_sync(args: argparse.Namespace, db: SuppressionList) -> int:
    from relay.sessuppression import SESSuppression

    cfg = _load(args)

    async def run() -> str:
        async with SESSuppression(cfg.delivery) as ses:
            from tqdm import tqdm

            with tqdm(unit="entry", file=sys.stderr, disable=None) as bar:
                if args.from_ses:
                    added = await ses.pull(db, progress=bar.update)
                    return f"pulled from SES: {added} new entries"
                entries = [(e.address, e.reason) for e in db.entries()]
                pushed = await ses.push(entries, progress=bar.update)
                return f"pushed to SES: {pushed} addresses"

    try:
        print(asyncio.run(run()))
    except DeliveryError as e:
        print(f"ses-relay: {e.code}: {e}", file=sys.stderr)
        print(f"hint: {e.hint}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


_SUPPRESS = {"add": _suppress_add, "remove": _suppress_remove, "list": _suppress_list,
             "import": _suppress_import, "export": _suppress_export, "sync": _suppress_sync}


def cmd_queue(args: argparse.Namespace) -> int:
    from relay import cliqueue

    return cliqueue.queue(_load(args), args)


def cmd_trace(args: argparse.Namespace) -> int:
    from relay import cliqueue

    return cliqueue.trace(_load(args), args)


def cmd_events(args: argparse.Namespace) -> int:
    from relay import clievents

    return clievents.events(_load(args), args)


def cmd_resume(args: argparse.Namespace) -> int:
    from relay import cliqueue

    return cliqueue.resume(_load(args))


def cmd_pause(args: argparse.Namespace) -> int:
    from relay import cliqueue

    return cliqueue.pause(_load(args), args.reason)


def cmd_send_test(args: argparse.Namespace) -> int:
    cfg = _load(args)
    log.configure("console" if sys.stderr.isatty() else "json", "warning", stream=sys.stderr)
    try:
        sender = normalize(args.sender)
        recipients = tuple(normalize(r) for r in args.recipients)
    except AddressError as e:
        print(f"ses-relay: bad address: {e.reason}", file=sys.stderr)
        return EXIT_USAGE
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = args.subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(domain=cfg.hostname)
    msg.set_content(f"This is a test message from ses-relay on {cfg.hostname}, sent with "
                    f"transport {cfg.delivery.transport}.\n")
    data = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    try:
        message_id = asyncio.run(_send_once(cfg, Envelope(sender, recipients), data))
    except DeliveryError as e:
        kind = "permanent" if e.permanent else "temporary"
        print(f"ses-relay: send failed ({kind}): {e.code}: {e}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return EXIT_FAIL
    print(message_id)
    return EXIT_OK


async def _send_once(cfg: config.Config, envelope: Envelope, data: bytes) -> str:
    from relay.transports import build

    transport = build(cfg.delivery)
    await transport.start()
    try:
        return (await transport.send(envelope, data)).message_id
    finally:
        await transport.aclose()


def cmd_send(args: argparse.Namespace) -> int:
    from relay import clisend

    return clisend.send(_load(args), args)


def cmd_smtp_password(args: argparse.Namespace) -> int:
    from relay.sescreds import smtp_password

    if not re.match(r"^[a-z]{2}(-[a-z]+)+-\d$", args.region):
        print(f"ses-relay: {args.region!r} is not an AWS region name", file=sys.stderr)
        return EXIT_USAGE
    secret = (getpass.getpass("IAM secret access key: ") if sys.stdin.isatty()
              else sys.stdin.readline()).strip()
    if not secret:
        print("ses-relay: no secret access key on stdin", file=sys.stderr)
        return EXIT_USAGE
    print(smtp_password(secret, args.region))
    return EXIT_OK


def cmd_dev_init(args: argparse.Namespace) -> int:
    from relay import devsetup

    password = devsetup.init(args.directory)
    cfg = config.load(args.directory / "ses-relay.yaml")
    ports = ", ".join(f"{lst.address}:{lst.port} ({lst.tls})" for lst in cfg.listeners)
    print(f"ses-relay development setup in {args.directory}/\n"
          f"  listeners: {ports}\n"
          f"  user:      {devsetup.DEV_USER}\n"
          f"  password:  {password}\n"
          f"  CA/cert:   {cfg.tls.cert}\n"
          f"  outbox:    {cfg.delivery.outbox_dir}  (delivered mail lands here as .eml)")
    if cfg.console is not None:
        scheme = "https" if cfg.console.tls else "http"
        print(f"  console:   {scheme}://{cfg.console.address}:{cfg.console.port}/  (log in as "
              f"{devsetup.DEV_USER}, same password)")
    else:  # a setup written before the console existed: kept as it is
        print(f"  console:   off (add `console: {{address: 127.0.0.1, port: 8025}}` to "
              f"{args.directory}/ses-relay.yaml and `ses-relay user update dev --admin`, "
              f"or start afresh: make clean)")
    return EXIT_OK


_COMMANDS = {
    "serve": cmd_serve,
    "check-config": cmd_check_config,
    "doctor": cmd_doctor,
    "user": cmd_user,
    "suppress": cmd_suppress,
    "queue": cmd_queue,
    "trace": cmd_trace,
    "events": cmd_events,
    "resume": cmd_resume,
    "pause": cmd_pause,
    "send-test": cmd_send_test,
    "smtp-password": cmd_smtp_password,
    "send": cmd_send,
    "dev-init": cmd_dev_init,
}
