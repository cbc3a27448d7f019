"""HTTP/1.1 on the wire for relay.transports.http1: the request line's parts, and an
answer's status line and header fields read (RFC 9112)."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass


class HTTPError(ConnectionError):
    """The answer could not be read as HTTP/1.1, or the connection ended before it did."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # names lower-cased; a repeated field's values joined by ", "
    body: bytes


def host_header(url: str) -> str:
    """The Host header for *url*: the port only when it is not the scheme's default, an
    IPv6 address in brackets (as botocore signs it)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def request_target(url: str) -> str:
    """The path of *url* as it goes on the request line, and as SigV4 signs it."""
    return urllib.parse.quote(urllib.parse.urlsplit(url).path or "/", safe="/~")


def parse_head(raw: bytes) -> tuple[int, dict[str, str], bool]:
    """Status, header fields and whether the connection may be kept, from an answer's
    head (without its final empty line)."""
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit() \
            or rest[3:4] not in ("", " "):
        raise HTTPError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    fields: dict[str, str] = {}
    name = ""
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and name:  # obsolete line folding
            fields[name] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        name = name.lower()
        if not colon or not name or name != name.strip():
            raise HTTPError(f"bad header field: {line[:80]!r}")
        value = value.strip()
        fields[name] = f"{fields[name]}, {value}" if name in fields else value
    tokens = {t.strip().lower() for t in fields.get("connection", "").split(",")}
    keep = "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens
    return int(code), fields, keep
