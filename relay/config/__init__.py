"""Configuration: YAML in, frozen typed objects out.

Every default lives in relay.config.model, and every problem is reported with the key
path that caused it (``delivery.region: required for transport sesv2``), all of them at
once, so an operator fixes a file in one pass instead of one error per restart.

The package, by concern: ``model`` (the typed objects and their defaults), ``reader``
(walking a section and the converters), ``smtpsections`` and ``deliverysections`` (one
reader method per section), ``loading`` (file in, Config out). Import from here.
"""

from relay.config.loading import load, parse, parse_duration, yaml_problem
from relay.config.model import (
    AWS_TRANSPORTS,
    DEFAULT_CONFIG_PATH,
    DEFAULT_LISTENERS,
    LINE_ENDINGS,
    SUPPRESSION_ACTIONS,
    TRANSPORTS,
    AuthMode,
    Config,
    ConsoleConfig,
    DeliveryConfig,
    FailoverRegion,
    FeedbackConfig,
    FeedbackHttp,
    Limits,
    LineEndings,
    Listener,
    LogConfig,
    LogFormat,
    MetricsConfig,
    PolicyConfig,
    QueueConfig,
    SmtpUpstream,
    SuppressionAction,
    SuppressionConfig,
    TlsFiles,
    TlsMode,
    Transport,
    WebConfig,
    is_loopback,
)

__all__ = [
    "AWS_TRANSPORTS",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_LISTENERS",
    "LINE_ENDINGS",
    "SUPPRESSION_ACTIONS",
    "TRANSPORTS",
    "AuthMode",
    "Config",
    "ConsoleConfig",
    "DeliveryConfig",
    "FailoverRegion",
    "FeedbackConfig",
    "FeedbackHttp",
    "Limits",
    "LineEndings",
    "Listener",
    "LogConfig",
    "LogFormat",
    "MetricsConfig",
    "PolicyConfig",
    "QueueConfig",
    "SmtpUpstream",
    "SuppressionAction",
    "SuppressionConfig",
    "TlsFiles",
    "TlsMode",
    "Transport",
    "WebConfig",
    "is_loopback",
    "load",
    "parse",
    "parse_duration",
    "yaml_problem",
]
