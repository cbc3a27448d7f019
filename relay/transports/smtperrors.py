"""The one place where the smtp transport's SMTP, TLS and socket errors become DeliveryErrors.

SES's SMTP interface answers in SMTP codes and English text; this maps them to the same
codes and hints the API transports give (relay.transports.errors), so the scheduler, the
log and the metrics read one vocabulary whichever transport is in use.
"""

from __future__ import annotations

import ssl

import aiosmtplib

from relay.errors import DeliveryError


def classify(exc: Exception, region: str | None) -> DeliveryError:
    if isinstance(exc, DeliveryError):
        return exc
    tls = _tls_error(exc)
    if tls is not None:
        return DeliveryError(f"TLS with the SES SMTP endpoint failed: {tls}", permanent=False,
                             code="TLSError",
                             hint="the TLS handshake failed, most often over the certificate: "
                                  "check that delivery.smtp.host is the name in it, that "
                                  "delivery.smtp.ca_file holds the CA of a private endpoint, "
                                  "and that delivery.smtp.tls suits the port (465: implicit)")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError) and exc.code >= 500:
        return _auth_failed(exc.code, exc.message, region)
    if isinstance(exc, aiosmtplib.SMTPDataError | aiosmtplib.SMTPAuthenticationError):
        return reply_error(exc.code, exc.message, region)  # 4xx to AUTH: throttled, say
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        # A refusal before the mail transaction (greeting, EHLO, STARTTLS) is about the
        # session, never about this message.
        return DeliveryError(f"{exc.code} {exc.message}", permanent=False,
                             code=f"SMTP{exc.code}",
                             hint="the SES SMTP endpoint refused the session; retrying")
    if isinstance(exc, TimeoutError):  # aiosmtplib's timeouts included
        return DeliveryError(str(exc) or "timed out", permanent=False, code="Timeout",
                             hint="the SES SMTP endpoint did not answer in time: check "
                                  "delivery.smtp.host/port and that a firewall does not "
                                  "drop the connection (or raise delivery.timeout)")
    if isinstance(exc, OSError):  # aiosmtplib's disconnects and connect errors included
        return DeliveryError(str(exc) or type(exc).__name__, permanent=False,
                             code="ConnectionError",
                             hint="cannot reach the SES SMTP endpoint: check network, DNS, "
                                  "delivery.smtp.host/port and the firewall (outbound 587, "
                                  "465 or 25)")
    return DeliveryError(f"{type(exc).__name__}: {exc}", permanent=False, code="Unknown",
                         hint="unexpected error talking to the SES SMTP endpoint; retrying")


def _tls_error(exc: BaseException) -> ssl.SSLError | ssl.CertificateError | None:
    """The TLS failure behind *exc*: aiosmtplib wraps a failed handshake on connect."""
    seen: BaseException | None = exc
    for _ in range(10):  # a chain is short; a cycle must not hang us
        if seen is None:
            break
        if isinstance(seen, ssl.SSLError | ssl.CertificateError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _auth_failed(code: int, text: str, region: str | None) -> DeliveryError:
    return DeliveryError(
        f"{code} {text}", permanent=False, code="AuthenticationFailed",
        hint=f"SES refused the SMTP credentials. They are specific to a region (here "
             f"{region}) and are not the IAM secret key itself but derived from it: check "
             f"delivery.smtp.username/password were made for {region}, or, when derived "
             f"from the credential chain, that they are an IAM user's long-term keys (SES "
             f"SMTP takes no temporary role credentials) allowed ses:SendRawEmail")


def reply_error(code: int, text: str, region: str | None) -> DeliveryError:
    """A reply to MAIL, RCPT or DATA: 4xx transient, 5xx permanent unless about the account."""
    message = f"{code} {text}"
    low = text.lower()
    if code == 535:
        return _auth_failed(code, text, region)
    if 400 <= code < 500 and "throttl" in low:
        if "daily" in low or "quota" in low:
            return DeliveryError(message, permanent=False, code="DailyQuotaExceeded",
                                 throttle="daily",
                                 hint="the account's 24-hour sending quota is used up; mail "
                                      "stays queued until SES's window frees up (ask AWS "
                                      "for a higher quota)")
        return DeliveryError(message, permanent=False, code="Throttling", throttle="rate",
                             hint="SES throttled the connection: sending faster than the "
                                  "account's maximum send rate")
    if 400 <= code < 500:
        return DeliveryError(message, permanent=False, code=f"SMTP{code}",
                             hint="the SES SMTP endpoint deferred the message; retrying")
    if code < 500:
        return DeliveryError(message, permanent=False, code=f"SMTP{code}",
                             hint="unexpected reply from the SES SMTP endpoint; retrying")
    return _permanent_reply(code, text, region)


def _permanent_reply(code: int, text: str, region: str | None) -> DeliveryError:
    message = f"{code} {text}"
    low = text.lower()
    # The account and its permissions are not this message's fault: wait for a fix.
    if "access denied" in low or "not authorized" in low:
        return DeliveryError(message, permanent=False, code="AccessDenied",
                             hint="the IAM identity behind the SMTP credentials lacks "
                                  "ses:SendRawEmail")
    if "paused" in low or "suspended" in low:
        return DeliveryError(message, permanent=False, code="SendingPaused",
                             hint=f"sending is paused for the account or configuration set "
                                  f"in region {region}")
    if "configuration set" in low and "not exist" in low:
        return DeliveryError(message, permanent=False, code="ConfigurationSetDoesNotExist",
                             hint=f"the configuration set does not exist in region {region}")
    if "not verified" in low:
        return DeliveryError(message, permanent=True, code="MessageRejected",
                             hint=f"SES rejected the message: in the sandbox every recipient "
                                  f"must be a verified identity, and the sender must be "
                                  f"verified in region {region}")
    if code == 552 or "too large" in low:
        return DeliveryError(message, permanent=True, code="MessageTooLarge",
                             hint="the message is larger than SES accepts (40 MB after "
                                  "base64 encoding)")
    if "duplicate header" in low:
        return DeliveryError(message, permanent=True, code="DuplicateHeader",
                             hint="the message repeats a header field that may appear only "
                                  "once (Subject, From, To, Date...)")
    return DeliveryError(message, permanent=True, code=f"SMTP{code}",
                         hint="the SES SMTP endpoint refused the message")


def nobody_accepted(refused: dict[str, DeliveryError]) -> DeliveryError:
    """Permanent only if every recipient was refused for good; else retry (keeping throttle)."""
    errors = list(refused.values())
    first = next((e for e in errors if not e.permanent), errors[0])
    prefix = "" if len(errors) == 1 else f"all {len(errors)} recipients refused; "
    return DeliveryError(f"{prefix}{first}", permanent=first.permanent, code=first.code,
                         hint=first.hint, throttle=first.throttle)


def no_starttls(host: str, port: int) -> DeliveryError:
    return DeliveryError(
        f"{host}:{port} does not offer STARTTLS", permanent=False, code="TLSError",
        hint="the upstream offered no STARTTLS, so nothing was sent in clear: check "
             "delivery.smtp.host/port (SES: 587 or 25 with starttls, 465 with implicit) and "
             "that no middlebox strips STARTTLS")
