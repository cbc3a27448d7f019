"""``ses-relay doctor``: every check that tells an operator whether mail would flow.

The checks run in a fixed order, local ones first (configuration, users, TLS, listeners,
queue), then the AWS ones (credentials, account, sender identities, configuration sets),
and each prints one row or a few: OK, WARN (mail flows, but something deserves attention)
or FAIL (something would stop mail). Every non-OK row carries a ``fix:`` line. A failing
AWS call becomes a row with the hint from ``transports.errors.classify`` and the next
check still runs; no exception ever reaches the operator as a traceback.

The doctor only reads: it never creates the queue directory or changes anything in SES,
so running it as root next to a live relay is safe.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import os
import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TextIO

import botocore.exceptions as bex
from cryptography import x509

from relay import aws, users
from relay.config import Config, Listener
from relay.errors import DeliveryError, UsersFileError
from relay.smtp import plainlines
from relay.transports.errors import classify

Status = Literal["OK", "WARN", "FAIL"]
OK: Status = "OK"
WARN: Status = "WARN"
FAIL: Status = "FAIL"

EXPIRY_WARN_DAYS = 14
MIN_FREE_BYTES = 1024**3
QUOTA_WARN_SHARE = 0.8
_CHECK_WIDTH = 22
_DETAIL_MAX = 160

# Codes after which nothing could be sent at all (no network, no valid credentials, a
# suspended account): those make a failed call a FAIL. Anything else (AccessDenied on a
# read-only call, throttling, an odd answer) only means the doctor could not look: a WARN.
_BLOCKING_CODES = frozenset({
    "ConnectionError", "Timeout", "NoCredentials", "InvalidClientTokenId",
    "UnrecognizedClientException", "SignatureDoesNotMatch", "ExpiredToken",
    "ExpiredTokenException", "RequestExpired", "AccountSuspendedException",
})
_DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException"})
# classify's hint for errors it does not know ends in "retrying", which suits the queue but
# not a one-shot report; such rows get this fix instead.
_UNKNOWN_HINT = classify(Exception(), region=None).hint
_UNEXPECTED = ("unexpected error or answer: check delivery.region, delivery.profile, "
               "delivery.endpoint_url and any proxy, then run the doctor again")


@dataclass(frozen=True)
class Row:
    """One line of the report; every row that is not OK says how to fix it."""

    status: Status
    check: str
    detail: str
    fix: str = ""

    def __post_init__(self) -> None:
        assert self.status == OK or self.fix, f"{self.check}: a {self.status} row needs a fix"


@dataclass
class _Context:
    config: Config
    now: float
    db: users.UserDB | None = None  # set by the users check, read by the AWS checks


@dataclass(frozen=True)
class _Clients:
    region: str
    sts: Any
    sesv2: Any
    ses: Any


@dataclass
class _Report:
    """Prints rows as they come, so a slow AWS call shows where it is stuck."""

    out: TextIO
    counts: dict[Status, int] = field(default_factory=lambda: {OK: 0, WARN: 0, FAIL: 0})

    def header(self) -> None:
        self._line("STATUS", "CHECK", "DETAIL")

    def add(self, rows: list[Row]) -> None:
        for row in rows:
            self.counts[row.status] += 1
            self._line(row.status, row.check, row.detail)
            if row.status != OK:
                self._line("", "", f"fix: {row.fix}")
        self.out.flush()

    def summary(self) -> None:
        verdict = ("something above would stop mail" if self.counts[FAIL]
                   else "nothing found that would stop mail")
        self.out.write(f"\n{self.counts[OK]} OK, {self.counts[WARN]} WARN, "
                       f"{self.counts[FAIL]} FAIL: {verdict}\n")

    def _line(self, status: str, check: str, text: str) -> None:
        self.out.write(f"{status:<6} {check:<{_CHECK_WIDTH}} {text}\n")


async def run(config: Config, out: TextIO, *, now: float | None = None) -> int:
    """Run every check, print the table to *out*; 1 if any check FAILed, else 0."""
    ctx = _Context(config, time.time() if now is None else now)
    report = _Report(out)
    report.header()
    for name, local in _LOCAL_CHECKS:
        report.add(_guarded(name, functools.partial(local, ctx)))
    if config.delivery.transport == "outbox":
        report.add([Row(OK, "AWS checks", "not applicable: transport outbox does not call AWS")])
    else:
        await _aws_checks(ctx, report)
    report.summary()
    return 1 if report.counts[FAIL] else 0


def _guarded(name: str, check: Callable[[], list[Row]]) -> list[Row]:
    # A bug in one check must not hide the others, nor print a traceback.
    try:
        return check()
    except Exception as e:
        return [_internal_error(name, e)]


async def _aguarded(name: str, check: Callable[[], Awaitable[list[Row]]]) -> list[Row]:
    try:
        return await check()
    except Exception as e:
        return [_internal_error(name, e)]


def _internal_error(name: str, e: Exception) -> Row:
    return Row(FAIL, name, _oneline(f"the check itself failed: {type(e).__name__}: {e}"),
               fix="a ses-relay bug: please report it with this line")


def _oneline(text: str, limit: int = _DETAIL_MAX) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


# --- 1. configuration and users ------------------------------------------------------------


def _check_configuration(ctx: _Context) -> list[Row]:
    cfg = ctx.config
    region = f", region {cfg.delivery.region}" if cfg.delivery.region else ""
    rows = [Row(OK, "configuration",
                f"{cfg.source or '(not from a file)'}: valid, {len(cfg.listeners)} listener(s), "
                f"transport {cfg.delivery.transport}{region}")]
    return rows + _check_users(ctx)


def _check_users(ctx: _Context) -> list[Row]:
    path = ctx.config.users_file
    try:
        ctx.db = users.load(path)
    except UsersFileError as e:
        return [Row(FAIL, "users file", _oneline(str(e)),
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


def _check_tls(ctx: _Context) -> list[Row]:
    cert, key = ctx.config.tls.cert, ctx.config.tls.key
    if cert is None or key is None:
        return [Row(OK, "TLS certificate", "not applicable: no listener uses TLS")]
    try:
        chain = x509.load_pem_x509_certificates(cert.read_bytes())
    except (OSError, ValueError) as e:
        return [Row(FAIL, "TLS certificate", _oneline(f"{cert}: cannot read: {e}"),
                    fix="point tls.cert at a readable PEM certificate (leaf first, then "
                        "intermediates)")]
    problem = _key_problem(cert, key)
    if problem:
        return [Row(FAIL, "TLS certificate", _oneline(problem),
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


def _check_listeners(ctx: _Context) -> list[Row]:
    return [_bind_row(listener) for listener in ctx.config.listeners]


def _bind_row(listener: Listener) -> Row:
    check = f"listener {listener.name}"
    where = (f"[{listener.address}]:{listener.port}" if ":" in listener.address
             else f"{listener.address}:{listener.port}")
    try:
        _try_bind(listener.address, listener.port)
    except OSError as e:
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


def _check_queue(ctx: _Context) -> list[Row]:
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


def _check_build(ctx: _Context) -> list[Row]:
    if plainlines.COMPILED:
        return [Row(OK, "DATA fast path", "compiled")]
    return [Row(WARN, "DATA fast path",
                "not compiled: DATA is checked by a regex, 7-16x the CPU per byte",
                fix="install a C compiler and Python's headers (Debian: gcc python3-dev), "
                    "then reinstall ses-relay (in a checkout: make clean, then make run)")]


_LOCAL_CHECKS: tuple[tuple[str, Callable[[_Context], list[Row]]], ...] = (
    ("configuration", _check_configuration),
    ("TLS certificate", _check_tls),
    ("listeners", _check_listeners),
    ("queue directory", _check_queue),
    ("DATA fast path", _check_build),
)


# --- AWS: sessions, and one failed call → one row ----------------------------------------


async def _aws_checks(ctx: _Context, report: _Report) -> None:
    delivery = ctx.config.delivery
    region = delivery.region or "(unset)"
    async with contextlib.AsyncExitStack() as stack:
        try:
            clients = await _open_clients(ctx, stack)
        except Exception as e:
            # Without a session the relay could not send either.
            report.add([_failure("AWS session", e, region, "create the AWS clients",
                                 blocking=True)])
            return
        for name, check in _AWS_CHECKS:
            report.add(await _aguarded(name, functools.partial(check, ctx, clients)))


async def _open_clients(ctx: _Context, stack: contextlib.AsyncExitStack) -> _Clients:
    delivery = ctx.config.delivery
    session = await aws.session(delivery)
    config = aws.client_config(delivery)

    async def client(service: str, endpoint_url: str | None) -> Any:
        return await stack.enter_async_context(session.client(
            service, region_name=delivery.region, endpoint_url=endpoint_url, config=config))

    # endpoint_url is SES's; STS keeps its own (botocore honours AWS_ENDPOINT_URL_STS).
    return _Clients(region=delivery.region or "(unset)",
                    sts=await client("sts", None),
                    sesv2=await client("sesv2", delivery.endpoint_url),
                    ses=await client("ses", delivery.endpoint_url))


def _failure(check: str, exc: BaseException, region: str, action: str,
             permission: str = "", *, blocking: bool = False) -> Row:
    """A failed AWS call as a row: FAIL if it means mail cannot go, else WARN."""
    err = exc if isinstance(exc, DeliveryError) else classify(exc, region=region)
    detail = _oneline(f"{action}: {err.code}: {err}")
    unknown = err.hint == _UNKNOWN_HINT
    if blocking or err.code in _BLOCKING_CODES:
        return Row(FAIL, check, detail, fix=_UNEXPECTED if unknown else err.hint)
    if err.code in _DENIED_CODES and permission:
        return Row(WARN, check, detail,
                   fix=f"the doctor needs {permission} to check this (sending may still work): "
                       "allow it to the relay's IAM principal, or check in the SES console")
    return Row(WARN, check, detail, fix=_UNEXPECTED if unknown else err.hint)


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, bex.ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "")
    return ""


def _not_found(exc: BaseException) -> bool:
    return _error_code(exc) in ("NotFoundException", "ConfigurationSetDoesNotExist",
                                "ConfigurationSetDoesNotExistException")


def _not_implemented(exc: BaseException) -> bool:
    """An HTTP 404 that is not SES's own NotFound: the endpoint (moto) lacks the operation."""
    if not isinstance(exc, bex.ClientError) or _not_found(exc):
        return False
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0) == 404


