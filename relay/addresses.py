"""Envelope address checks: what may travel in MAIL FROM and RCPT TO.

aiosmtpd accepts addresses containing CR, NUL or other controls, and SMTP client libraries
write them upstream verbatim (command injection). Every envelope address is therefore
checked here before it reaches the queue. SES has no SMTPUTF8, so local parts must be
ASCII; internationalised domains are converted to their ASCII (punycode) form.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import idna

# RFC 5321 dot-string local part (atext and dots), or a quoted string of printable ASCII.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
# The common shape of an address, dot-atom@host.name, as a regex fragment (one group-free
# pattern) for the fast paths that read addresses out of commands and headers.
SIMPLE_ADDRESS = rf"{_DOT_STRING}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LOCAL = re.compile(rf"^(?:{_DOT_STRING}|{_QUOTED})$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_ADDRESS_LITERAL = re.compile(r"^\[[\x21-\x5a\x5e-\x7e]+\]$")


@dataclass(frozen=True)
class AddressError(Exception):
    """Why an address is refused; ``non_ascii`` marks the SMTPUTF8 case (553 5.6.7)."""

    reason: str
    non_ascii: bool = False


def normalize(address: str) -> str:
    """Return the address as it will be sent upstream, or raise AddressError."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in address):
        raise AddressError("control character in address")
    if len(address) > 254:
        raise AddressError("address longer than 254 characters")
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise AddressError("address must be local-part@domain")
    if not local.isascii():
        raise AddressError("non-ASCII local part needs SMTPUTF8, which SES does not support",
                           non_ascii=True)
    if len(local) > 64 or not _LOCAL.match(local):
        raise AddressError("malformed local part")
    return f"{local}@{_domain(domain)}"


def _literal(domain: str) -> str:
    """An address literal as RFC 5321 4.1.3 has it: a dotted quad, or IPv6: and an IPv6
    address. Anything else in brackets ("[1.2.3]", "[foo:bar]") would make SES refuse the
    whole message, good recipients and all: refused here instead, as Postfix does."""
    inner = domain[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return f"[IPv6:{ipaddress.IPv6Address(inner[5:]).compressed}]"
        return f"[{ipaddress.IPv4Address(inner)}]"
    except ValueError:
        raise AddressError("malformed address literal") from None


def _domain(domain: str) -> str:
    if _ADDRESS_LITERAL.match(domain):
        return _literal(domain)
    if not domain.isascii():
        # IDNA 2008 with the UTS #46 mapping, as browsers and current MTAs do. Python's
        # own "idna" codec is IDNA 2003, which maps "faß.de" to "fass.de": a different
        # domain, possibly someone else's (and a different allowed_senders entry).
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except UnicodeError:  # idna.IDNAError is one
            raise AddressError("domain cannot be converted to punycode") from None
    labels = domain.split(".")
    if len(domain) > 253 or len(labels) < 2 or not all(_LABEL.match(x) for x in labels):
        raise AddressError("malformed domain")
    return domain


def normalize_pattern(pattern: str) -> str:
    """An address, or ``@domain`` for a whole domain; lower-cased domain, as stored."""
    if pattern.startswith("@"):
        return "@" + _domain(pattern[1:]).lower()
    local, _, domain = normalize(pattern).rpartition("@")
    return f"{local}@{domain.lower()}"


def matches(address: str, patterns: tuple[str, ...] | frozenset[str]) -> bool:
    """Whether *address* is one of *patterns* (exact address, or its ``@domain``).

    Domains compare case-insensitively, local parts exactly (RFC 5321 leaves local-part
    case to the receiving host), except that a pattern written in lower case also matches
    an address in another case, which is what people mean in practice.
    """
    local, _, domain = address.rpartition("@")
    domain = domain.lower()
    return (f"{local}@{domain}" in patterns or f"{local.lower()}@{domain}" in patterns
            or f"@{domain}" in patterns)
