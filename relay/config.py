"""Configuration: YAML in, frozen typed objects out.

Every default lives in this module, and every problem is reported with the key path that
caused it (``delivery.region: required for transport sesv2``), all of them at once, so an
operator fixes a file in one pass instead of one error per restart.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import yaml

from relay.errors import ConfigError
from relay.message import SES_HEADERS, valid_configuration_set, valid_tag

TlsMode = Literal["starttls", "implicit", "none"]
AuthMode = Literal["required", "optional", "none"]
Transport = Literal["sesv2", "sesv1", "smtp", "outbox"]
LogFormat = Literal["auto", "json", "console"]
LineEndings = Literal["strict", "normalize"]
SuppressionAction = Literal["reject", "drop"]
LINE_ENDINGS: tuple[str, ...] = ("strict", "normalize")
SUPPRESSION_ACTIONS: tuple[str, ...] = ("reject", "drop")

TRANSPORTS: tuple[str, ...] = ("sesv2", "sesv1", "smtp", "outbox")
# Transports that talk to AWS and therefore need a region.
AWS_TRANSPORTS: tuple[str, ...] = ("sesv2", "sesv1", "smtp")

DEFAULT_CONFIG_PATH = Path("/etc/ses-relay/ses-relay.yaml")


@dataclass(frozen=True)
class Listener:
    name: str
    address: str
    port: int
    tls: TlsMode = "starttls"
    auth: AuthMode = "required"
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # Expect a PROXY protocol (v1 or v2) header from a load balancer before SMTP starts.
    proxy_protocol: bool = False
    # The load balancers whose PROXY headers are believed (required with proxy_protocol).
    proxy_from: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


@dataclass(frozen=True)
class TlsFiles:
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class QueueConfig:
    directory: Path = Path("/var/lib/ses-relay/queue")
    max_age: float = 5 * 86400.0
    # Retry delays grow with a message's age, between these bounds (Postfix: 300-4000 s;
    # SES's SMTP guidance starts at 5 s). Short first retries suit SES throttling.
    min_backoff: float = 5.0
    max_backoff: float = 1200.0


@dataclass(frozen=True)
class SmtpUpstream:
    """The SES SMTP endpoint (transport: smtp)."""

    host: str | None = None  # None: email-smtp.<region>.amazonaws.com
    port: int = 587
    # none: plain SMTP, only to a loopback host (a local sink for benchmarks), no AUTH
    # unless credentials are configured.
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    # SMTP credentials. With neither set, they are derived from the IAM credentials of the
    # standard chain (user name = access key id, password = the SES v4 SMTP password).
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None  # extra CA for the upstream certificate

    def hostname(self, region: str | None) -> str:
        return self.host or f"email-smtp.{region}.amazonaws.com"


@dataclass(frozen=True)
class DeliveryConfig:
    transport: Transport = "sesv2"
    region: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None
    outbox_dir: Path = Path("/var/lib/ses-relay/outbox")
    concurrency: int = 10
    timeout: float = 30.0
    # Assume this role (refreshed before expiry) instead of using the chain's identity.
    role_arn: str | None = None
    external_id: str | None = None
    role_session_name: str = "ses-relay"
    # Cross-account sending authorisation (SES identity ARNs).
    from_arn: str | None = None
    source_arn: str | None = None
    return_path_arn: str | None = None
    # Recipients per second; None: the account's MaxSendRate from SES.
    max_send_rate: float | None = None
    smtp: SmtpUpstream = field(default_factory=SmtpUpstream)
    # Send an RFC 3464 delivery status notification to the sender of a message that
    # fails after it was accepted, from this (SES-verified) address.
    bounce_notices: bool = False
    bounce_from: str | None = None


@dataclass(frozen=True)
class LogConfig:
    format: LogFormat = "auto"
    level: str = "info"


@dataclass(frozen=True)
class Limits:
    # Postfix's message_size_limit is 10,240,000; SES itself allows more (see transports).
    max_message_size: int = 10 * 1024 * 1024
    # Seconds of silence before a session is dropped (Postfix smtpd_timeout).
    idle_timeout: float = 300.0
    # Envelope recipients per message (Postfix smtpd_recipient_limit is 1000; SES takes 50
    # per call, so a message is split into several calls).
    max_recipients: int = 100
    # strict: a bare LF in DATA is refused; normalize: LF line ends become CRLF (as Postfix's
    # smtpd_forbid_bare_newline = normalize). Either way only CRLF.CRLF ends DATA.
    line_endings: LineEndings = "strict"
    # The header section is held in memory while it is checked and rewritten.
    max_header_size: int = 256 * 1024
    # Connections in all, and from one client address (Postfix's default is 50).
    max_connections: int = 500
    max_connections_per_ip: int = 50
    # AUTH failures for one user name from one address within auth_lockout before that name
    # gets 421 there; from one address over all names, four times as many before the
    # address does (relay.limits.AuthGuard). Each failure is answered later than the last.
    max_auth_failures: int = 5
    auth_lockout: float = 900.0
    # DATA must finish within data_timeout plus one second per min_data_rate bytes.
    data_timeout: float = 300.0
    min_data_rate: int = 1024
    # On SIGTERM, sessions under way get this long to finish.
    shutdown_grace: float = 30.0


@dataclass(frozen=True)
class PolicyConfig:
    # SES refuses MAIL FROM:<>; rewrite it to this address, or refuse it (550 5.1.7).
    null_sender_rewrite: str | None = None
    # Check the From: header against the user's allowed_senders too (550 5.7.1 at DATA).
    check_header_from: bool = False
    # Staging safety: accept only these recipients (addresses and @domain entries)...
    allowed_recipients: tuple[str, ...] = ()
    # ...or deliver every message to this one address instead of its recipients.
    redirect_all_to: str | None = None
    # Defaults for SES's ConfigurationSetName and EmailTags (per user ones override).
    configuration_set: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    # May X-SES-CONFIGURATION-SET / X-SES-MESSAGE-TAGS headers choose them? allow, ignore
    # (the headers are removed, unread), or auto: allow for users who may send as anyone,
    # ignore for users with allowed_senders, so they cannot leave the configuration set
    # (event destinations, reputation tracking) the operator gave them. A user's own
    # ses_headers overrides this.
    ses_headers: Literal["auto", "allow", "ignore"] = "auto"


@dataclass(frozen=True)
class SuppressionConfig:
    database: Path = Path("/var/lib/ses-relay/suppression.sqlite3")
    # reject: 550 5.1.1 at RCPT; drop: accept the RCPT but leave it out of the envelope.
    action: SuppressionAction = "reject"
    # local: the SQLite list is the truth. ses: SES's account suppression list is, shared
    # by every relay of the account; the local list caches it and is pulled every
    # sync_interval, and feedback is pushed to SES as it arrives.
    backend: Literal["local", "ses"] = "local"
    sync_interval: float = 300.0


@dataclass(frozen=True)
class FeedbackHttp:
    address: str = "0.0.0.0"  # noqa: S104  # SNS comes from the internet
    port: int = 8443
    path: str = "/sns"
    cert: Path | None = None  # TLS for the listener; None: plain HTTP (behind a proxy)
    key: Path | None = None


@dataclass(frozen=True)
class FeedbackConfig:
    # The event store (every message's story); also where reputation is computed.
    database: Path = Path("/var/lib/ses-relay/events.sqlite3")
    topic_arns: tuple[str, ...] = ()
    http: FeedbackHttp | None = None
    sqs_queue_url: str | None = None
    sqs_endpoint_url: str | None = None
    transient_bounce_limit: int = 3
    transient_window: float = 7 * 86400.0
    # Reputation guard over the relay's own sends in the last `window`.
    window: float = 86400.0
    min_volume: int = 200
    warn_bounce_rate: float = 0.025
    warn_complaint_rate: float = 0.0005
    pause_bounce_rate: float | None = 0.05
    pause_complaint_rate: float | None = 0.001


@dataclass(frozen=True)
class MetricsConfig:
    address: str = "127.0.0.1"
    port: int = 9187


@dataclass(frozen=True)
class ConsoleConfig:
    # The web console (relay.web.console). Off the loopback it is served over TLS with the
    # relay's own certificate (tls:), for its login and cookies must not cross a network
    # in clear.
    address: str = "127.0.0.1"
    port: int = 8025
    # A session ends after this long without a request, and at logout.
    session_timeout: float = 3600.0

    @property
    def tls(self) -> bool:
        return not is_loopback(self.address)


def is_loopback(address: str) -> bool:
    """Whether *address* is a loopback IP address or "localhost"."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class WebConfig:
    # The relay's HTTP listeners (metrics, feedback.http), each counted on its own. One
    # request per connection; from accept, it has request_timeout to be read and answered.
    request_timeout: float = 10.0
    max_connections: int = 64
    max_connections_per_ip: int = 16
    # Header lines per request, and bytes in the request line or one header line.
    max_headers: int = 32
    max_header_size: int = 8190


