"""``ses-relay user add | update | remove | list``: the SMTP users file.

Registered by relay.cli (``add_parsers``); the file is rewritten atomically by relay.users,
and any bad option is refused (exit 2) before anything is written.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from dataclasses import replace

from relay import config, users
from relay.addresses import AddressError, normalize_pattern
from relay.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE
from relay.message import valid_configuration_set, valid_tag
from relay.policy import ses_headers_choice

_NONE = "none"  # --max-rate none, --max-per-day none: lift the limit


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("user", help="manage SMTP users")
    usub = p.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    a = usub.add_parser("add", help="add a user, or set a user's password "
                                    "(read from stdin when it is not a terminal)")
    a.add_argument("name")
    add_config(a)
    _add_user_options(a)
    u = usub.add_parser("update", help="change a user's sender rights, limits and SES "
                                       "options (and password, with --password)")
    u.add_argument("name")
    u.add_argument("--password", action="store_true", help="also set a new password")
    u.add_argument("--clear-senders", action="store_true",
                   help="remove every allowed sender first (then the user may send as any)")
    add_config(u)
    _add_user_options(u)
    r = usub.add_parser("remove", help="remove a user")
    r.add_argument("name")
    add_config(r)
    ls = usub.add_parser("list", help="list users (with their recipients in the last 24 "
                                      "hours, for those with --max-per-day)")
    add_config(ls)


def _add_user_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-sender", action="append", default=[], metavar="ADDRESS_OR_@DOMAIN",
                   help="an address or @domain the user may send as (repeatable); a user "
                        "with none may send as any address")
    p.add_argument("--configuration-set", metavar="NAME",
                   help="SES configuration set for this user's mail")
    p.add_argument("--tag", action="append", default=[], metavar="NAME=VALUE",
                   help="SES message tag for this user's mail (repeatable)")
    p.add_argument("--ses-headers", choices=("allow", "ignore", "default"),
                   help="whether the X-SES-CONFIGURATION-SET and X-SES-MESSAGE-TAGS headers "
                        "of this user's mail may choose its configuration set and tags "
                        "(default: as policy.ses_headers says)")
    p.add_argument("--admin", action=argparse.BooleanOptionalAction, default=None,
                   help="whether the user may log in to the web console (console:)")
    p.add_argument("--max-rate", metavar="N/s|N/m|N/h|none",
                   help="recipients per second (minute, hour) this user may give; over it, "
                        "RCPT is answered 451 4.7.1 (try again soon); none: no limit")
    p.add_argument("--max-per-day", metavar="N|none",
                   help="recipients in any 24 hours; over it, RCPT is answered 452 4.5.3; "
                        "none: no limit")


def run(cfg: config.Config, args: argparse.Namespace) -> int:
    path = cfg.users_file
    db = users.load(path)
    if args.user_command == "list":
        return _list(cfg, db)
    name = args.name
    if args.user_command == "remove":
        if name not in db:
            print(f"ses-relay: no user {name!r}", file=sys.stderr)
            return EXIT_FAIL
        users.save(path, db.without(name))
        print(f"removed {name}")
        return EXIT_OK
    if not users.valid_name(name):
        print("ses-relay: user names use letters, digits and . _ @ + - (at most 128)",
              file=sys.stderr)
        return EXIT_USAGE
    old = db.get(name)
    if args.user_command == "update" and old is None:
        print(f"ses-relay: no user {name!r} (use user add)", file=sys.stderr)
        return EXIT_FAIL
    try:
        user = _apply_user_options(args, old or users.User(name, ""))
    except ValueError as e:
        print(f"ses-relay: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.user_command == "add" or args.password:
        password = _read_password()
        if password is None:
            return EXIT_USAGE
        user = replace(user, password_hash=users.hash_password(password))
    users.save(path, db.with_user(user))
    senders = ", ".join(user.allowed_senders) or "any"
    print(f"{'updated' if old else 'added'} {name} (may send as: {senders})")
    return EXIT_OK


def _list(cfg: config.Config, db: users.UserDB) -> int:
    from relay import userlimits

    counted = [name for name in db if (u := db.get(name)) is not None and u.max_per_day]
    # Read only: the relay owns the counts (a file made here, as root, would lock it out).
    sent = userlimits.sent_24h(cfg.queue.directory, counted)
    for name in db:
        user = db.get(name)
        assert user is not None
        print(_user_line(user, cfg.policy, sent.get(name)))
    return EXIT_OK


def _apply_user_options(args: argparse.Namespace, user: users.User) -> users.User:
    """The user with the command line's sender rights, limits and SES options applied."""
    senders = [] if getattr(args, "clear_senders", False) else list(user.allowed_senders)
    for pattern in args.allow_sender:
        try:
            p = normalize_pattern(pattern)
        except AddressError as e:
            raise ValueError(f"--allow-sender {pattern}: {e.reason}") from None
        if p not in senders:
            senders.append(p)
    config_set = user.configuration_set
    if args.configuration_set is not None:
        if not valid_configuration_set(args.configuration_set):
            raise ValueError("--configuration-set: 1-64 letters, digits, _ and -")
        config_set = args.configuration_set
    tags = dict(user.tags)
    for tag in args.tag:
        tag_name, eq, value = tag.partition("=")
        if not eq or not valid_tag(tag_name) or not valid_tag(value):
            raise ValueError(f"--tag {tag}: NAME=VALUE with letters, digits, _ and -")
        tags[tag_name] = value
    ses_headers = user.ses_headers
    if args.ses_headers is not None:
        ses_headers = None if args.ses_headers == "default" else args.ses_headers
    admin = user.admin if args.admin is None else args.admin
    max_rate, max_per_day = _limits(args, user)
    return replace(user, allowed_senders=tuple(senders), configuration_set=config_set,
                   tags=tuple(tags.items()), ses_headers=ses_headers, admin=admin,
                   max_rate=max_rate, max_per_day=max_per_day)


