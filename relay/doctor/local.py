"""The doctor's local checks: configuration, users, TLS certificate, listeners, queue, and
the build."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import shutil
import socket
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from relay import users
from relay.config import Listener
from relay.doctor import live
from relay.doctor.report import (
    FAIL,
    OK,
    WARN,
    Context,
    Row,
    oneline,
)
from relay.errors import UsersFileError
from relay.smtp import plainlines

EXPIRY_WARN_DAYS = 14
MIN_FREE_BYTES = 1024**3


# --- 1. configuration and users ------------------------------------------------------------


def _check_configuration(ctx: Context) -> list[Row]:
    cfg = ctx.config
    region = f", region {cfg.delivery.region}" if cfg.delivery.region else ""
    rows = [Row(OK, "configuration",
                f"{cfg.source or '(not from a file)'}: valid, {len(cfg.listeners)} listener(s), "
                f"transport {cfg.delivery.transport}{region}")]
    return rows + _check_users(ctx)


def _check_users(ctx: Context) -> list[Row]:
    path = ctx.config.users_file
    try:
        ctx.db = users.load(path)
    except UsersFileError as e:
        return [Row(FAIL, "users file", oneline(str(e)),
                    fix=f"repair {path}, or recreate users with `ses-relay user add NAME`")]
    count = len(list(ctx.db))
    needing = [lst.name for lst in ctx.config.listeners if lst.auth == "required"]
    if count == 0 and needing:
        return [Row(WARN, "users file",
                    f"{path}: no users, but listener(s) {', '.join(needing)} require AUTH: "
                    "every client will be refused",
                    fix="add one with `ses-relay user add NAME --config PATH`")]
    missing = "" if path.exists() else " (file does not exist)"
    return [Row(OK, "users file", f"{path}: {count} user(s){missing}")]


# --- 2. TLS certificate ------------------------------------------------------------------


def _check_tls(ctx: Context) -> list[Row]:
    cert, key = ctx.config.tls.cert, ctx.config.tls.key
    if cert is None or key is None:
        return [Row(OK, "TLS certificate", "not applicable: no listener uses TLS")]
    try:
        chain = x509.load_pem_x509_certificates(cert.read_bytes())
    except (OSError, ValueError) as e:
        return [Row(FAIL, "TLS certificate", oneline(f"{cert}: cannot read: {e}"),
                    fix="point tls.cert at a readable PEM certificate (leaf first, then "
                        "intermediates)")]
    problem = _key_problem(cert, key)
    if problem:
        return [Row(FAIL, "TLS certificate", oneline(problem),
                    fix=f"point tls.key at the private key of {cert}, unencrypted and "
                        "readable by the relay's user")]
    leaf = chain[0]
    subject = leaf.subject.rfc4514_string() or "(empty subject)"
    return [Row(OK, "TLS certificate", f"{cert}: {subject}, key matches"),
            _expiry_row(leaf, ctx.now), _hostname_row(leaf, ctx.config.hostname)]


def _key_problem(cert: Path, key: Path) -> str | None:
    """Why the relay could not load this pair, the way it loads it, or None."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # An empty password instead of None: OpenSSL would otherwise prompt on the terminal
        # for an encrypted key. The relay cannot use an encrypted key either.
        ctx.load_cert_chain(cert, key, password=b"")
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e) or "key values mismatch" in str(e):
            return f"{key} is not the private key of {cert}"
        return f"{key}: cannot load ({e.reason or e}); an encrypted key is not supported"
    except OSError as e:
        return f"{key}: cannot read ({e.strerror or e})"
    return None


def _expiry_row(leaf: x509.Certificate, now: float) -> Row:
    not_after = leaf.not_valid_after_utc
    days = (not_after.timestamp() - now) / 86400
    renew = "renew the certificate (certbot renew, or your CA), then restart ses-relay"
    if leaf.not_valid_before_utc.timestamp() > now:
        return Row(FAIL, "TLS expiry", f"not valid before {leaf.not_valid_before_utc:%Y-%m-%d}",
                   fix="check the system clock, or install a certificate that is valid now")
    if days < 0:
        return Row(FAIL, "TLS expiry", f"expired on {not_after:%Y-%m-%d}: clients will refuse "
                                       "STARTTLS", fix=renew)
    detail = f"expires {not_after:%Y-%m-%d} (in {int(days)} days)"
    if days < EXPIRY_WARN_DAYS:
        return Row(WARN, "TLS expiry", detail, fix=renew)
    return Row(OK, "TLS expiry", detail)


def _hostname_row(leaf: x509.Certificate, hostname: str) -> Row:
    dns, ips = _subject_alt_names(leaf)
    if _covers(hostname, dns, ips):
        return Row(OK, "TLS hostname", f"certificate covers {hostname}")
    names = ", ".join(dns + [str(ip) for ip in ips]) or "no subjectAltName"
    return Row(WARN, "TLS hostname", f"certificate does not cover {hostname} ({names})",
               fix="clients that verify the name will refuse it: get a certificate for "
                   f"{hostname}, or set hostname to a name the certificate covers")


def _subject_alt_names(leaf: x509.Certificate
                       ) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        # Clients ignore the subject's CN when matching names (RFC 6125), so do we.
        return [], []
    ips = [ip for ip in san.get_values_for_type(x509.IPAddress)
           if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)]
    return san.get_values_for_type(x509.DNSName), ips