# --- 5. credentials ----------------------------------------------------------------------


async def _check_credentials(ctx: _Context, c: _Clients) -> list[Row]:
    try:
        ident = await c.sts.get_caller_identity()
    except Exception as e:
        row = _failure("AWS credentials", e, c.region, "sts:GetCallerIdentity")
        if row.detail.startswith("sts:GetCallerIdentity: ConnectionError"):
            # classify speaks of SES; this call goes to STS, whose endpoint is separate.
            row = replace(row, fix=f"cannot reach AWS STS (sts.{c.region}.amazonaws.com): "
                                   "check network, DNS, proxy, and AWS_ENDPOINT_URL_STS if set")
        return [_smtp_credentials_suffice(ctx, row)]
    return [Row(OK, "AWS credentials", f"account {ident.get('Account')}, {ident.get('Arn')}")]


def _smtp_credentials_suffice(ctx: _Context, row: Row) -> Row:
    # With explicit SMTP credentials the smtp transport needs no IAM identity to send;
    # only the doctor's own read calls below do.
    if row.status == FAIL and ctx.config.delivery.transport == "smtp" \
            and ctx.config.delivery.smtp.username:
        return Row(WARN, row.check, row.detail,
                   fix=f"{row.fix} (the smtp transport sends with delivery.smtp credentials; "
                       "IAM credentials are needed only for the checks below)")
    return row


