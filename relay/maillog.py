"""The mail log: one function per event in a message's life, like chasquid's maillog.

These lines are the relay's contract with operators (grep, fail2ban, log pipelines): the
event names and keys are stable. Bodies, passwords and AUTH data never appear here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from relay import log, metrics
from relay.events import EventStore

_log = log.get("mail")
_store: EventStore | None = None


def attach(store: EventStore | None) -> None:
    """Also record each message's steps in the event store (for ses-relay trace)."""
    global _store  # one sink, set by the composition root
    _store = store


def _peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)


def _who(peer: Any) -> dict[str, str]:
    """The client (named by a PROXY header, behind a balancer) and the balancer beside it."""
    balancer = getattr(peer, "balancer", None)
    if balancer is None:
        return {"peer": _peer(peer)}
    return {"peer": _peer(peer), "proxy": _peer(balancer)}


def connected(peer: Any, listener: str) -> None:
    metrics.CONNECTIONS.labels(listener).inc()
    _log.debug("connect", **_who(peer), listener=listener)


def auth(peer: Any, user: str, ok: bool, mechanism: str, cached: bool = False) -> None:
    # cached: the password matched a success remembered by relay.authcache (no scrypt).
    metrics.AUTH_CACHE.labels("hit" if cached else "miss").inc()
    if ok:
        _log.info("auth_ok", **_who(peer), user=user, mechanism=mechanism, cached=cached)
    else:
        metrics.AUTH_FAILURES.inc()
        # fail2ban matches on this line: keep "auth_failed" and "peer=<ip>:port" stable.
        _log.warning("auth_failed", **_who(peer), user=user, mechanism=mechanism)


def auth_locked(peer: Any, user: str) -> None:
    # fail2ban matches on this line too: keep "auth_locked" and "peer=<ip>:port" stable.
    metrics.AUTH_LOCKOUTS.inc()
    _log.warning("auth_locked", **_who(peer), user=user)


def rejected(peer: Any, step: str, reply: str, reason: str, **kw: Any) -> None:
    if step == "CONNECT":
        metrics.CONNECTIONS_REFUSED.inc()
    else:
        metrics.REJECTED.labels(step, reply[:3]).inc()
    _log.info("rejected", **_who(peer), step=step, reply=reply, reason=reason, **kw)


def proxy_refused(peer: Any, error: str) -> None:
    """A connection from a balancer that did not start with a valid PROXY header."""
    metrics.CONNECTIONS_REFUSED.inc()
    _log.warning("proxy_header_refused", **_who(peer), error=error)


def tls_failed(peer: Any, error: str) -> None:
    _log.info("tls_failed", **_who(peer), error=error)


def dropped(peer: Any, rcpt: str, reason: str) -> None:
    _log.info("rcpt_dropped", **_who(peer), rcpt=rcpt, reason=reason)


def discarded(peer: Any, mail_from: str, rcpts: Sequence[str]) -> None:
    _log.info("discarded", **_who(peer), mail_from=mail_from, dropped=list(rcpts),
              reason="no recipients left after policy")


def received(peer: Any, user: str | None, mail_from: str, rcpts: Sequence[str],
             size: int) -> None:
    metrics.RECEIVED.inc()
    _log.info("received", **_who(peer), user=user, mail_from=mail_from,
              rcpt_count=len(rcpts), size=size)


def queued(queue_id: str, mail_from: str, rcpts: Sequence[str], size: int,
           since_connect: float | None = None, user: str | None = None) -> None:
    metrics.QUEUED.inc()
    if _store is not None:
        _store.step(queue_id, "queued", sender=mail_from, user=user, rcpts=rcpts, size=size)
    if since_connect is not None:
        metrics.ACCEPT_LATENCY.observe(since_connect)
    _log.info("queued", queue_id=queue_id, mail_from=mail_from, rcpts=list(rcpts), size=size)


def queue_failed(peer: Any, error: str) -> None:
    _log.error("queue_write_failed", **_who(peer), error=error)


