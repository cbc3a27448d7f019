"""The sections about taking mail: listeners, TLS, limits, policy, and the relay's own
HTTP side (web, metrics, console), plus log and workers."""

from __future__ import annotations

import os
from typing import Literal, cast

from relay.config.model import (
    DEFAULT_LISTENERS,
    LINE_ENDINGS,
    ConsoleConfig,
    Limits,
    LineEndings,
    Listener,
    LogConfig,
    MetricsConfig,
    PolicyConfig,
    TlsFiles,
    WebConfig,
)
from relay.config.reader import MISSING, BaseReader, Invalid
from relay.message import SES_HEADERS


class SmtpSections(BaseReader):
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
            raise Invalid("must be between 1 and 64, or auto (one per CPU)")
        return n

    def listeners(self, raw: object) -> tuple[Listener, ...]:
        if raw is MISSING:
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
