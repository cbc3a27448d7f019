"""Word from the SMTP processes to the delivery process that a message was queued
(``delivery.process: separate``).

Postfix's cleanup tells qmgr the same way, with a wake-up on a FIFO, and qmgr scans the
queue as well; so do we. The queue itself stays the only record: a word that is lost (the
delivery process restarting, its buffer full) costs a delay of one queue scan
(relay.delivery's ``_QUEUE_WATCH``), never a message.

The channel is one datagram socket pair made by the supervisor, before it starts any
worker: the SMTP workers inherit the sending end, the delivery worker the receiving end.
The supervisor keeps both open, so what is sent while the delivery worker restarts waits
in the socket for the next one. Nobody else can write to it (no name in the file system
or the abstract namespace), and a datagram is one queue id, whole or not at all. By hand,
because it is twenty lines of the socket module; a broker would be a service to run.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

from relay import log
from relay.queueshare import is_queue_id

ENV = "SES_RELAY_QUEUED_FD"
_BUFFER = 1 << 20  # about 1,300 ids of 18 bytes (each datagram costs its buffer ~768)
_log = log.get("queued")


def channel() -> tuple[socket.socket, socket.socket]:
    """(sending end, receiving end), both inheritable for the workers."""
    send, receive = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for sock in (send, receive):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER)
        sock.set_inheritable(True)
    return send, receive


def inherited() -> socket.socket | None:
    """The end this worker was given, if any."""
    fd = os.environ.get(ENV)
    if not fd:
        return None
    sock = socket.socket(fileno=int(fd))
    sock.setblocking(False)
    return sock


class Sender:
    """Tell the delivery process; never wait, never fail the SMTP side."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._missed = False

    def __call__(self, queue_id: str) -> None:
        try:
            self._sock.send(queue_id.encode("ascii"))
        except OSError as e:  # full (BlockingIOError) or broken: the next scan finds it
            if not self._missed:
                _log.warning("queued_word_lost", queue_id=queue_id, error=str(e),
                             hint="delivery picks it up at its next queue scan")
            self._missed = True
        else:
            self._missed = False


class Receiver:
    """Read every word waiting, hand each queue id to *on_queued*."""

    def __init__(self, sock: socket.socket, on_queued: Callable[[str], None]) -> None:
        self._sock = sock
        self._on_queued = on_queued
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._readable)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._loop = None

    def _readable(self) -> None:
        for _ in range(256):  # a bounded batch: the sessions' events get their turn
            try:
                data = self._sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            name = data.decode("ascii", "replace")
            if is_queue_id(name):
                self._on_queued(name)