# --- 6. account --------------------------------------------------------------------------


async def _check_account(ctx: _Context, c: _Clients) -> list[Row]:
    try:
        account = await c.sesv2.get_account()
    except Exception as e:
        if _not_implemented(e):
            return await _account_v1(c)
        return [_failure("SES account", e, c.region, "sesv2:GetAccount", "ses:GetAccount")]
    return [_sending_row(account.get("SendingEnabled"), account.get("EnforcementStatus"),
                         c.region, ""),
            _production_row(account.get("ProductionAccessEnabled"), c.region),
            _quota_row(account.get("SendQuota") or {}, c.region, "")]


async def _account_v1(c: _Clients) -> list[Row]:
    """GetAccount is missing at this endpoint (moto_server): the same facts from SES v1."""
    source = " (from SES v1: GetAccount is not available at this endpoint)"
    rows = []
    try:
        enabled = await c.ses.get_account_sending_enabled()
        rows.append(_sending_row(enabled.get("Enabled"), None, c.region, source))
    except Exception as e:
        rows.append(_failure("SES sending", e, c.region, "ses:GetAccountSendingEnabled",
                             "ses:GetAccountSendingEnabled"))
    try:
        quota = await c.ses.get_send_quota()
    except Exception as e:
        return [*rows, _failure("SES quota", e, c.region, "ses:GetSendQuota",
                                "ses:GetSendQuota")]
    return [*rows, _sandbox_guess_row(quota, c.region, source), _quota_row(quota, c.region,
                                                                             source)]


