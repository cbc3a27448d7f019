"""The event store's writer thread: history is written while mail keeps flowing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from conftest import wait_until

from relay.events import EventStore


def test_a_steady_stream_of_steps_is_written_as_it_goes(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.sqlite3")
    store.start()
    flowing = threading.Event()
    flowing.set()

    def mail_keeps_coming() -> None:  # a step every 2 ms: never a 10 ms pause
        n = 0
        while flowing.is_set():
            store.step(f"Q{n:017d}", "queued")
            n += 1
            time.sleep(0.002)

    feeder = threading.Thread(target=mail_keeps_coming)
    feeder.start()
    try:
        # Written while the stream still flows, not only once it stops.
        wait_until(lambda: store.trace(f"Q{0:017d}") != [], timeout=5)
    finally:
        flowing.clear()
        feeder.join()
        store.close()
