"""The configuration's typed objects: every section a frozen dataclass, every default here.

Every problem is reported with the key path that
caused it (``delivery.region: required for transport sesv2``), all of them at once, so an
operator fixes a file in one pass instead of one error per restart.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

TlsMode = Literal["starttls", "implicit", "none"]
AuthMode = Literal["required", "optional", "none"]
Transport = Literal["sesv2", "sesv1", "smtp", "outbox"]
LogFormat = Literal["auto", "json", "console"]
LineEndings = Literal["strict", "normalize"]
SuppressionAction = Literal["reject", "drop"]
LINE_ENDINGS: tuple[str, ...] = ("strict", "normalize")
SUPPRESSION_ACTIONS: tuple[str, ...] = ("reject", "drop")

DeliveryProcess = Literal["separate", "shared"]
DELIVERY_PROCESSES: tuple[str, ...] = ("auto", "separate", "shared")

TRANSPORTS: tuple[str, ...] = ("sesv2", "sesv1", "smtp", "outbox")
# Transports that talk to AWS and therefore need a region.
AWS_TRANSPORTS: tuple[str, ...] = ("sesv2", "sesv1", "smtp")
# feedback.reputation_source: the relay's own counts, SES's CloudWatch metrics, or both.
REPUTATION_SOURCES: tuple[str, ...] = ("own", "cloudwatch", "both")

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
    # Free space the queue's file system must keep: below it MAIL FROM gets 452 4.3.1
    # (Postfix's queue_minfree). None: two maximal messages (relay.queuespace).
    min_free: int | None = None


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
class FailoverRegion:
    """A region delivery may move to (``delivery.failover``), with its own endpoint."""

    region: str
    endpoint_url: str | None = None


@dataclass(frozen=True)
class DeliveryConfig:
    transport: Transport = "sesv2"
    region: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None
    outbox_dir: Path = Path("/var/lib/ses-relay/outbox")
    concurrency: int = 10
    # Where delivery runs: "separate", a process of its own beside the SMTP process(es),
    # as Postfix's qmgr and smtp are apart from smtpd, so that sending never takes the
    # event loop from a session; or "shared", in each SMTP process (one process in all,
    # with workers: 1). "auto" (the default): separate when there is a second CPU to run
    # it, shared on one CPU, where a second process would only take turns with the first.
    process: DeliveryProcess = field(default_factory=lambda: auto_delivery_process())
    # With process separate: the delivery process's nice value, so that the SMTP
    # processes win a core both want (relay/serving.py); 0 keeps it level with them.
    nice: int = 10
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
    # redis://, rediss:// or unix:// URL of a Redis every relay draws the send rate from
    # (relay.ratelimit_redis); None: each relay keeps to the rate on its own.
    rate_limiter: str | None = None
    # Regions to move to, in order, when the primary cannot take mail; failover_after
    # consecutive 5xx or throttling answers count as that; the primary is tried again
    # failover_probe seconds after delivery moved away (relay/transports/regions.py).
    failover: tuple[FailoverRegion, ...] = ()
    failover_after: int = 3
    failover_probe: float = 60.0


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
    # The event store (every message's story); also where reputation is computed. A
    # SQLite file, or a PostgreSQL URL (str: postgresql://...) shared by a fleet.
    database: Path | str = Path("/var/lib/ses-relay/events.sqlite3")
    node: str | None = None  # the relay's name on the rows it writes; None: the host name
    retention: float = 30 * 86400.0  # rows older than this are pruned
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
    # Our own counts pause only with this many events as well as the rate: one complaint
    # among 220 recipients is a 0.45% rate but no evidence (a healthy account at AWS's
    # 0.1% review level gets one there about one time in five). See relay/reputation.py.
    min_bounces: int = 10
    min_complaints: int = 3
    # After `ses-relay resume` the guard pauses again only once a rate is this much worse
    # (relative) than at resume time, not for the level the operator already saw.
    resume_margin: float = 0.25
    # Where the rates come from: "own" (the event store), "cloudwatch" (SES's own
    # Reputation.* metrics for the account, every relay's mail; read every
    # reputation_interval) or "both" (each judged by its own rule: the worse decides).
    reputation_source: str = "own"
    reputation_interval: float = 300.0
    cloudwatch_endpoint_url: str | None = None


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

    @property
    def supervised(self) -> bool:
        """Whether ``serve`` runs several processes under relay.supervisor."""
        return self.workers > 1 or self.delivery.process == "separate"

    @property
    def deliverers(self) -> int:
        """How many processes deliver (each with its own trigger folder in the queue)."""
        return 1 if self.delivery.process == "separate" else self.workers


def auto_delivery_process() -> DeliveryProcess:
    return "separate" if len(os.sched_getaffinity(0)) > 1 else "shared"


DEFAULT_LISTENERS: tuple[Listener, ...] = (
    Listener(name="submission", address="0.0.0.0", port=587, tls="starttls"),  # noqa: S104
    Listener(name="submissions", address="0.0.0.0", port=465, tls="implicit"),  # noqa: S104
)