def _sending_row(enabled: object, enforcement: object, region: str, source: str) -> Row:
    status = f", enforcement status {enforcement}" if enforcement else ""
    review = "open the SES console's reputation dashboard (account dashboard) in region " \
             f"{region}: AWS pauses accounts for high bounce or complaint rates"
    if enabled is False:
        return Row(FAIL, "SES sending", f"sending is disabled in region {region}{status}"
                                        f"{source}", fix=review)
    if enforcement not in (None, "HEALTHY"):
        return Row(WARN, "SES sending", f"enabled{status}: the account is under review"
                                        f"{source}", fix=review)
    return Row(OK, "SES sending", f"enabled in region {region}{status}{source}")


def _production_row(production: object, region: str) -> Row:
    if production is False:
        return Row(WARN, "SES production access",
                   "sandbox: only verified recipients, 200/day, 1/s",
                   fix=f"request production access for region {region} (SES console → "
                       "Account dashboard → Request production access)")
    return Row(OK, "SES production access", f"production access in region {region}")


def _sandbox_guess_row(quota: dict[str, Any], region: str, source: str) -> Row:
    # SES v1 does not report sandbox status; the sandbox's fixed quota gives it away.
    if float(quota.get("Max24HourSend", 0)) == 200 and float(quota.get("MaxSendRate", 0)) == 1:
        return Row(WARN, "SES production access",
                   f"probably the sandbox (quota 200/day, 1/s): only verified recipients"
                   f"{source}",
                   fix=f"request production access for region {region} (SES console → "
                       "Account dashboard → Request production access)")
    return Row(OK, "SES production access", f"the quota is above the sandbox's{source}")


def _quota_row(quota: dict[str, Any], region: str, source: str) -> Row:
    limit = float(quota.get("Max24HourSend", 0))
    sent = float(quota.get("SentLast24Hours", 0))
    rate = float(quota.get("MaxSendRate", 0))
    if limit <= 0:  # -1: unlimited
        return Row(OK, "SES quota", f"no 24-hour limit, {rate:g}/s{source}")
    detail = f"{sent:g} of {limit:g} sent in the last 24 h ({sent / limit:.0%}), " \
             f"{rate:g}/s{source}"
    if sent > QUOTA_WARN_SHARE * limit:
        return Row(WARN, "SES quota", detail,
                   fix="mail over the quota waits in the queue until SES's window frees up: "
                       f"ask AWS for a higher sending quota in region {region}")
    return Row(OK, "SES quota", detail)


# --- 7. sender identities ----------------------------------------------------------------


async def _check_identities(ctx: _Context, c: _Clients) -> list[Row]:
    arn = ctx.config.delivery.from_arn or ctx.config.delivery.source_arn
    if arn:
        return [Row(OK, "sender identities", f"sent on behalf of {arn}: that account owns the "
                                             "identities; not checked here")]
    wanted = _identities_to_check(ctx)
    if not wanted:
        return [Row(WARN, "sender identities",
                    "no identities to check: no user has allowed_senders, so senders are not "
                    "restricted", fix=f"run `ses-relay send-test --from YOUR_SENDER --to "
                                      f"YOU` to check a sender is verified in region "
                                      f"{c.region}, or restrict users with "
                                      "`ses-relay user update NAME --allow-sender ...`")]
    lookup = _IdentityLookup(c)
    rows: list[Row] = []
    for done, (identity, sources) in enumerate(wanted.items(), 1):
        try:
            rows.append(await _identity_row(lookup, identity, sources))
        except Exception as e:
            row = _failure("sender identity", e, c.region,
                           f"{identity}: sesv2:GetEmailIdentity", "ses:GetEmailIdentity")
            if row.status == FAIL and done < len(wanted):
                # The network or the credentials: every other lookup would fail the same way.
                rows.append(replace(row, detail=f"{row.detail} ({len(wanted) - done} more "
                                                "identities not checked)"))
                break
            rows.append(row)
    return rows + _dkim_rows(lookup)


