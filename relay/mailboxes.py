"""Reading From: and Sender: for the sender-rights check, as a strict RFC 5322 parser does.

A header a receiver (or the reader's mail client) can read as another address than the one
we checked is a forgery tool: "Composition Kills" (USENIX Security 2020) and espoofer list
the shapes, e.g. ``ceo@bank.example x@allowed.example`` (a lenient parser takes the last
address, a client shows the first), comments, encoded words, route syntax, quoted local
parts holding an ``@``. So for a restricted user the header is parsed with the email
package's strict header registry (its public ``header_factory``), and anything the parser
had to guess at is refused rather than read one way or the other:

- any defect, except the obsolete "period in phrase" (``J. Doe <j@example.com>``, common,
  and it changes nothing about who the sender is); this includes route syntax
  (``<@a.example:x@b.example>``), missing brackets, a mailbox with no domain, 8-bit local
  parts, encoded words run into an address;
- group syntax (``name: a@b;``): a From names mailboxes, and a group can be empty;
- an addr-spec that does not appear, as written, in the header: the parser built it from
  pieces (an encoded word, a comment or folding inside it, needless quoting), and another
  parser would build something else;
- From with more than one mailbox and no Sender, and a Sender with other than one
  (RFC 5322 3.6.2).

What is left is a plain list of addresses. Besides those, every piece of text that looks
like an address (in a display name, a comment or a quoted local part, after decoding
encoded words and NFKC folding of look-alikes such as the full-width at sign U+FF20) is
returned as *claimed*: a reader may take it for the sender, so the caller checks it as
one. Addresses must be ASCII and free of "=?" (see _normalize).
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from dataclasses import dataclass
from email import errors, policy
from email.header import decode_header, make_header
from email.headerregistry import AddressHeader, BaseHeader

from relay.addresses import SIMPLE_ADDRESS, AddressError, normalize

# One mailbox in the common shapes: "a@b.c", "<a@b.c>", "Plain Name <a@b.c>". Nothing in
# these can be read two ways (no @ in the name, no comment, no quoting), so the parser is
# skipped for them: 3.8 us against 99 us for the parser (bench/micro.py, a quoted display
# name). tests/test_fuzz.py checks that this shortcut gives the parser's answer.
_ONE_ADDRESS = re.compile(
    rf"[ \t]*(?:[A-Za-z0-9 _-]*<({SIMPLE_ADDRESS})>|({SIMPLE_ADDRESS}))[ \t]*\Z")
# Text a person would read as an address: something@something, between delimiters. An
# apostrophe is no delimiter: it is atext (o'brien@example.com is one address).
_LOOKS_LIKE_ADDRESS = re.compile(r"""[^\s<>()\[\]",;:\\@]+@[^\s<>()\[\]",;:\\@]+""")
# The one defect that changes nothing about the sender (the parser's own wording).
_HARMLESS = "period in 'phrase'"


class Ambiguous(Exception):
    """The header cannot be read one way only; the message says why (for the log)."""


@dataclass(frozen=True)
class Mailboxes:
    addresses: tuple[str, ...]  # normalised (relay.addresses.normalize), as SES will see them
    claimed: tuple[str, ...]  # other address-like text in the header, as written


def read(name: str, value: str) -> Mailboxes:
    """The mailboxes of a From: or Sender: *value* (unfolded), or raise Ambiguous."""
    one = _ONE_ADDRESS.match(value)
    if one is not None:
        return Mailboxes((_normalize(one.group(1) or one.group(2)),), ())
    return _parse(name, value)


def _parse(name: str, value: str) -> Mailboxes:
    try:
        header = policy.strict.header_factory(name, value)
    except Exception as e:
        # The stdlib parser still trips over some hostile input (CPython 3.11: IndexError on
        # a lone "<"); what it cannot read, no one should guess at.
        raise Ambiguous(f"{name}: unparseable ({type(e).__name__})") from None
    assert isinstance(header, AddressHeader) and isinstance(header, BaseHeader)
    for defect in header.defects:
        if not (isinstance(defect, errors.ObsoleteHeaderDefect) and str(defect) == _HARMLESS):
            raise Ambiguous(f"{name}: {defect}")
    if any(group.display_name is not None for group in header.groups):
        raise Ambiguous(f"{name}: group syntax")
    written = [mailbox.addr_spec for mailbox in header.addresses]
    if not written:
        raise Ambiguous(f"{name}: no address")
    for addr_spec in written:
        if addr_spec not in value:
            raise Ambiguous(f"{name}: address {addr_spec!r} is not written as such")
    texts = [value, *(m.display_name for m in header.addresses)]
    with contextlib.suppress(ValueError, LookupError):
        texts.append(str(make_header(decode_header(value))))
    claimed = {found for text in texts
               for found in _LOOKS_LIKE_ADDRESS.findall(unicodedata.normalize("NFKC", text))}
    return Mailboxes(tuple(_normalize(a) for a in written),
                     tuple(sorted(claimed.difference(written))))


def _normalize(address: str) -> str:
    # RFC 2047 forbids encoded words in an addr-spec, yet some clients decode them there
    # ("Composition Kills"), so "=?utf-8?q?ceo=40bank.example?=@allowed.example" would
    # show as a bank's address. An atom may contain "=?", so the parsers let it through.
    if "=?" in address:
        raise Ambiguous(f"address {address!r}: encoded word in an address")
    # An 8-bit address in a header is RFC 6532, for SMTPUTF8 only, which SES lacks; and
    # an IDN domain written as such is for each reader to convert, maybe as IDNA 2003
    # (faß.de as fass.de): only the ASCII form names one domain for everyone.
    if not address.isascii():
        raise Ambiguous(f"address {address!r}: not ASCII")
    try:
        return normalize(address)
    except AddressError as e:
        raise Ambiguous(f"address {address!r}: {e.reason}") from None


def claimed_as(text: str) -> str:
    """A claimed text as an address to check (normalised when it is one)."""
    try:
        return normalize(text)
    except AddressError:
        return text
