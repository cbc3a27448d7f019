"""The configuration a relay runs with, key by key: what SIGHUP applies live, what needs a
restart, and the record the running relay keeps of it for `check-config --running`.

A configuration is flattened to key paths (``limits.max_auth_failures``,
``listeners.submission.port``, ``delivery.region``) with JSON values. The running relay
writes its own, atomically, to ``running-config.json`` in the queue directory at start
and after each reload (the queue directory: the one place both the relay and the
operator's tools already share, with the relay's permissions). Secrets (the upstream
SMTP password, the role's external id) are never written: only a salted scrypt digest,
enough to tell whether the file's differs.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import ipaddress
import json
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relay.config import Config, load
from relay.errors import ConfigError
from relay.queueshare import ALONE, Share

STATE_FILE = "running-config.json"
LOCK_FILE = ".running-config.lock"  # its writers' (one per part), never the readers'
FORMAT = 1
# Sections and keys SIGHUP applies (relay.app.Relay.reload). Everything else (listeners,
# queue, delivery but its max_send_rate, suppression, feedback but its listener, workers)
# is bound at start.
# A key not named here needs a restart: an unknown new key is never claimed to be live.
LIVE = ("hostname", "tls", "users_file", "log", "limits", "policy", "metrics",
        "feedback.http", "web", "console", "delivery.max_send_rate")
SECRETS = frozenset({"password", "external_id", "rate_limiter"})  # (its URL's password)
# A value that may carry a password whatever its key: feedback.database's PostgreSQL URL.
_SECRET_URLS = ("postgresql://", "postgres://")
_NOT_CONFIG = frozenset({"source"})


def applicable(old: Config, new: Config, *, tls_on: bool) -> Config:
    """*new* as a reload applies it: what cannot change live keeps its running value
    (TLS can be renewed live, not turned on or off)."""
    toggled = tls_on != bool(new.tls.cert and new.tls.key)
    return dataclasses.replace(
        new, listeners=old.listeners, queue=old.queue,
        delivery=dataclasses.replace(old.delivery, max_send_rate=new.delivery.max_send_rate),
        suppression=old.suppression, workers=old.workers,
        feedback=dataclasses.replace(old.feedback, http=new.feedback.http),
        tls=old.tls if toggled else new.tls)


def flatten(cfg: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if f.name not in _NOT_CONFIG:
            _flatten(getattr(cfg, f.name), f.name, out)
    return out


def _flatten(value: object, path: str, out: dict[str, Any]) -> None:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _flatten(getattr(value, f.name), f"{path}.{f.name}", out)
    elif (isinstance(value, tuple) and value
          and all(dataclasses.is_dataclass(v) and hasattr(v, "name") for v in value)):
        for v in value:  # listeners, by name: their order means nothing
            _flatten(v, f"{path}.{v.name}", out)
    else:
        out[path] = _json(value)


def _json(value: object) -> Any:
    if isinstance(value, tuple | list):
        return [_json(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # failover regions
        return {f.name: _json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path | ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    return value


def needs_restart(key: str, running: dict[str, Any] | None = None,
                  wanted: dict[str, Any] | None = None) -> bool:
    """Whether a change to *key* (from the *running* flat configuration to the *wanted*
    one, when given) takes a restart: TLS can be renewed live, not turned on or off."""
    if key.startswith("tls.") and running is not None and wanted is not None and (
            (running.get("tls.cert") is None) != (wanted.get("tls.cert") is None)):
        return True
    return not any(key == live or key.startswith(live + ".") for live in LIVE)


def differences(old: dict[str, Any], new: dict[str, Any],
                bound: dict[str, Any] | None = None) -> list[str]:
    """Key paths whose value differs (or that only one side has), sorted. *bound*: the
    ports the running relay got (for port 0, any): a file that names them asks for what
    runs."""
    keys = set(old) | set(new)
    bound = bound or {}
    return sorted(k for k in keys if not _same(k, old.get(k, _ABSENT), new.get(k, _ABSENT))
                  and not (k in bound and new.get(k, _ABSENT) == bound[k]))


def split(running: dict[str, Any], wanted: dict[str, Any],
          bound: dict[str, Any] | None = None) -> tuple[list[str], list[str]]:
    """The keys that differ from the *running* flat configuration to the *wanted* one (see
    differences), as (a reload applies them, they need a restart)."""
    keys = differences(running, wanted, bound)
    restart = [k for k in keys if needs_restart(k, running, wanted)]
    return [k for k in keys if k not in restart], restart


_ABSENT: Any = object()


def _secret(key: str, value: Any) -> bool:
    return isinstance(value, str) and (key.rsplit(".", 1)[-1] in SECRETS
                                       or value.startswith(_SECRET_URLS))


def _same(key: str, running: Any, wanted: Any) -> bool:
    if _secret(key, wanted) and isinstance(running, str) and (
            running.startswith("scrypt:")) and isinstance(wanted, str):
        return _digest(wanted, bytes.fromhex(running.split(":")[1])) == running
    return bool(running == wanted)


def _digest(secret: str, salt: bytes) -> str:
    key = hashlib.scrypt(secret.encode(), salt=salt, n=2**14, r=8, p=1, dklen=16)
    return f"scrypt:{salt.hex()}:{key.hex()}"


def pending(current: Config) -> tuple[list[str], list[str]] | None:
    """For a page that shows whether the file and the running relay agree (the console):
    the keys the file changed since, as (a reload applies them, they need a restart);
    None if the file cannot be read or is invalid. Reads the file: call off the loop."""
    if current.source is None:
        return None
    try:
        wanted = flatten(load(current.source))
    except ConfigError:
        return None
    return split(flatten(current), wanted)


def redacted(flat: dict[str, Any]) -> dict[str, Any]:
    return {k: _digest(v, secrets.token_bytes(16)) if _secret(k, v) else v
            for k, v in flat.items()}


def bound_keys(smtp: dict[str, int], http: dict[str, int]) -> dict[str, int]:
    """The ports bound, by the key that configures them."""
    keys = {"metrics": "metrics.port", "feedback": "feedback.http.port",
            "console": "console.port"}
    return {**{f"listeners.{name}.port": port for name, port in smtp.items()},
            **{keys.get(name, f"{name}.port"): port for name, port in http.items()}}


def records(share: Share) -> bool:
    """Whether this process writes (its part of) the record: the one that runs what runs
    once, and with delivery.process: separate the first SMTP process too, for the ports
    its listeners got (the delivery process has none)."""
    return share.first or (share.role == "smtp" and share.index == 0)


def _part(share: Share) -> Callable[[str], bool] | None:
    """Which bound keys are *share*'s to write (None: all of them, the record is its)."""
    if share.role == "all":
        return None
    smtp = share.role == "smtp"
    return lambda key: key.startswith("listeners.") == smtp


