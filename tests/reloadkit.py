"""What the tests of SIGHUP share: send one to a real relay process and wait for its
outcome event."""

from __future__ import annotations

import signal

from conftest import Process, wait_until


def reload(relay: Process, outcome: str) -> dict[str, object]:
    """SIGHUP, and the next *outcome* event (reloaded or reload_refused) it logs."""
    def seen() -> list[dict[str, object]]:
        return [e for e in relay.events() if e.get("event") == outcome]

    before = len(seen())
    relay.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: len(seen()) > before, timeout=15)
    return seen()[-1]
