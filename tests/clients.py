"""Small client helpers over real sockets: smtplib sessions and raw scripted dialogs."""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
from pathlib import Path

ENHANCED = re.compile(rb"^[245]\.\d{1,3}\.\d{1,3} ")


def tls_context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def starttls(port: int, ca: Path, user: str | None = None,
             password: str | None = None) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10)
    s.starttls(context=tls_context(ca))
    s.ehlo("client.test")
    if user is not None and password is not None:
        s.login(user, password)
    return s


def implicit(port: int, ca: Path, user: str | None = None,
             password: str | None = None) -> smtplib.SMTP_SSL:
    s = smtplib.SMTP_SSL("127.0.0.1", port, local_hostname="client.test", timeout=10,
                         context=tls_context(ca))
    s.ehlo("client.test")
    if user is not None and password is not None:
        s.login(user, password)
    return s


class Dialog:
    """A raw SMTP conversation: send exact bytes, read whole replies."""

    def __init__(self, port: int, ca: Path | None = None, implicit_tls: bool = False) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.ca = ca
        self.sock: socket.socket = (tls_context(ca).wrap_socket(raw, server_hostname="localhost")
                                    if implicit_tls and ca else raw)
        self.buf = b""
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, line: str | bytes) -> bytes:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def reply(self) -> bytes:
        """Read one (possibly multi-line) reply; b'' if the server closed the connection."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return b"".join(lines)
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line + b"\r\n")
            if len(line) < 4 or line[3:4] != b"-":
                return b"".join(lines)

    def starttls(self) -> bytes:
        r = self.cmd("STARTTLS")
        assert self.ca is not None
        self.sock = tls_context(self.ca).wrap_socket(self.sock, server_hostname="localhost")
        return r

    def closed(self) -> bool:
        try:
            self.sock.settimeout(5)
            return self.sock.recv(1) == b""
        except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Dialog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def has_enhanced_code(reply: bytes) -> bool:
    return all(ENHANCED.match(line[4:]) for line in reply.splitlines())