@dataclass(frozen=True)
class Config:
    hostname: str
    listeners: tuple[Listener, ...]
    tls: TlsFiles = field(default_factory=TlsFiles)
    users_file: Path = Path("/etc/ses-relay/users.yaml")
    queue: QueueConfig = field(default_factory=QueueConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    log: LogConfig = field(default_factory=LogConfig)
    limits: Limits = field(default_factory=Limits)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    suppression: SuppressionConfig = field(default_factory=SuppressionConfig)
    metrics: MetricsConfig | None = None  # None: no metrics listener
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    web: WebConfig = field(default_factory=WebConfig)
    console: ConsoleConfig | None = None  # None: no web console
    # Relay processes sharing the listeners' ports and the queue (relay.supervisor);
    # "auto" in the file means one per CPU.
    workers: int = 1
    source: Path | None = None


DEFAULT_LISTENERS: tuple[Listener, ...] = (
    Listener(name="submission", address="0.0.0.0", port=587, tls="starttls"),  # noqa: S104
    Listener(name="submissions", address="0.0.0.0", port=465, tls="implicit"),  # noqa: S104
)


# --- loading -------------------------------------------------------------------------------


def load(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the configuration at *path*; raise ConfigError listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{path}: cannot read ({e.strerror})"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text (byte {e.start})"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: not valid YAML ({yaml_problem(e)})"]) from None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise ConfigError([f"{path}: not valid YAML (nested too deeply)"]) from None
    if raw is None:
        raw = {}
    return parse(raw, base=path.parent, environ=os.environ if environ is None else environ,
                 source=path)


def yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or "syntax error"
    if mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(problem)


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30s``, ``10m``, ``5d``; ValueError if malformed."""
    try:
        return _Reader(base=Path("."), environ={}).duration(text, "")
    except _Invalid as e:
        raise ValueError(str(e)) from None


def parse(raw: object, *, base: Path, environ: Mapping[str, str],
          source: Path | None = None) -> Config:
    """Validate an already-parsed YAML document. Relative paths resolve against *base*."""
    r = _Reader(base=base, environ=environ)
    config = r.config(raw)
    if r.problems or config is None:
        raise ConfigError(r.problems)
    return replace(config, source=source)


# --- the reader: walks the document, converting and collecting problems -----------------

T = TypeVar("T")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|k|mb|m|gb|g|kib|mib|gib)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE_UNITS = {"b": 1, "k": 1000, "kb": 1000, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
               "kib": 1024, "mib": 1024**2, "gib": 1024**3, None: 1}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_MISSING = object()


class _Reader:
    def __init__(self, *, base: Path, environ: Mapping[str, str]) -> None:
        self.base = base
        self.environ = environ
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    # -- generic helpers

    def section(self, raw: object, path: str, known: set[str]) -> dict[str, Any] | None:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problem(path, "must be a mapping")
            return None
        for key in raw:
            if key not in known:
                self.problem(f"{path}.{key}" if path else str(key), "unknown key")
        return raw

    def expand(self, value: object, path: str) -> object:
        if not isinstance(value, str):
            return value

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in self.environ:
                return self.environ[name]
            if default is not None:
                return default
            self.problem(path, f"environment variable {name} is not set")
            return ""

        return _ENV_REF.sub(sub, value)

    def get(self, d: dict[str, Any], key: str, path: str, conv: Callable[[object, str], T],
            default: T) -> T:
        if key not in d or d[key] is None:
            return default
        p = f"{path}.{key}" if path else key
        value = self.expand(d[key], p)
        try:
            return conv(value, p)
        except _Invalid as e:
            self.problem(p, str(e))
            return default

    # -- converters (raise _Invalid with a message)

    def string(self, v: object, _p: str) -> str:
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise _Invalid("must be a string")
        s = str(v)
        if not s:
            raise _Invalid("must not be empty")
        # No value is ever more than one line: a newline in a host name or an ARN would
        # end up in a header (Message-ID, bounce notices) or on a command line.
        if _CONTROL.search(s):
            raise _Invalid("must not contain control characters (such as a newline)")
        return s

    def path(self, v: object, p: str) -> Path:
        s = Path(self.string(v, p)).expanduser()
        return s if s.is_absolute() else (self.base / s)

    def integer(self, v: object, _p: str) -> int:
        if isinstance(v, bool):
            raise _Invalid("must be an integer")
        if isinstance(v, str) and v.strip().isdigit():
            return int(v)
        if not isinstance(v, int):
            raise _Invalid("must be an integer")
        return v

    def port(self, v: object, p: str) -> int:
        n = self.integer(v, p)
        if not 0 <= n <= 65535:
            raise _Invalid("must be between 0 and 65535")
        return n

    def positive_int(self, v: object, p: str) -> int:
        n = self.integer(v, p)
        if n < 1:
            raise _Invalid("must be at least 1")
        return n

    def duration(self, v: object, _p: str) -> float:
        if isinstance(v, int | float) and not isinstance(v, bool):
            seconds = float(v)
        elif isinstance(v, str) and (m := _DURATION.match(v)):
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        else:
            raise _Invalid("must be a duration such as 30s, 10m, 5d")
        if seconds <= 0:
            raise _Invalid("must be positive")
        return seconds

    def size(self, v: object, _p: str) -> int:
        if isinstance(v, int) and not isinstance(v, bool):
            n = v
        elif isinstance(v, str) and (m := _SIZE.match(v)):
            unit = m.group(2).lower() if m.group(2) else None
            n = int(float(m.group(1)) * _SIZE_UNITS[unit])
        else:
            raise _Invalid("must be a size in bytes, or such as 10MB, 512KiB")
        if n < 1:
            raise _Invalid("must be positive")
        return n

    def choice(self, options: tuple[str, ...]) -> Callable[[object, str], str]:
        def conv(v: object, p: str) -> str:
            s = self.string(v, p)
            if s not in options:
                raise _Invalid(f"must be one of {', '.join(options)}")
            return s

        return conv

    def network(self, v: object, p: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        try:
            return ipaddress.ip_network(self.string(v, p), strict=False)
        except ValueError:
            raise _Invalid("must be an IP network in CIDR notation (10.0.0.0/8)") from None

    # -- sections

    def config(self, raw: object) -> Config | None:
        top = self.section(raw, "", {"hostname", "listeners", "tls", "users_file", "queue",
                                     "delivery", "log", "limits", "policy", "suppression",
                                     "metrics", "feedback", "workers", "web", "console"})
        if top is None:
            self.problem("(top)", "the configuration must be a mapping of keys")
            return None
        hostname = self.get(top, "hostname", "", self.hostname, "")
        if not hostname:
            self.problem("hostname", "required (the name used in the SMTP banner and EHLO)")
        listeners = self.listeners(top.get("listeners", _MISSING))
        tls = self.tls(top.get("tls"), listeners)
        workers = self.get(top, "workers", "", self.workers, Config.workers)
        if workers > 1:
            self.shared_ports(listeners)
        return Config(
            hostname=hostname,
            listeners=listeners,
            tls=tls,
            users_file=self.get(top, "users_file", "", self.path, Config.users_file),
            queue=self.queue(top.get("queue")),
            delivery=self.delivery(top.get("delivery")),
            log=self.log(top.get("log")),
            limits=self.limits(top.get("limits")),
            policy=self.policy(top.get("policy")),
            suppression=self.suppression(top.get("suppression")),
            metrics=self.metrics(top.get("metrics")),
            feedback=self.feedback(top.get("feedback")),
            web=self.web(top.get("web")),
            console=self.console(top.get("console"), tls),
            workers=workers,
        )

    def shared_ports(self, listeners: tuple[Listener, ...]) -> None:
        # Port 0 (any free port, for tests and trials: the started log line says which)
        # cannot be shared: each worker would be given a port of its own.
        for i, listener in enumerate(listeners):
            if listener.port == 0:
                self.problem(f"listeners[{i}].port", "0 (any free port) cannot be shared "
                                                     "by workers: give the port")

    def workers(self, v: object, p: str) -> int:
        if v == "auto":
            return os.cpu_count() or 1
        n = self.positive_int(v, p)
        if n > 64:
            raise _Invalid("must be between 1 and 64, or auto (one per CPU)")
        return n

    def hostname(self, v: object, p: str) -> str:
        s = self.string(v, p)
        if not _HOSTNAME.match(s):
            raise _Invalid("must be a host name such as relay.example.com")
        return s

    def listeners(self, raw: object) -> tuple[Listener, ...]:
        if raw is _MISSING:
            return DEFAULT_LISTENERS
        if not isinstance(raw, list) or not raw:
            self.problem("listeners", "must be a non-empty list")
            return ()
        out: list[Listener] = []
        seen: set[str] = set()
        for i, item in enumerate(raw):
            listener = self.listener(item, f"listeners[{i}]", f"listener{i}")
            if listener is None:
                continue
            if listener.name in seen:
                self.problem(f"listeners[{i}].name", f"duplicate listener name {listener.name}")
            seen.add(listener.name)
            out.append(listener)
        return tuple(out)

    def listener(self, raw: object, path: str, default_name: str) -> Listener | None:
        d = self.section(raw, path, {"name", "address", "port", "tls", "auth",
                                     "trusted_networks", "proxy_protocol", "proxy_from"})
        if d is None:
            return None
        for key in ("address", "port"):
            if key not in d:
                self.problem(f"{path}.{key}", "required")
        tls = self.get(d, "tls", path, self.choice(("starttls", "implicit", "none")), "starttls")
        auth = self.get(d, "auth", path, self.choice(("required", "optional", "none")),
                        "required")
        networks = self.networks(d.get("trusted_networks"), f"{path}.trusted_networks")
        if auth == "none" and not networks:
            self.problem(f"{path}.auth", "auth: none needs trusted_networks (no open relay)")
        if tls == "none" and auth != "none":
            self.problem(f"{path}.tls", "tls: none would send passwords in clear; "
                                        "use starttls or implicit, or auth: none")
        proxy = self.get(d, "proxy_protocol", path, self.boolean, False)
        proxy_from = self.networks(d.get("proxy_from"), f"{path}.proxy_from")
        if proxy and not d.get("proxy_from"):
            # Believed from anyone, a PROXY header names any client: an open relay
            # through trusted_networks, and lockouts and limits dodged.
            self.problem(f"{path}.proxy_from", "required with proxy_protocol: true: the "
                                               "networks of the load balancers to trust")
        elif "proxy_from" in d and not proxy:
            self.problem(f"{path}.proxy_from", "only with proxy_protocol: true")
        return Listener(
            name=self.get(d, "name", path, self.string, default_name),
            address=self.get(d, "address", path, self.string, "127.0.0.1"),
            port=self.get(d, "port", path, self.port, 0),
            tls=tls,  # type: ignore[arg-type]  # checked by choice()
            auth=auth,  # type: ignore[arg-type]
            trusted_networks=networks,
            proxy_protocol=proxy,
            proxy_from=proxy_from,
        )

    def networks(self, raw: object, path: str
                 ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.problem(path, "must be a list of CIDR networks")
            return ()
        out = []
        for i, item in enumerate(raw):
            try:
                out.append(self.network(self.expand(item, f"{path}[{i}]"), f"{path}[{i}]"))
            except _Invalid as e:
                self.problem(f"{path}[{i}]", str(e))
        return tuple(out)

    def tls(self, raw: object, listeners: tuple[Listener, ...]) -> TlsFiles:
        d = self.section(raw, "tls", {"cert", "key"})
        if d is None:
            return TlsFiles()
        files = TlsFiles(cert=self.get(d, "cert", "tls", self.path, None),
                         key=self.get(d, "key", "tls", self.path, None))
        if any(lst.tls != "none" for lst in listeners):
            for key in ("cert", "key"):
                value = getattr(files, key)
                if value is None:
                    self.problem(f"tls.{key}", "required by listeners that use TLS")
                elif not value.is_file():
                    self.problem(f"tls.{key}", f"file not found: {value}")
        return files

    def queue(self, raw: object) -> QueueConfig:
        d = self.section(raw, "queue", {"directory", "max_age", "min_backoff", "max_backoff"})
        if d is None:
            return QueueConfig()
        q = QueueConfig(
            directory=self.get(d, "directory", "queue", self.path, QueueConfig.directory),
            max_age=self.get(d, "max_age", "queue", self.duration, QueueConfig.max_age),
            min_backoff=self.get(d, "min_backoff", "queue", self.duration,
                                 QueueConfig.min_backoff),
            max_backoff=self.get(d, "max_backoff", "queue", self.duration,
                                 QueueConfig.max_backoff),
        )
        if q.min_backoff > q.max_backoff:
            self.problem("queue.min_backoff", "must not be larger than queue.max_backoff")
        return q

    def delivery(self, raw: object) -> DeliveryConfig:
        path = "delivery"
        d = self.section(raw, path, {"transport", "region", "endpoint_url", "profile",
                                     "outbox_dir", "concurrency", "timeout", "role_arn",
                                     "external_id", "role_session_name", "from_arn",
                                     "source_arn", "return_path_arn", "max_send_rate",
                                     "smtp", "bounce_notices", "bounce_from"})
        if d is None:
            return DeliveryConfig()
        dc = DeliveryConfig(
            transport=self.get(d, "transport", path, self.choice(TRANSPORTS),  # type: ignore[arg-type]
                               "sesv2"),
            region=self.get(d, "region", path, self.string, None),
            endpoint_url=self.get(d, "endpoint_url", path, self.url, None),
            profile=self.get(d, "profile", path, self.string, None),
            outbox_dir=self.get(d, "outbox_dir", path, self.path, DeliveryConfig.outbox_dir),
            concurrency=self.get(d, "concurrency", path, self.positive_int, 10),
            timeout=self.get(d, "timeout", path, self.duration, DeliveryConfig.timeout),
            role_arn=self.get(d, "role_arn", path, self.arn, None),
            external_id=self.get(d, "external_id", path, self.string, None),
            role_session_name=self.get(d, "role_session_name", path, self.string,
                                       DeliveryConfig.role_session_name),
            from_arn=self.get(d, "from_arn", path, self.arn, None),
            source_arn=self.get(d, "source_arn", path, self.arn, None),
            return_path_arn=self.get(d, "return_path_arn", path, self.arn, None),
            max_send_rate=self.get(d, "max_send_rate", path, self.positive_float, None),
            smtp=self.smtp_upstream(d.get("smtp")),
            bounce_notices=self.get(d, "bounce_notices", path, self.boolean, False),
            bounce_from=self.get(d, "bounce_from", path, self.address, None),
        )
        if dc.transport in AWS_TRANSPORTS and not dc.region:
            self.problem("delivery.region", f"required for transport {dc.transport}")
        if dc.bounce_notices and not dc.bounce_from:
            self.problem("delivery.bounce_from", "required with bounce_notices: true (an "
                                                 "address SES lets you send from)")
        return dc

    def smtp_upstream(self, raw: object) -> SmtpUpstream:
        path = "delivery.smtp"
        d = self.section(raw, path, {"host", "port", "tls", "username", "password",
                                     "password_file", "ca_file"})
        if d is None:
            return SmtpUpstream()
        up = SmtpUpstream(
            host=self.get(d, "host", path, self.string, None),
            port=self.get(d, "port", path, self.port, 587),
            tls=cast(Literal["starttls", "implicit", "none"],
                     self.get(d, "tls", path, self.choice(("starttls", "implicit", "none")),
                              "starttls")),
            username=self.get(d, "username", path, self.string, None),
            password=self.get(d, "password", path, self.string, None),
            password_file=self.get(d, "password_file", path, self.path, None),
            ca_file=self.get(d, "ca_file", path, self.path, None),
        )
        if up.tls == "none" and up.host not in ("127.0.0.1", "::1", "localhost"):
            self.problem(f"{path}.tls", "none is only allowed to a loopback host "
                                        "(127.0.0.1, ::1, localhost)")
        if up.password and up.password_file:
            self.problem(f"{path}.password_file", "set password or password_file, not both")
        if (up.password or up.password_file) and not up.username:
            self.problem(f"{path}.username", "required with a password")
        if up.username and not (up.password or up.password_file):
            self.problem(f"{path}.password", "required with a username (or set neither, to "
                                             "derive both from the IAM credentials)")
        if up.password_file and not up.password_file.is_file():
            self.problem(f"{path}.password_file", f"file not found: {up.password_file}")
        if up.ca_file and not up.ca_file.is_file():
            self.problem(f"{path}.ca_file", f"file not found: {up.ca_file}")
        return up

    def arn(self, v: object, p: str) -> str:
        s = self.string(v, p)
        if not re.match(r"^arn:aws[a-z-]*:[a-z0-9-]+:[a-z0-9-]*:\d{12}:.+$", s):
            raise _Invalid("must be an ARN such as arn:aws:iam::123456789012:role/name")
        return s

    def positive_float(self, v: object, _p: str) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise _Invalid("must be a number")
        if v <= 0:
            raise _Invalid("must be positive")
        return float(v)

    def url(self, v: object, p: str) -> str:
        s = self.string(v, p)
        if not re.match(r"^https?://[^/\s]+", s):
            raise _Invalid("must be an http:// or https:// URL")
        return s

    def log(self, raw: object) -> LogConfig:
        d = self.section(raw, "log", {"format", "level"})
        if d is None:
            return LogConfig()
        return LogConfig(
            format=self.get(d, "format", "log", self.choice(("auto", "json", "console")),  # type: ignore[arg-type]
                            "auto"),
            level=self.get(d, "level", "log",
                           self.choice(("debug", "info", "warning", "error")), "info"),
        )

    def limits(self, raw: object) -> Limits:
        d = self.section(raw, "limits", {"max_message_size", "idle_timeout", "max_recipients",
                                         "line_endings", "max_header_size", "max_connections",
                                         "max_connections_per_ip", "max_auth_failures",
                                         "auth_lockout", "data_timeout", "min_data_rate",
                                         "shutdown_grace"})
        if d is None:
            return Limits()
        return Limits(
            max_message_size=self.get(d, "max_message_size", "limits", self.size,
                                      Limits.max_message_size),
            idle_timeout=self.get(d, "idle_timeout", "limits", self.duration,
                                  Limits.idle_timeout),
            max_recipients=self.get(d, "max_recipients", "limits", self.positive_int,
                                    Limits.max_recipients),
            line_endings=cast(LineEndings, self.get(d, "line_endings", "limits",
                                                    self.choice(LINE_ENDINGS), "strict")),
            max_header_size=self.get(d, "max_header_size", "limits", self.size,
                                     Limits.max_header_size),
            max_connections=self.get(d, "max_connections", "limits", self.positive_int,
                                     Limits.max_connections),
            max_connections_per_ip=self.get(d, "max_connections_per_ip", "limits",
                                            self.positive_int, Limits.max_connections_per_ip),
            max_auth_failures=self.get(d, "max_auth_failures", "limits", self.positive_int,
                                       Limits.max_auth_failures),
            auth_lockout=self.get(d, "auth_lockout", "limits", self.duration,
                                  Limits.auth_lockout),
            data_timeout=self.get(d, "data_timeout", "limits", self.duration,
                                  Limits.data_timeout),
            min_data_rate=self.get(d, "min_data_rate", "limits", self.size,
                                   Limits.min_data_rate),
            shutdown_grace=self.get(d, "shutdown_grace", "limits", self.duration,
                                    Limits.shutdown_grace),
        )

    def policy(self, raw: object) -> PolicyConfig:
        path = "policy"
        d = self.section(raw, path, {"null_sender_rewrite", "check_header_from",
                                     "allowed_recipients", "redirect_all_to",
                                     "configuration_set", "tags", "ses_headers"})
        if d is None:
            return PolicyConfig()
        return PolicyConfig(
            null_sender_rewrite=self.get(d, "null_sender_rewrite", path, self.address, None),
            check_header_from=self.get(d, "check_header_from", path, self.boolean, False),
            allowed_recipients=self.address_patterns(d.get("allowed_recipients"),
                                                     f"{path}.allowed_recipients"),
            redirect_all_to=self.get(d, "redirect_all_to", path, self.address, None),
            configuration_set=self.get(d, "configuration_set", path, self.ses_name, None),
            tags=self.get(d, "tags", path, self.tags, ()),
            ses_headers=cast(Literal["auto", "allow", "ignore"],
                             self.get(d, "ses_headers", path,
                                      self.choice(("auto", *SES_HEADERS)), "auto")),
        )

    def feedback(self, raw: object) -> FeedbackConfig:
        path = "feedback"
        d = self.section(raw, path, {"database", "topic_arns", "http", "sqs_queue_url",
                                     "sqs_endpoint_url", "transient_bounce_limit",
                                     "transient_window", "window", "min_volume",
                                     "warn_bounce_rate", "warn_complaint_rate",
                                     "pause_bounce_rate", "pause_complaint_rate"})
        if d is None:
            return FeedbackConfig()
        topics = d.get("topic_arns") or []
        if not isinstance(topics, list):
            self.problem(f"{path}.topic_arns", "must be a list of SNS topic ARNs")
            topics = []
        arns = []
        for i, t in enumerate(topics):
            try:
                arns.append(self.arn(self.expand(t, path), f"{path}.topic_arns[{i}]"))
            except _Invalid as e:
                self.problem(f"{path}.topic_arns[{i}]", str(e))
        fc = FeedbackConfig(
            database=self.get(d, "database", path, self.path, FeedbackConfig.database),
            topic_arns=tuple(arns),
            http=self.feedback_http(d.get("http")),
            sqs_queue_url=self.get(d, "sqs_queue_url", path, self.url, None),
            sqs_endpoint_url=self.get(d, "sqs_endpoint_url", path, self.url, None),
            transient_bounce_limit=self.get(d, "transient_bounce_limit", path,
                                            self.positive_int, 3),
            transient_window=self.get(d, "transient_window", path, self.duration,
                                      FeedbackConfig.transient_window),
            window=self.get(d, "window", path, self.duration, FeedbackConfig.window),
            min_volume=self.get(d, "min_volume", path, self.positive_int, 200),
            warn_bounce_rate=self.get(d, "warn_bounce_rate", path, self.fraction, 0.025),
            warn_complaint_rate=self.get(d, "warn_complaint_rate", path, self.fraction,
                                         0.0005),
            pause_bounce_rate=self.get(d, "pause_bounce_rate", path, self.fraction, 0.05)
            if d.get("pause_bounce_rate", 0) is not None else None,
            pause_complaint_rate=self.get(d, "pause_complaint_rate", path, self.fraction,
                                          0.001)
            if d.get("pause_complaint_rate", 0) is not None else None,
        )
        if fc.http is not None and not fc.topic_arns:
            self.problem(f"{path}.topic_arns", "required with feedback.http: only "
                                               "notifications from these topics are accepted")
        return fc

    def feedback_http(self, raw: object) -> FeedbackHttp | None:
        if raw is None:
            return None
        path = "feedback.http"
        d = self.section(raw, path, {"address", "port", "path", "cert", "key"})
        if d is None:
            return None
        http = FeedbackHttp(
            address=self.get(d, "address", path, self.string, FeedbackHttp.address),
            port=self.get(d, "port", path, self.port, 8443),
            path=self.get(d, "path", path, self.string, "/sns"),
            cert=self.get(d, "cert", path, self.path, None),
            key=self.get(d, "key", path, self.path, None),
        )
        if bool(http.cert) != bool(http.key):
            self.problem(f"{path}.cert", "set both cert and key, or neither")
        return http

    def fraction(self, v: object, _p: str) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 1:
            raise _Invalid("must be a fraction between 0 and 1, such as 0.05 for 5%")
        return float(v)

    def web(self, raw: object) -> WebConfig:
        d = self.section(raw, "web", {"request_timeout", "max_connections",
                                      "max_connections_per_ip", "max_headers",
                                      "max_header_size"})
        if d is None:
            return WebConfig()
        return WebConfig(
            request_timeout=self.get(d, "request_timeout", "web", self.duration,
                                     WebConfig.request_timeout),
            max_connections=self.get(d, "max_connections", "web", self.positive_int,
                                     WebConfig.max_connections),
            max_connections_per_ip=self.get(d, "max_connections_per_ip", "web",
                                            self.positive_int,
                                            WebConfig.max_connections_per_ip),
            max_headers=self.get(d, "max_headers", "web", self.positive_int,
                                 WebConfig.max_headers),
            max_header_size=self.get(d, "max_header_size", "web", self.size,
                                     WebConfig.max_header_size),
        )

    def metrics(self, raw: object) -> MetricsConfig | None:
        if raw is None:
            return None
        d = self.section(raw, "metrics", {"address", "port"})
        if d is None:
            return None
        return MetricsConfig(address=self.get(d, "address", "metrics", self.string, "127.0.0.1"),
                             port=self.get(d, "port", "metrics", self.port, 9187))

    def console(self, raw: object, tls: TlsFiles) -> ConsoleConfig | None:
        if raw is None:
            return None
        d = self.section(raw, "console", {"address", "port", "session_timeout"})
        if d is None:
            return None
        c = ConsoleConfig(
            address=self.get(d, "address", "console", self.string, ConsoleConfig.address),
            port=self.get(d, "port", "console", self.port, ConsoleConfig.port),
            session_timeout=self.get(d, "session_timeout", "console", self.duration,
                                     ConsoleConfig.session_timeout))
        if c.tls and not (tls.cert and tls.key):
            self.problem("console.address", "off the loopback the console is served over "
                         "TLS: set tls.cert and tls.key, or use 127.0.0.1")
        return c

    def suppression(self, raw: object) -> SuppressionConfig:
        path = "suppression"
        d = self.section(raw, path, {"database", "action", "backend", "sync_interval"})
        if d is None:
            return SuppressionConfig()
        return SuppressionConfig(
            database=self.get(d, "database", path, self.path, SuppressionConfig.database),
            action=cast(SuppressionAction, self.get(d, "action", path,
                                                    self.choice(SUPPRESSION_ACTIONS), "reject")),
            backend=cast(Literal["local", "ses"], self.get(d, "backend", path,
                                                           self.choice(("local", "ses")),
                                                           "local")),
            sync_interval=self.get(d, "sync_interval", path, self.duration, 300.0),
        )

    def boolean(self, v: object, _p: str) -> bool:
        if not isinstance(v, bool):
            raise _Invalid("must be true or false")
        return v

    def address(self, v: object, p: str) -> str:
        from relay.addresses import AddressError, normalize

        try:
            return normalize(self.string(v, p))
        except AddressError as e:
            raise _Invalid(f"not a valid address ({e.reason})") from None

    def address_patterns(self, raw: object, path: str) -> tuple[str, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.problem(path, "must be a list of addresses and @domain entries")
            return ()
        out = []
        for i, item in enumerate(raw):
            from relay.addresses import AddressError, normalize_pattern

            try:
                out.append(normalize_pattern(self.string(self.expand(item, path), path)))
            except (AddressError, _Invalid) as e:
                self.problem(f"{path}[{i}]", getattr(e, "reason", str(e)))
        return tuple(out)

    def ses_name(self, v: object, p: str) -> str:
        s = self.string(v, p)
        if not valid_configuration_set(s):
            raise _Invalid("must be 1-64 characters of letters, digits, _ and -")
        return s

    def tags(self, v: object, p: str) -> tuple[tuple[str, str], ...]:
        if not isinstance(v, dict):
            raise _Invalid("must be a mapping of tag names to values")
        out = []
        for name, value in v.items():
            if not valid_tag(str(name)) or not valid_tag(str(value)):
                raise _Invalid(f"tag {name}: names and values use letters, digits, _ and - "
                               "(at most 255)")
            out.append((str(name), str(value)))
        return tuple(out)


class _Invalid(Exception):
    """A value that cannot be converted; its message becomes the problem text."""