def _covers(hostname: str, dns: list[str],
            ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(hostname) in ips
    host = hostname.lower().rstrip(".")
    for name in (n.lower().rstrip(".") for n in dns):
        if name == host:
            return True
        # A wildcard covers exactly one leftmost label.
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


# --- 3. listeners ----------------------------------------------------------------------


def _check_listeners(ctx: Context) -> list[Row]:
    relay = live.find(ctx.config)
    return [_bind_row(listener, ctx, relay) for listener in ctx.config.listeners]


def _bind_row(listener: Listener, ctx: Context, relay: live.Relay | None) -> Row:
    check = f"listener {listener.name}"
    where = (f"[{listener.address}]:{listener.port}" if ":" in listener.address
             else f"{listener.address}:{listener.port}")
    try:
        _try_bind(listener.address, listener.port)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:  # the relay's own, running? Ask it.
            ours = live.listener_row(listener, ctx.config, relay, where)
            if ours is not None:
                return ours
        return Row(FAIL, check, f"{where}: in use or not permitted ({e.strerror or e})",
                   fix=_bind_fix(e, listener.port))
    return Row(OK, check, f"{where}: can bind ({listener.tls}, auth {listener.auth})")


def _try_bind(address: str, port: int) -> None:
    """Bind every address the relay would bind (as asyncio's create_server does), then close."""
    infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    with contextlib.ExitStack() as stack:
        for family, kind, proto, _, sockaddr in dict.fromkeys(infos):
            sock = stack.enter_context(socket.socket(family, kind, proto))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)


def _bind_fix(e: OSError, port: int) -> str:
    if e.errno in (errno.EACCES, errno.EPERM):
        return (f"port {port} < 1024 needs root or CAP_NET_BIND_SERVICE (the systemd unit "
                "grants it with AmbientCapabilities=CAP_NET_BIND_SERVICE)")
    if e.errno == errno.EADDRNOTAVAIL:
        return "the address is not on this host: fix the listener's address"
    return (f"stop the other service on port {port} (`ss -ltnp 'sport = :{port}'` names it) "
            "or choose another port; if it is ses-relay itself, running, this FAIL is "
            "expected")


# --- 4. queue (and outbox) directory ---------------------------------------------------


def _check_queue(ctx: Context) -> list[Row]:
    rows = _directory_rows("queue directory", ctx.config.queue.directory)
    if ctx.config.delivery.transport == "outbox":
        rows += _directory_rows("outbox directory", ctx.config.delivery.outbox_dir)
    return rows


def _directory_rows(check: str, directory: Path) -> list[Row]:
    existing = _nearest_existing(directory)
    return [_writable_row(check, directory, existing), _space_row(directory, existing)]


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable_row(check: str, directory: Path, existing: Path) -> Row:
    who = " (checked as root: the relay's own user may lack these rights)" \
        if os.geteuid() == 0 else ""
    fix = f"make {directory} writable by the user ses-relay runs as"
    if existing != directory:
        # The relay creates it at start; creating it here could leave it owned by root.
        if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
            return Row(OK, check, f"{directory}: does not exist yet; the relay creates it "
                                  f"under {existing}{who}")
        return Row(FAIL, check, f"{directory}: does not exist and {existing} is not writable",
                   fix=f"create {directory}, owned by the user ses-relay runs as")
    if not directory.is_dir():
        return Row(FAIL, check, f"{directory}: not a directory", fix=fix)
    try:
        _write_probe(directory)
    except OSError as e:
        return Row(FAIL, check, f"{directory}: cannot write ({e.strerror or e})", fix=fix)
    return Row(OK, check, f"{directory}: writable{who}")


def _write_probe(directory: Path) -> None:
    # The fsync matters: a queue the relay cannot fsync cannot promise durability.
    fd, name = tempfile.mkstemp(prefix=".doctor-", dir=directory)
    try:
        os.write(fd, b"ses-relay doctor\n")
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(name)


def _space_row(directory: Path, existing: Path) -> Row:
    free = shutil.disk_usage(existing).free
    detail = f"{free / 1024**3:.1f} GiB free for {directory}"
    if free < MIN_FREE_BYTES:
        return Row(WARN, "disk space", detail,
                   fix="free space on that file system: with a full disk the relay answers "
                       "452 and mail waits at the clients")
    return Row(OK, "disk space", detail)


def _check_build(ctx: Context) -> list[Row]:
    if plainlines.COMPILED:
        return [Row(OK, "DATA fast path", "compiled")]
    return [Row(WARN, "DATA fast path",
                "not compiled: DATA is checked by a regex, 7-16x the CPU per byte",
                fix="install a C compiler and Python's headers (Debian: gcc python3-dev), "
                    "then reinstall ses-relay (in a checkout: make clean, then make run)")]


LOCAL_CHECKS: tuple[tuple[str, Callable[[Context], list[Row]]], ...] = (
    ("configuration", _check_configuration),
    ("TLS certificate", _check_tls),
    ("listeners", _check_listeners),
    ("running relay", live.check_running),
    ("queue directory", _check_queue),
    ("DATA fast path", _check_build),
)