def _identities_to_check(ctx: _Context) -> dict[str, list[str]]:
    """Each exact address or @domain that must be sendable, with where it comes from."""
    wanted: dict[str, list[str]] = {}
    db = ctx.db or users.UserDB({})
    for name in db:
        user = db.get(name)
        for pattern in user.allowed_senders if user else ():
            wanted.setdefault(pattern, []).append(f"user {name}")
    extra: tuple[tuple[str | None, str], ...] = (
        (ctx.config.policy.null_sender_rewrite, "policy.null_sender_rewrite"),
        (ctx.config.delivery.bounce_from, "delivery.bounce_from"))
    for address, source in extra:
        if address:
            wanted.setdefault(address, []).append(source)
    return wanted


class _IdentityLookup:
    """GetEmailIdentity with a cache: many addresses share one domain."""

    def __init__(self, c: _Clients) -> None:
        self.c = c
        self.found: dict[str, dict[str, Any] | None] = {}
        self.domains_used: list[str] = []

    async def get(self, identity: str) -> dict[str, Any] | None:
        if identity not in self.found:
            try:
                self.found[identity] = dict(await self.c.sesv2.get_email_identity(
                    EmailIdentity=identity))
            except Exception as e:
                if not _not_found(e):
                    raise
                self.found[identity] = None
        return self.found[identity]


def _verified(identity: dict[str, Any] | None) -> bool:
    # VerifiedForSendingStatus is the field SES documents for "may send"; a verified
    # identity also has VerificationStatus SUCCESS. moto_server reports the first as false
    # for every identity and only gets the second right, so either one counts.
    if identity is None:
        return False
    return bool(identity.get("VerifiedForSendingStatus")) \
        or identity.get("VerificationStatus") == "SUCCESS"


async def _identity_row(lookup: _IdentityLookup, identity: str, sources: list[str]) -> Row:
    local, _, domain = identity.rpartition("@")
    used_by = f" (used by {', '.join(sources)})"
    address = await lookup.get(identity) if local else None
    if _verified(address):
        return Row(OK, "sender identity", f"{identity}: verified address{used_by}")
    if _verified(await lookup.get(domain)):
        lookup.domains_used.append(domain)
        how = "verified domain" if not local else f"verified through the domain {domain}"
        return Row(OK, "sender identity", f"{identity}: {how}{used_by}")
    region = lookup.c.region
    state = f"address {address.get('VerificationStatus', 'not verified')}, " if address else ""
    target = f"{identity} or the domain {domain}" if local else f"the domain {domain}"
    which = (f"neither the address nor {domain} is a verified identity" if local
             else f"{domain} is not a verified identity")
    return Row(FAIL, "sender identity",
               f"{identity}: not verified in region {region} ({state}{which}){used_by}",
               fix=f"verify {target} in SES in region {region} (console → Identities, or "
                   f"`aws sesv2 create-email-identity --email-identity {domain} --region "
                   f"{region}`); identities are per region")


def _dkim_rows(lookup: _IdentityLookup) -> list[Row]:
    rows = []
    for domain in dict.fromkeys(lookup.domains_used):
        dkim = (lookup.found.get(domain) or {}).get("DkimAttributes") or {}
        status = dkim.get("Status", "NOT_STARTED")
        if status == "SUCCESS" and dkim.get("SigningEnabled", True):
            rows.append(Row(OK, "DKIM", f"{domain}: DKIM signing enabled ({status})"))
        else:
            rows.append(Row(WARN, "DKIM", f"{domain}: DKIM {status}, signing "
                                          f"{'on' if dkim.get('SigningEnabled') else 'off'}",
                            fix=f"set up Easy DKIM for {domain} in region {lookup.c.region} "
                                "(publish its three CNAME records): without it receivers' "
                                "DMARC checks can fail"))
    return rows


