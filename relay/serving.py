"""A relay process's life: its event loop, signals (SIGTERM, SIGINT, SIGHUP) and what it
tells systemd (READY, RELOADING, the watchdog)."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from relay import log, memory, systemd
from relay.app import Relay
from relay.config import Config
from relay.spool import ALONE, Share

_log = log.get(__name__)

def run(config: Config, share: Share = ALONE) -> int:
    """The process's event loop. (uvloop was measured twice, under bench/compare.py and
    bench/loadprofile.py, and gained nothing, see bench/RESULTS.md; asyncio's loop it is.)"""
    if share.role == "delivery" and config.delivery.nice:
        give_way(config.delivery.nice)
    return asyncio.run(serve(config, share))


def give_way(nice: int) -> None:
    """Lower this process's priority by *nice*. Before any thread starts: Linux keeps a
    nice value per thread, and a new thread takes its creator's.

    Why the delivery process (delivery.process: separate) stands back for the SMTP
    processes when both want a core: a client waits on every reply, a queued message
    only for its turn. At 1 client the other processes' wake-ups (delivery, its HTTPS
    peer) landed in the next session's EHLO, 0.19-0.38 ms instead of 0.11. At nice 10
    (the default of delivery.nice), `bench/engine_floor.py --relay-nice 0`, two runs of
    three rounds: 2-24% more sessions a second at 1 client than at nice 0 in every
    round, 50 sessions level (bench/RESULTS.md, "The delivery process gives way"). Nice
    10 still leaves it a ninth of a contended core, and all of an idle one.
    """
    try:
        os.nice(nice)
    except OSError as e:  # a seccomp filter without setpriority (the shipped unit allows it)
        _log.warning("delivery_priority_unchanged", error=str(e))


async def serve(config: Config, share: Share = ALONE) -> int:
    """Run until SIGTERM or SIGINT; return the process exit code."""
    memory.tune_malloc()
    notifier = systemd.Notifier()
    relay = Relay(config, share)
    loop = asyncio.get_running_loop()
    # A SIGHUP while starting (the listeners are open before start() returns) would kill
    # the process with the signal's default action: remember it, reload once started.
    # (A worker gets SIGHUP from its supervisor only once READY; this is for a relay that
    # runs alone.)
    early_hup = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, early_hup.set)
    await relay.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks: set[asyncio.Task[Any]] = set()

    def on_hup() -> None:
        task = asyncio.create_task(_reload(relay, notifier))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    if early_hup.is_set():
        on_hup()
    memory.freeze_startup_heap()
    if notifier.watchdog_interval:
        tasks.add(asyncio.create_task(_watchdog(notifier, notifier.watchdog_interval)))
    notifier.ready(f"accepting mail on {len(relay.servers)} listeners")
    try:
        await stop.wait()
    finally:
        notifier.stopping()
        for task in tasks:
            task.cancel()
        await relay.stop()
    return 0


async def _reload(relay: Relay, notifier: systemd.Notifier) -> None:
    notifier.reloading()
    applied = False
    try:
        applied = await relay.reload()
    finally:  # whatever happened, the relay runs on: systemd must not wait on "reloading"
        # The status is the supervisor's word too: it passes the reload on only if applied.
        notifier.ready(systemd.RELOADED if applied else systemd.RELOAD_REFUSED)


async def _watchdog(notifier: systemd.Notifier, interval: float) -> None:
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)
