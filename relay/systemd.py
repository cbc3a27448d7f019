"""sd_notify(3): tell systemd when the relay is ready, reloading, stopping, and alive.

The protocol is one datagram on the socket named by $NOTIFY_SOCKET, so it is written here
in a few lines rather than taken from a binding to libsystemd. Outside systemd every call
is a no-op.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # an abstract socket
            address = "\0" + address[1:]
        self._address = address or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        # Ping at half the interval systemd allows, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and mine else None

    def notify(self, *fields: str) -> bool:
        if self._address is None:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            try:
                s.sendto("\n".join(fields).encode(), self._address)
            except OSError:
                return False
        return True

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", f"STATUS={status}" if status else "STATUS=ready")

    def reloading(self) -> None:
        self.notify("RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")


# A worker's STATUS at the end of a reload: its supervisor passes the reload on only if
# applied (relay.supervisor).
RELOADED, RELOAD_REFUSED = "reloaded", "reload refused"


def _monotonic_usec() -> int:
    import time

    return int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1_000_000)
