"""Transports: the one seam between the queue and the world (SES, or a local outbox)."""

from __future__ import annotations

from relay.transports.base import Transport, build, probe

__all__ = ["Transport", "build", "probe"]
