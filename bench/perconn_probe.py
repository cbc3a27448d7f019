"""Where a one-connection-per-message session spends its time, step by step (issue 16).

A raw-socket client (no smtplib: its own cost would hide the server's) runs connect,
EHLO, MAIL, RCPT, DATA, a 5 KB body and QUIT, one connection after another, and prints
the median time of each step: from connect to the greeting, each command to its reply,
the body to its 250, and QUIT to the server's close. Run it against the relay and against
Postfix on the same machine, one after the other; plain SMTP only (no TLS, no AUTH).
The full benchmark, with TLS and AUTH against Postfix+Dovecot, is bench/perconn.py.

    python bench/perconn_probe.py PORT [--messages 500]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time

LINE = b"y" * 76 + b"\r\n"
BODY = (b"From: a@example.com\r\nTo: b@example.net\r\nSubject: probe\r\n\r\n"
        + LINE * 64 + b".\r\n")
COMMANDS = (("EHLO", b"EHLO client.example.com\r\n"),
            ("MAIL", b"MAIL FROM:<load@example.com>\r\n"),
            ("RCPT", b"RCPT TO:<sink@example.net>\r\n"),
            ("DATA", b"DATA\r\n"),
            ("body->250", BODY))


def read_reply(sock: socket.socket, buffer: bytes) -> bytes:
    """Read up to the last line of one reply; return what follows it."""
    while True:
        while (end := buffer.find(b"\r\n")) >= 0:
            line, buffer = buffer[:end], buffer[end + 2:]
            if line[3:4] != b"-":
                if line[:1] not in (b"2", b"3"):
                    raise RuntimeError(f"unexpected reply: {line!r}")
                return buffer
        data = sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        buffer += data


def session(port: int, steps: dict[str, list[float]]) -> None:
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = read_reply(sock, b"")
        steps["connect->greeting"].append(time.perf_counter() - t0)
        for name, command in COMMANDS:
            start = time.perf_counter()
            sock.sendall(command)
            buffer = read_reply(sock, buffer)
            steps[name].append(time.perf_counter() - start)
        steps["connect->250"].append(time.perf_counter() - t0)
        start = time.perf_counter()
        sock.sendall(b"QUIT\r\n")
        read_reply(sock, buffer)
        while sock.recv(4096):
            pass
    steps["QUIT->close"].append(time.perf_counter() - start)
    steps["total"].append(time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--messages", type=int, default=500)
    args = parser.parse_args()
    names = ["connect->greeting", *(name for name, _ in COMMANDS), "connect->250",
             "QUIT->close", "total"]
    steps: dict[str, list[float]] = {name: [] for name in names}
    session(args.port, {name: [] for name in names})  # warm-up, not counted
    for _ in range(args.messages):
        session(args.port, steps)
    print("  ".join(f"{name} {statistics.median(values) * 1000:.3f} ms"
                    for name, values in steps.items()))


if __name__ == "__main__":
    main()
