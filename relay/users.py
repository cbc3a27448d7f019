"""SMTP users: salted scrypt hashes in a YAML file, and their verification.

scrypt comes from hashlib (OpenSSL), so no extra dependency is needed. Verification costs
tens of milliseconds by design; the SMTP layer runs it in a thread, never on the event loop.
The file is rewritten atomically (write, fsync, rename) so a crash never leaves it half-done.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import math
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

import yaml

from relay.addresses import AddressError, normalize_pattern
from relay.config import Listener, yaml_problem
from relay.errors import UsersFileError
from relay.message import SES_HEADERS, SesHeaders, valid_configuration_set, valid_tag

# n=2**14, r=8 uses 16 MiB and ~40 ms per check on this class of machine: slow for an
# attacker with a stolen file, fast enough for a relay that sees a login per connection.
_N, _R, _P = 2**14, 8, 1
_SCHEME = "scrypt"
_MAXMEM = 128 * 1024 * 1024


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    # Exact addresses and @domain entries this user may send as; empty means any.
    allowed_senders: tuple[str, ...] = field(default_factory=tuple)
    # SES configuration set and message tags for this user's mail (override the defaults).
    configuration_set: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    # Whether this user's X-SES-* headers may choose the configuration set and tags;
    # None: policy.ses_headers decides.
    ses_headers: SesHeaders | None = None
    # May log in to the web console (relay.web.console); SMTP does not look at it.
    admin: bool = False
    # Recipients this user may give at RCPT: per second (or minute, hour), and in any 24
    # hours; None: no limit (relay.userlimits counts them).
    max_rate: Rate | None = None
    max_per_day: int | None = None

    @property
    def limited(self) -> bool:
        return self.max_rate is not None or self.max_per_day is not None


_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Rate:
    """N recipients per second, minute or hour ("10/s", "100/h"): a token bucket that
    holds N, refilled at N per period (relay.userlimits)."""

    count: float
    per: Literal["s", "m", "h"]

    @property
    def per_second(self) -> float:
        return self.count / _PER[self.per]

    def __str__(self) -> str:
        return f"{self.count:g}/{self.per}"


def parse_rate(text: str) -> Rate:
    """"10/s", "30/m", "100/h" (also "/sec", "/min", "/hour"); ValueError if not."""
    count, slash, unit = str(text).strip().partition("/")
    per = {"s": "s", "sec": "s", "m": "m", "min": "m", "h": "h", "hour": "h"}.get(
        unit.strip().lower())
    try:
        n = float(count)
    except ValueError:
        n = math.nan
    if not slash or per is None or not math.isfinite(n) or n <= 0 or n > 1e6:
        raise ValueError(f"{text!r}: a number above 0 per s, m or h (e.g. 10/s, 100/h)")
    return Rate(n, cast(Literal["s", "m", "h"], per))


def parse_per_day(value: object) -> int:
    """A positive whole number of recipients; ValueError if not."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{value!r}: a whole number above 0")
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{value!r}: a whole number above 0") from None
    if n <= 0:
        raise ValueError(f"{value!r}: a whole number above 0")
    return n


