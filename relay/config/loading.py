"""Loading: a file (or a parsed document) in, a Config or a ConfigError listing every
problem out."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import yaml

from relay.config.deliverysections import DeliverySections
from relay.config.model import Config
from relay.config.reader import MISSING, Invalid
from relay.config.smtpsections import SmtpSections
from relay.errors import ConfigError


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
        return Reader(base=Path("."), environ={}).duration(text, "")
    except Invalid as e:
        raise ValueError(str(e)) from None


def parse(raw: object, *, base: Path, environ: Mapping[str, str],
          source: Path | None = None) -> Config:
    """Validate an already-parsed YAML document. Relative paths resolve against *base*."""
    r = Reader(base=base, environ=environ)
    config = r.config(raw)
    if r.problems or config is None:
        raise ConfigError(r.problems)
    return replace(config, source=source)


# --- the reader: walks the document, converting and collecting problems -----------------


class Reader(SmtpSections, DeliverySections):
    """The whole document: every section's reader, and the top level that calls them."""

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
        listeners = self.listeners(top.get("listeners", MISSING))
        tls = self.tls(top.get("tls"), listeners)
        workers = self.get(top, "workers", "", self.workers, Config.workers)
        if workers > 1:
            self.shared_ports(listeners)
        config = Config(
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
        if config.feedback.reputation_source != "own" and not config.delivery.region:
            # SES keeps reputation per region: CloudWatch's is the delivery region's.
            self.problem("feedback.reputation_source", f"{config.feedback.reputation_source}"
                                                       " needs delivery.region")
        return config
