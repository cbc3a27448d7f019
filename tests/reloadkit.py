"""What the tests of SIGHUP share: send one to a real relay process and wait for its
outcome event."""

from __future__ import annotations

import signal

from conftest import Process, wait_until


def reload(relay: Process, outcome: str) -> dict[str, object]:
    """SIGHUP, and the next *outcome* event (reloaded or reload_refused) of every worker
    (one process, or the supervisor's SMTP and delivery workers), as one event: what one
    worker did (the HTTP sites are in the one that delivers) is in it."""
    workers = {e.get("worker") for e in relay.events() if e.get("event") == "started"}

    def seen() -> list[dict[str, object]]:
        return [e for e in relay.events() if e.get("event") == outcome]

    def stopped() -> int:  # the supervisor's word that the first worker refused it for all
        return sum(e.get("event") == "reload_not_passed_on" for e in relay.events())

    before, stopped_before = len(seen()), stopped()
    relay.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: {e.get("worker") for e in seen()[before:]} >= workers
               or stopped() > stopped_before, timeout=15)
    merged: dict[str, object] = {}
    for event in seen()[before:]:
        for key, value in event.items():
            mine = merged.get(key)
            if isinstance(mine, dict) and isinstance(value, dict):
                merged[key] = {**mine, **value}
            elif isinstance(mine, list) and isinstance(value, list):
                merged[key] = mine + [v for v in value if v not in mine]
            else:
                merged[key] = value
    return merged