def delivered(queue_id: str, transport: str, message_id: str, rcpts: Sequence[str],
              latency: float, attempt: int, region: str | None = None) -> None:
    # region: with delivery.failover, the one that took it (its MessageId is that region's).
    where = {"region": region} if region else {}
    metrics.DELIVERED.labels(transport).inc()
    if _store is not None:
        _store.step(queue_id, "delivered", ses_message_id=message_id, rcpts=rcpts,
                    transport=transport, attempt=attempt, **where)
    metrics.DELIVERED_RCPTS.labels(transport).inc(len(rcpts))
    metrics.DELIVERY_LATENCY.observe(latency)
    _log.info("delivered", queue_id=queue_id, transport=transport, ses_message_id=message_id,
              rcpts=list(rcpts), latency=round(latency, 3), attempt=attempt, **where)


def deferred(queue_id: str, transport: str, code: str, error: str, hint: str,
             attempt: int, next_attempt_in: float) -> None:
    metrics.DEFERRED.labels(code).inc()
    if _store is not None:
        _store.step(queue_id, "deferred", code=code, error=error, hint=hint, attempt=attempt)
    metrics.SES_ERRORS.labels(code).inc()
    _log.warning("deferred", queue_id=queue_id, transport=transport, code=code, error=error,
                 hint=hint, attempt=attempt, next_attempt_in=round(next_attempt_in, 1))


def throttled(queue_id: str, transport: str, code: str, kind: str,
              next_attempt_in: float) -> None:
    metrics.THROTTLED.labels(kind).inc()
    metrics.SES_ERRORS.labels(code).inc()
    _log.info("throttled", queue_id=queue_id, transport=transport, code=code, kind=kind,
              next_attempt_in=round(next_attempt_in, 1))


def failed(queue_id: str, transport: str, code: str, error: str, hint: str,
           attempt: int, rcpts: Sequence[str]) -> None:
    metrics.FAILED.labels(code).inc(len(rcpts))
    if _store is not None:
        _store.step(queue_id, "failed", rcpts=rcpts, code=code, error=error, hint=hint)
    metrics.SES_ERRORS.labels(code).inc()
    _log.error("failed", queue_id=queue_id, transport=transport, code=code, error=error,
               hint=hint, attempt=attempt, rcpts=list(rcpts))


def bounce_notice(queue_id: str, notice_id: str, sender: str) -> None:
    _log.info("bounce_notice_queued", queue_id=queue_id, notice_queue_id=notice_id,
              to=sender)


def quarantined(queue_id: str, reason: str) -> None:
    metrics.QUARANTINED.inc()
    _log.error("quarantined", queue_id=queue_id, reason=reason)


def headers_adjusted(peer: Any, user: str | None, *, from_added: str | None,
                     ses_headers_ignored: bool) -> None:
    """What the relay did to a message's header beyond the usual (Bcc, Date, Message-ID)."""
    if from_added is not None:
        _log.info("from_added", **_who(peer), user=user, sender=from_added)
    if ses_headers_ignored:
        # Why an X-SES-CONFIGURATION-SET had no effect: policy.ses_headers / the user's.
        _log.info("ses_headers_ignored", **_who(peer), user=user)


def user_limited(user: str, limit: str) -> None:
    """A recipient refused by *user*'s max_rate ("rate") or max_per_day ("day"); the
    ``rejected`` line that follows says the rest. (The user label: only names from the
    users file, which a limit needs, so the series stay few.)"""
    metrics.USER_LIMIT_REFUSALS.labels(user, limit).inc()


def suppressed_at_send(queue_id: str, rcpt: str, reason: str, entry: str) -> None:
    """A recipient suppressed since its message was queued: left out of the send."""
    metrics.SUPPRESSED_AT_SEND.labels(reason).inc()
    if _store is not None:
        _store.step(queue_id, "suppressed", rcpts=[rcpt], reason=reason, entry=entry)
    _log.info("suppressed_at_send", queue_id=queue_id, rcpt=rcpt, reason=reason, entry=entry)


def region_failover(from_region: str, to_region: str, reason: str) -> None:
    """Delivery moved to another region (or back to the primary: reason "recovered")."""
    metrics.REGION_FAILOVERS.labels(from_region, to_region, reason).inc()
    _log.warning("region_failover", **{"from": from_region, "to": to_region},
                 reason=reason)