# --- 8. configuration sets ---------------------------------------------------------------

_FEEDBACK_EVENTS = frozenset({"BOUNCE", "COMPLAINT"})


async def _check_configuration_sets(ctx: _Context, c: _Clients) -> list[Row]:
    rows: list[Row] = []
    for name, sources in _configuration_sets(ctx).items():
        rows += await _configuration_set_rows(c, name, sources)
    return rows


def _configuration_sets(ctx: _Context) -> dict[str, list[str]]:
    sets: dict[str, list[str]] = {}
    if ctx.config.policy.configuration_set:
        sets.setdefault(ctx.config.policy.configuration_set, []).append(
            "policy.configuration_set")
    db = ctx.db or users.UserDB({})
    for name in db:
        user = db.get(name)
        if user and user.configuration_set:
            sets.setdefault(user.configuration_set, []).append(f"user {name}")
    return sets


async def _configuration_set_rows(c: _Clients, name: str, sources: list[str]) -> list[Row]:
    used_by = f" (used by {', '.join(sources)})"
    try:
        await c.sesv2.get_configuration_set(ConfigurationSetName=name)
    except Exception as e:
        if _not_found(e):
            return [Row(FAIL, "configuration set", f"{name}: does not exist in region "
                                                   f"{c.region}{used_by}",
                        fix=f"create it (`aws sesv2 create-configuration-set "
                            f"--configuration-set-name {name} --region {c.region}`) or fix "
                            "the name: SES refuses mail that names a missing set")]
        return [_failure("configuration set", e, c.region, f"{name}: sesv2:GetConfigurationSet",
                         "ses:GetConfigurationSet")]
    rows = [Row(OK, "configuration set", f"{name}: exists in region {c.region}{used_by}")]
    try:
        destinations, source = await _event_destinations(c, name)
    except Exception as e:
        return [*rows, _failure("event destinations", e, c.region,
                                f"{name}: GetConfigurationSetEventDestinations",
                                "ses:GetConfigurationSetEventDestinations")]
    return [*rows, _destinations_row(name, destinations, source, c.region)]


async def _event_destinations(c: _Clients, name: str) -> tuple[list[dict[str, Any]], str]:
    try:
        answer = await c.sesv2.get_configuration_set_event_destinations(
            ConfigurationSetName=name)
    except Exception as e:
        if not _not_implemented(e):
            raise
        # moto_server lacks the v2 call; v1's DescribeConfigurationSet has the same list.
        answer = await c.ses.describe_configuration_set(
            ConfigurationSetName=name, ConfigurationSetAttributeNames=["eventDestinations"])
        return list(answer.get("EventDestinations") or []), " (from SES v1)"
    return list(answer.get("EventDestinations") or []), ""


def _destinations_row(name: str, destinations: list[dict[str, Any]], source: str,
                      region: str) -> Row:
    # Bounces and complaints may go to separate destinations (one SNS topic each), so
    # what counts is what the enabled destinations cover together.
    covered = {str(t).upper() for d in destinations if d and d.get("Enabled")
               for t in d.get("MatchingEventTypes") or ()}
    enabled = sum(1 for d in destinations if d and d.get("Enabled"))
    missing = sorted(_FEEDBACK_EVENTS - covered)
    if missing:
        return Row(WARN, "event destinations",
                   f"{name}: {enabled} enabled destination(s), none for "
                   f"{' and '.join(missing)}: those events are not reported to you{source}",
                   fix=f"add an event destination (SNS, EventBridge...) for BOUNCE and "
                       f"COMPLAINT to {name} in region {region}: repeated bounces and "
                       "complaints get the account paused")
    return Row(OK, "event destinations",
               f"{name}: bounces and complaints are published ({enabled} enabled "
               f"destination(s)){source}")


_AWS_CHECKS: tuple[tuple[str, Callable[[_Context, _Clients], Awaitable[list[Row]]]], ...] = (
    ("AWS credentials", _check_credentials),
    ("SES account", _check_account),
    ("sender identities", _check_identities),
    ("configuration sets", _check_configuration_sets),
)