def write(cfg: Config, pid: int, bound: dict[str, int] | None = None,
          share: Share = ALONE) -> Path:
    """Record *cfg* as the running configuration, with the ports it got (*bound*, see
    bound_keys), atomically: a reader sees the old record or the new one, whole.

    *pid* is the service's (the supervisor's, with workers: what systemd calls MainPID).
    When processes of one relay each write their part (*share*), the others' bound ports
    are kept from the record as it is, under a lock, so neither write loses the other."""
    directory = cfg.queue.directory
    part = _part(share)
    with open(directory / LOCK_FILE, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if part is not None:
            bound = {**_kept(directory, pid, part), **(bound or {})}
        return _write(cfg, pid, bound)


def _kept(directory: Path, pid: int, mine: Callable[[str], bool]) -> dict[str, int]:
    try:
        old = read(directory)
    except (OSError, ValueError):
        return {}
    theirs = old.get("bound")
    if old.get("pid") != pid or not isinstance(theirs, dict):  # an earlier relay's
        return {}
    return {k: v for k, v in theirs.items() if not mine(k)}


def _write(cfg: Config, pid: int, bound: dict[str, int] | None) -> Path:
    directory = cfg.queue.directory
    record = {"format": FORMAT, "pid": pid, "source": str(cfg.source) if cfg.source else None,
              "config": redacted(flatten(cfg)), "bound": bound or {}}
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".running-config.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / STATE_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return directory / STATE_FILE


def read(directory: Path) -> dict[str, Any]:
    """The record a running relay wrote; OSError or ValueError if there is none usable."""
    with (directory / STATE_FILE).open(encoding="utf-8") as f:
        record = json.load(f)
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(
            record.get("config"), dict):
        raise ValueError(f"{directory / STATE_FILE}: not a running-configuration record")
    return record


def forget(directory: Path, pid: int) -> None:
    """At a clean stop: remove the record if it is this process's."""
    try:
        if read(directory).get("pid") == pid:
            (directory / STATE_FILE).unlink()
    except (OSError, ValueError):
        pass


def alive(pid: object) -> bool:
    """Whether process *pid* exists (a record left by a relay that is gone is stale)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True