def _limits(args: argparse.Namespace, user: users.User
            ) -> tuple[users.Rate | None, int | None]:
    """max_rate and max_per_day from --max-rate and --max-per-day (kept when not given)."""
    rate, per_day = user.max_rate, user.max_per_day
    if args.max_rate is not None:
        try:
            rate = None if args.max_rate.lower() == _NONE else users.parse_rate(args.max_rate)
        except ValueError as e:
            raise ValueError(f"--max-rate {e}") from None
    if args.max_per_day is not None:
        try:
            per_day = (None if args.max_per_day.lower() == _NONE
                       else users.parse_per_day(args.max_per_day))
        except ValueError as e:
            raise ValueError(f"--max-per-day {e}") from None
    return rate, per_day


def _user_line(user: users.User, policy: config.PolicyConfig, sent: int | None) -> str:
    """One line of `user list`: the name, then what the user may do."""
    senders = ",".join(user.allowed_senders) or "any"
    # Whose choice it is, in brackets: policy.ses_headers, or its "auto"; none: the user's.
    choice, whose = ses_headers_choice(user, policy)
    ses_headers = choice if whose == "user" else f"{choice}({whose})"
    parts = [user.name, f"senders={senders}", f"ses_headers={ses_headers}"]
    if user.configuration_set:
        parts.append(f"configuration_set={user.configuration_set}")
    if user.tags:
        parts.append("tags=" + ",".join(f"{k}={v}" for k, v in user.tags))
    if user.max_rate is not None:
        parts.append(f"max_rate={user.max_rate}")
    if user.max_per_day is not None:
        parts.append(f"max_per_day={user.max_per_day}")
        parts.append(f"sent_24h={'?' if sent is None else sent}")
    if user.admin:
        parts.append("admin")
    return "  ".join(parts)


def _read_password() -> str | None:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Password again: "):
            print("ses-relay: passwords do not match", file=sys.stderr)
            return None
        password = first
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        print("ses-relay: the password must have at least 8 characters", file=sys.stderr)
        return None
    return password
