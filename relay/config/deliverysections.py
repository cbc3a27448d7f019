"""The sections about sending mail on: queue, delivery (and its SMTP upstream), feedback
and suppression."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, cast
from urllib.parse import urlsplit

from relay.config.failoversection import FailoverSection
from relay.config.model import (
    AWS_TRANSPORTS,
    DELIVERY_PROCESSES,
    REPUTATION_SOURCES,
    SUPPRESSION_ACTIONS,
    TRANSPORTS,
    DeliveryConfig,
    DeliveryProcess,
    FeedbackConfig,
    FeedbackHttp,
    QueueConfig,
    SmtpUpstream,
    SuppressionAction,
    SuppressionConfig,
    auto_delivery_process,
)
from relay.config.reader import Invalid


class DeliverySections(FailoverSection):
    def queue(self, raw: object) -> QueueConfig:
        d = self.section(raw, "queue", {"directory", "max_age", "min_backoff", "max_backoff",
                                        "min_free"})
        if d is None:
            return QueueConfig()
        q = QueueConfig(
            directory=self.get(d, "directory", "queue", self.path, QueueConfig.directory),
            max_age=self.get(d, "max_age", "queue", self.duration, QueueConfig.max_age),
            min_backoff=self.get(d, "min_backoff", "queue", self.duration,
                                 QueueConfig.min_backoff),
            max_backoff=self.get(d, "max_backoff", "queue", self.duration,
                                 QueueConfig.max_backoff),
            min_free=self.get(d, "min_free", "queue", self.size, QueueConfig.min_free),
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
                                     "smtp", "bounce_notices", "bounce_from", "process", "nice",
                                     "rate_limiter", "failover", "failover_after",
                                     "failover_probe"})
        if d is None:
            return DeliveryConfig()
        dc = DeliveryConfig(
            transport=self.get(d, "transport", path, self.choice(TRANSPORTS),  # type: ignore[arg-type]
                               "sesv2"),
            region=self.get(d, "region", path, self.region, None),
            endpoint_url=self.get(d, "endpoint_url", path, self.url, None),
            profile=self.get(d, "profile", path, self.string, None),
            outbox_dir=self.get(d, "outbox_dir", path, self.path, DeliveryConfig.outbox_dir),
            concurrency=self.get(d, "concurrency", path, self.positive_int, 10),
            process=self.delivery_process(self.get(d, "process", path,
                                                   self.choice(DELIVERY_PROCESSES), "auto")),
            nice=self.get(d, "nice", path, self.niceness, DeliveryConfig.nice),
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
            rate_limiter=self.get(d, "rate_limiter", path, self.redis_url, None),
            failover=self.failover(d.get("failover")),
            failover_after=self.get(d, "failover_after", path, self.positive_int,
                                    DeliveryConfig.failover_after),
            failover_probe=self.get(d, "failover_probe", path, self.duration,
                                    DeliveryConfig.failover_probe),
        )
        self.check_failover(dc)
        if dc.transport in AWS_TRANSPORTS and not dc.region:
            self.problem("delivery.region", f"required for transport {dc.transport}")
        if dc.bounce_notices and not dc.bounce_from:
            self.problem("delivery.bounce_from", "required with bounce_notices: true (an "
                                                 "address SES lets you send from)")
        return dc

    def delivery_process(self, value: str) -> DeliveryProcess:
        if value == "auto":
            return auto_delivery_process()
        return cast(DeliveryProcess, value)

    def niceness(self, v: object, p: str) -> int:
        n = self.integer(v, p)
        if not 0 <= n <= 19:  # lower only: raising a priority would need CAP_SYS_NICE
            raise Invalid("must be between 0 and 19")
        return n

    def redis_url(self, v: object, p: str) -> str:
        s = self.string(v, p)
        if not re.match(r"^(rediss?://[^/\s]+|unix:///?[^\s]+)", s):
            raise Invalid("must be a redis://host:port/db, rediss://... or unix:///path URL")
        return s

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

    def feedback(self, raw: object) -> FeedbackConfig:
        path = "feedback"
        d = self.section(raw, path, {"database", "node", "retention", "topic_arns", "http",
                                     "sqs_queue_url",
                                     "sqs_endpoint_url", "transient_bounce_limit",
                                     "transient_window", "window", "min_volume",
                                     "warn_bounce_rate", "warn_complaint_rate",
                                     "pause_bounce_rate", "pause_complaint_rate",
                                     "min_bounces", "min_complaints", "resume_margin",
                                     "reputation_source", "reputation_interval",
                                     "cloudwatch_endpoint_url"})
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
            except Invalid as e:
                self.problem(f"{path}.topic_arns[{i}]", str(e))
        fc = FeedbackConfig(
            database=self.get(d, "database", path, self.event_store,
                              FeedbackConfig.database),
            node=self.get(d, "node", path, self.string, None),
            retention=self.get(d, "retention", path, self.duration, FeedbackConfig.retention),
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
            min_bounces=self.get(d, "min_bounces", path, self.positive_int,
                                 FeedbackConfig.min_bounces),
            min_complaints=self.get(d, "min_complaints", path, self.positive_int,
                                    FeedbackConfig.min_complaints),
            resume_margin=self.get(d, "resume_margin", path, self.fraction,
                                   FeedbackConfig.resume_margin),
            reputation_source=self.get(d, "reputation_source", path,
                                       self.choice(REPUTATION_SOURCES), "own"),
            reputation_interval=self.get(d, "reputation_interval", path, self.duration,
                                         FeedbackConfig.reputation_interval),
            cloudwatch_endpoint_url=self.get(d, "cloudwatch_endpoint_url", path, self.url,
                                             None),
        )
        if fc.http is not None and not fc.topic_arns:
            self.problem(f"{path}.topic_arns", "required with feedback.http: only "
                                               "notifications from these topics are accepted")
        return fc

    def event_store(self, v: object, p: str) -> Path | str:
        """A SQLite file (a path), or a PostgreSQL URL: postgresql://user:pass@host:port/db
        or postgresql:///db?host=/socket/dir (libpq's URI form)."""
        s = self.string(v, p)
        if not s.startswith(("postgresql:", "postgres:")):
            return self.path(v, p)
        parts = urlsplit(s)
        if not s.startswith(("postgresql://", "postgres://")) or not parts.path.strip("/"):
            raise Invalid("a PostgreSQL URL names its database: postgresql://user:password"
                          "@host:5432/dbname or postgresql:///dbname?host=/run/postgresql")
        return s

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
