"""The PROXY protocol (HAProxy's, v1 and v2), believed from the listener's balancers only.

A PROXY header names the client, and the client's address is what trusted_networks,
the connection limits and the AUTH lockouts judge; believed from anyone, it would let
any client claim a trusted address (an open relay). So a header is read, with aiosmtpd's
parser, only on a connection from an address in the listener's ``proxy_from``, where one
is required; any other connection is its own client, and if it starts with a PROXY header
anyway it gets 421 and is closed (see ``RelaySMTP.data_received``).
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass

from aiosmtpd.proxy_protocol import ProxyData, get_proxy

# What a PROXY header starts with: v1 is a text line, v2 a binary signature.
V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
SNIFF_BYTES = max(len(V1_SIGNATURE), len(V2_SIGNATURE))

FORGED = "421 4.7.0 PROXY header not accepted from your address"

Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def from_balancer(peer: object, balancers: Networks) -> bool:
    """Whether the connection's peer (a socket address) is one of *balancers*."""
    if not balancers or not isinstance(peer, tuple) or not peer:
        return False
    try:
        ip = ipaddress.ip_address(str(peer[0]).partition("%")[0])  # no IPv6 zone
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 balancer
    return any(ip in net for net in balancers)


def sniff(first: bytes) -> bool | None:
    """Whether *first*, the first bytes of a connection, start a PROXY header; None while
    there are too few of them to tell (they are a prefix of a signature)."""
    undecided = False
    for signature in (V1_SIGNATURE, V2_SIGNATURE):
        n = min(len(first), len(signature))
        if first[:n] == signature[:n]:
            if n == len(signature):
                return True
            undecided = True
    return None if undecided else False


@dataclass(frozen=True)
class Header:
    """What a balancer's header says: the client's address, or None when the connection
    is the balancer's own (v2 LOCAL, v1 UNKNOWN: a health check)."""

    client: tuple[str, int] | None


class BadHeader(Exception):
    """No PROXY header, a malformed one, or none in time."""


async def read_header(reader: asyncio.StreamReader) -> Header:
    """Read the header a balancer sends before anything else (the caller bounds the
    wait)."""
    data: ProxyData = await get_proxy(reader)
    if not data.valid:
        raise BadHeader(data.error or "not a PROXY header")
    src = data.src_addr
    if isinstance(src, ipaddress.IPv6Address) and src.ipv4_mapped is not None:
        src = src.ipv4_mapped  # so that IPv4 trusted_networks and limits see it as such
    if isinstance(src, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return Header((str(src), int(data.src_port or 0)))
    return Header(None)


class Peer(tuple[str, int]):
    """A client's address as a PROXY header named it, with the balancer's beside it:
    what the session's ``peer`` becomes, so that every log line names the client."""

    balancer: object

    def __new__(cls, client: tuple[str, int], balancer: object) -> Peer:
        peer = super().__new__(cls, client)
        peer.balancer = balancer
        return peer