def hash_password(password: str, *, n: int = _N, r: int = _R, p: int = _P) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    b64 = base64.b64encode
    return f"{_SCHEME}${n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str | bytes, encoded: str) -> bool:
    """Constant-time check of *password* against an encoded hash; False for any bad hash."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != _SCHEME:
            return False
        want = base64.b64decode(digest, validate=True)
        pw = password if isinstance(password, bytes) else password.encode()
        got = hashlib.scrypt(pw, salt=base64.b64decode(salt, validate=True), n=int(n),
                             r=int(r), p=int(p), dklen=len(want), maxmem=_MAXMEM)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


@functools.cache
def dummy_hash() -> str:
    """A hash of a random password: verifying unknown users against it costs the same
    time as verifying real ones, so response timing does not reveal which user names exist.

    Made on first use, not at import: scrypt's 16 MiB and 50 ms would otherwise be paid
    by every process that imports this module (the supervisor, the delivery worker, each
    CLI command; 14 MB of the supervisor's peak RSS). The SMTP side makes it at start
    (relay.app), so no login pays for it.
    """
    return hash_password(secrets.token_urlsafe(16))


class UserDB:
    """An immutable snapshot of the users file."""

    def __init__(self, users: Mapping[str, User]) -> None:
        self._users = dict(users)

    def __contains__(self, name: str) -> bool:
        return name in self._users

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._users))

    def get(self, name: str) -> User | None:
        return self._users.get(name)

    def authenticate(self, name: str, password: bytes) -> bool:
        """Blocking: call from a thread."""
        user = self._users.get(name)
        ok = verify_password(password, user.password_hash if user else dummy_hash())
        return ok and user is not None

    def with_user(self, user: User) -> UserDB:
        return UserDB({**self._users, user.name: user})

    def without(self, name: str) -> UserDB:
        return UserDB({k: v for k, v in self._users.items() if k != name})


def required_by(listeners: Iterable[Listener]) -> bool:
    """Whether a listener requires AUTH: then the users file must exist, for without it
    every client is refused (a missing file is a mistake to report, not an empty list)."""
    return any(listener.auth == "required" for listener in listeners)


def load(path: Path, *, must_exist: bool = False) -> UserDB:
    """Read the users file; a missing file is an empty database unless *must_exist*.

    Every problem is a UsersFileError naming the file: the command line exits 2 on it
    (a configuration problem, which systemd must not restart-loop on).
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if must_exist:
            raise UsersFileError(f"{path}: users file not found (listeners require AUTH); "
                                 "create it with `ses-relay user add NAME`") from None
        return UserDB({})
    except OSError as e:
        raise UsersFileError(f"{path}: cannot read users file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise UsersFileError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        raise UsersFileError(f"{path}: not valid YAML ({yaml_problem(e)})") from None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise UsersFileError(f"{path}: not valid YAML (nested too deeply)") from None
    if raw is None:
        return UserDB({})
    entries = raw.get("users") if isinstance(raw, dict) else None
    if entries is None and isinstance(raw, dict) and set(raw) <= {"users"}:
        return UserDB({})  # "users:" with nothing under it
    if not isinstance(entries, dict):
        raise UsersFileError(f"{path}: expected a mapping under 'users'")
    return UserDB({str(name): _user(path, str(name), entry) for name, entry in entries.items()})


# A key misspelt (allowed_sender) would silently lift a restriction: refused instead.
# (ses_headers: the per-user switch of issue 15 item 11, read where the User is built.)
_USER_KEYS = frozenset({"password_hash", "allowed_senders", "configuration_set", "tags",
                        "ses_headers", "admin", "max_rate", "max_per_day"})


def _user(path: Path, name: str, entry: object) -> User:
    if not isinstance(entry, dict):
        raise UsersFileError(f"{path}: users.{name}: must be a mapping with password_hash")
    unknown = sorted(str(k) for k in entry if k not in _USER_KEYS)
    if unknown:
        raise UsersFileError(f"{path}: users.{name}: unknown key(s) {', '.join(unknown)}")
    if not valid_hash(entry.get("password_hash")):
        raise UsersFileError(f"{path}: users.{name}.password_hash: not a hash made by "
                             "`ses-relay user add` (scrypt$N$r$p$salt$digest)")
    senders = entry.get("allowed_senders")
    senders = [] if senders is None else senders
    if not isinstance(senders, list) or not all(isinstance(s, str) for s in senders):
        raise UsersFileError(f"{path}: users.{name}.allowed_senders: must be a list")
    try:
        senders = [normalize_pattern(s) for s in senders]
    except AddressError as e:
        raise UsersFileError(f"{path}: users.{name}.allowed_senders: {e.reason}") from None
    config_set = entry.get("configuration_set")
    if config_set is not None and not (isinstance(config_set, str)
                                       and valid_configuration_set(config_set)):
        raise UsersFileError(f"{path}: users.{name}.configuration_set: 1-64 letters, digits, "
                             "_ and -")
    tags = entry.get("tags")
    tags = {} if tags is None else tags
    if not isinstance(tags, dict) or not all(valid_tag(str(k)) and valid_tag(str(v))
                                             for k, v in tags.items()):
        raise UsersFileError(f"{path}: users.{name}.tags: a mapping of names to values, "
                             "each of letters, digits, _ and -")
    ses_headers = entry.get("ses_headers")
    if ses_headers is not None and ses_headers not in SES_HEADERS:
        raise UsersFileError(f"{path}: users.{name}.ses_headers: allow or ignore")
    admin = entry.get("admin", False)
    if not isinstance(admin, bool):
        raise UsersFileError(f"{path}: users.{name}.admin: true or false")
    max_rate, max_per_day = _limits(path, name, entry)
    return User(name, entry["password_hash"], tuple(senders), config_set,
                tuple((str(k), str(v)) for k, v in tags.items()),
                cast(SesHeaders | None, ses_headers), admin, max_rate, max_per_day)


def _limits(path: Path, name: str, entry: dict[object, object]
            ) -> tuple[Rate | None, int | None]:
    rate, per_day = entry.get("max_rate"), entry.get("max_per_day")
    try:
        max_rate = None if rate is None else parse_rate(str(rate))
    except ValueError as e:
        raise UsersFileError(f"{path}: users.{name}.max_rate: {e}") from None
    try:
        max_per_day = None if per_day is None else parse_per_day(per_day)
    except ValueError as e:
        raise UsersFileError(f"{path}: users.{name}.max_per_day: {e}") from None
    return max_rate, max_per_day


def valid_hash(encoded: object) -> bool:
    """Whether *encoded* is a hash verify_password can check (else no password ever works)."""
    if not isinstance(encoded, str):
        return False
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        return False
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except ValueError:
        return False
    # verify_password allows scrypt 128 MiB; more would refuse every password.
    return (n > 1 and n & (n - 1) == 0 and r >= 1 and p >= 1 and 128 * r * (n + p + 2) <= _MAXMEM
            and bool(salt) and len(digest) >= 16)


def save(path: Path, db: UserDB) -> None:
    entries: dict[str, dict[str, object]] = {}
    for name in db:
        user = db.get(name)
        assert user is not None
        entry: dict[str, object] = {"password_hash": user.password_hash}
        if user.allowed_senders:
            entry["allowed_senders"] = list(user.allowed_senders)
        if user.configuration_set:
            entry["configuration_set"] = user.configuration_set
        if user.tags:
            entry["tags"] = dict(user.tags)
        if user.ses_headers is not None:
            entry["ses_headers"] = user.ses_headers
        if user.admin:
            entry["admin"] = True
        if user.max_rate is not None:
            entry["max_rate"] = str(user.max_rate)
        if user.max_per_day is not None:
            entry["max_per_day"] = user.max_per_day
        entries[name] = entry
    text = ("# ses-relay users: managed with `ses-relay user add|remove`.\n"
            + yaml.safe_dump({"users": entries}, sort_keys=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@+-")


def valid_name(name: str) -> bool:
    return 0 < len(name) <= 128 and set(name) <= _NAME_CHARS
