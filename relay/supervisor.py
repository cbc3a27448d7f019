"""Several relay processes on one machine (``workers`` > 1): start them, stand for them
before systemd, pass signals on, and restart one that dies.

Why processes: one Python process runs the SMTP side, the queue and delivery under one
GIL, and under load it is CPU-bound on one core (bench/RESULTS.md). Each worker is a whole
relay (relay.app) binding the same ports with SO_REUSEPORT, so the kernel spreads
connections between them. They share the queue directory, each owning part of it
(relay.spool.Share), so the queue tools still see one queue. The first worker also runs
what must run once: the metrics and feedback listeners and the suppression sync; the
metrics of every worker are combined through prometheus_client's multiprocess mode.

The workers speak sd_notify to this process (their NOTIFY_SOCKET is ours). It tells systemd
READY=1 once every worker has, and feeds systemd's watchdog only while every worker feeds
its own, so a hung worker still gets the service restarted.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import secrets
import shutil
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterable

from relay import log, queued, systemd
from relay.config import Config
from relay.errors import SpoolError

_log = log.get("supervisor")
_RESTART_DELAY = 1.0
# More deaths than this within the window: stop, and let systemd's Restart= take over.
_MAX_RESTARTS = 5
_RESTART_WINDOW = 60.0


class Supervisor:
    def __init__(self, config: Config) -> None:
        assert config.source is not None, "workers are started from a configuration file"
        self.config = config
        # The SMTP workers, and with delivery.process: separate one delivery worker after
        # them (the last index; relay.queueshare.Share).
        self.smtp_workers = config.workers
        self.separate = config.delivery.process == "separate"
        self.count = self.smtp_workers + (1 if self.separate else 0)
        self._queued: tuple[socket.socket, socket.socket] | None = None
        self.notifier = systemd.Notifier()
        self.procs: dict[int, asyncio.subprocess.Process] = {}  # worker index: process
        self.ready: set[int] = set()  # pids that said READY=1
        self.hup_pending: set[int] = set()  # pids to reload once ready (HUP while starting)
        self.reload_lead: int | None = None  # the first worker's pid, while it reloads first
        # The first worker died during its reload: the others reload once its successor,
        # which reads the file as it starts, is READY.
        self.reload_on_ready = False
        self.fed: dict[int, float] = {}  # pid: when it last fed its watchdog
        self.announced = False
        self.stopping = asyncio.Event()
        self.failed: int | None = None  # exit code, when a worker could not start
        self.deaths: list[float] = []
        self.metrics_dir = config.queue.directory / ".metrics"
        self.notify_name = f"@ses-relay-{os.getpid()}-{secrets.token_hex(4)}"
        self._sock: socket.socket | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        shutil.rmtree(self.metrics_dir, ignore_errors=True)  # counts of an earlier life
        try:
            self.metrics_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # the workers would each fail on it: one line, from here
            raise SpoolError(f"cannot prepare queue directory "
                             f"{self.config.queue.directory}: {e}") from e
        self._sock = self._notify_socket()
        if self.separate:
            self._queued = queued.channel()
        loop.add_reader(self._sock, self._on_notify)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        tasks = [asyncio.create_task(self._keep(i)) for i in range(self.count)]
        if self.notifier.watchdog_interval:
            tasks.append(asyncio.create_task(self._watchdog(self.notifier.watchdog_interval)))
        _log.info("supervisor_started", workers=self.count)
        await self.stopping.wait()
        self.notifier.stopping()
        self._forward(signal.SIGTERM)
        workers, watchdog = tasks[:self.count], tasks[self.count:]
        await asyncio.gather(*workers, return_exceptions=True)
        for t in watchdog:
            t.cancel()
        await asyncio.gather(*watchdog, return_exceptions=True)
        codes = [p.returncode for p in self.procs.values()]
        loop.remove_reader(self._sock)
        self._sock.close()
        for end in self._queued or ():
            end.close()
        if self.failed is not None:
            return self.failed
        # A worker that our SIGTERM reached before it had its own handler (still starting)
        # dies of the signal: that is the stop we asked for, not a failure.
        return 0 if all(c in (0, -signal.SIGTERM) for c in codes) else 1

    # -- workers

    async def _keep(self, index: int) -> None:
        """Run worker *index*; start it again if it dies, unless we are stopping."""
        while not self.stopping.is_set():
            fds = self._fds(index)
            proc = await asyncio.create_subprocess_exec(*self._command(index),
                                                        env=self._environment(fds),
                                                        pass_fds=fds)
            self.procs[index] = proc
            self.fed[proc.pid] = time.monotonic()  # its start-up counts as one interval
            if self.stopping.is_set():  # asked to stop while this one was starting
                proc.send_signal(signal.SIGTERM)
            code = await proc.wait()
            self.ready.discard(proc.pid)
            self.hup_pending.discard(proc.pid)
            self.fed.pop(proc.pid, None)
            # Imported here: prometheus_client is 12 MB of RSS the supervisor does not
            # otherwise need.
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(proc.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
            if self.stopping.is_set():
                return
            if not self.announced:
                # Could not start (a port taken, a bad file): the others would not either.
                _log.error("worker_failed_to_start", worker=index, exit_code=code)
                self.failed = code if code > 0 else 1  # killed by a signal: 1
                self.stopping.set()
                return
            now = time.monotonic()
            self.deaths = [t for t in self.deaths if now - t < _RESTART_WINDOW] + [now]
            if len(self.deaths) > _MAX_RESTARTS:
                _log.error("workers_keep_dying", deaths=len(self.deaths),
                           hint="see the workers' last log lines; systemd restarts the "
                                "service")
                self.failed = 1
                self.stopping.set()
                return
            _log.error("worker_died", worker=index, exit_code=code, restart_in=_RESTART_DELAY)
            if proc.pid == self.reload_lead:
                self._lead_lost(index)
            await asyncio.sleep(_RESTART_DELAY)

    def _role(self, index: int) -> str:
        if not self.separate:
            return "all"
        return "delivery" if index == self.smtp_workers else "smtp"

    def _command(self, index: int) -> list[str]:
        return [sys.executable, "-m", "relay", "serve", "--config", str(self.config.source),
                "--worker", str(index), "--of", str(self.count), "--role", self._role(index)]

    def _fds(self, index: int) -> tuple[int, ...]:
        """The end of the queued channel (relay.queued) worker *index* gets, if any."""
        if self._queued is None:
            return ()
        send, receive = self._queued
        return (receive.fileno(),) if self._role(index) == "delivery" else (send.fileno(),)

    def _environment(self, fds: tuple[int, ...] = ()) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_PID", queued.ENV)}
        if fds:
            env[queued.ENV] = str(fds[0])
        env["NOTIFY_SOCKET"] = self.notify_name
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        env[_PARENT] = str(os.getpid())
        return env

    def _forward(self, sig: signal.Signals) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(sig)

    def _reload(self) -> None:
        """SIGHUP: the first worker (the one with the HTTP sites: it can refuse a file the
        others would take, a port already taken) reloads first, and the others only once
        it has applied the file (_reloaded), so that a refused file is refused whole, not
        applied by some workers."""
        lead = self.procs.get(self._first_index())
        if lead is None or lead.returncode is not None:
            self._hup(self.procs.values())
            return
        self.reload_lead = lead.pid
        self._hup([lead])

    def _reloaded(self, lead: int, status: str) -> None:
        self.reload_lead = None
        if status == f"STATUS={systemd.RELOADED}":
            self._hup(p for p in self.procs.values() if p.pid != lead)
        else:
            # Not a second "reload_refused": the worker logged that, with the problems.
            _log.warning("reload_not_passed_on", refused_by_worker=self._first_index(),
                         hint="no worker applied the file: see that worker's problems")

    def _lead_lost(self, index: int) -> None:
        """The first worker died between its SIGHUP and its word on the file. Without
        this the others would never hear of the reload: they would keep the old file
        while the restarted worker runs the new one."""
        self.reload_lead = None
        self.reload_on_ready = True
        _log.warning("reload_lead_died", worker=index,
                     hint="the other workers reload once it is started again")

    def _hup(self, procs: Iterable[asyncio.subprocess.Process]) -> None:
        """SIGHUP for *procs*; one still starting gets it once it is READY: before its
        handler is in place, the signal's default action would kill it."""
        for proc in procs:
            if proc.returncode is not None:
                continue
            if proc.pid in self.ready:
                proc.send_signal(signal.SIGHUP)
            else:
                self.hup_pending.add(proc.pid)

    def _is_first(self, pid: int) -> bool:
        first = self.procs.get(self._first_index())
        return first is not None and first.pid == pid

    def _first_index(self) -> int:
        """The worker that runs what runs once (relay.queueshare.Share.first)."""
        return self.smtp_workers if self.separate else 0

    # -- what the workers tell us

    def _notify_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # who sent each datagram
        sock.bind("\0" + self.notify_name[1:])
        sock.setblocking(False)
        return sock

    def _on_notify(self) -> None:
        assert self._sock is not None
        try:
            data, ancillary, _, _ = self._sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except (BlockingIOError, InterruptedError):
            return
        pid = _sender_pid(ancillary)
        workers = {p.pid: p for p in self.procs.values() if p.returncode is None}
        if pid not in workers:  # anyone on the machine can find an abstract socket
            return
        fields = data.decode("utf-8", "replace").split("\n")
        if "READY=1" in fields:
            self.ready.add(pid)
            self.fed[pid] = time.monotonic()
            if pid == self.reload_lead and pid not in self.hup_pending:  # its reload's end
                self._reloaded(pid, next((f for f in fields if f.startswith("STATUS=")), ""))
            elif self.reload_on_ready and self._is_first(pid):  # started on the new file
                self.reload_on_ready = False
                self._hup(p for p in self.procs.values() if p.pid != pid)
            if pid in self.hup_pending:
                self.hup_pending.discard(pid)
                workers[pid].send_signal(signal.SIGHUP)
            if not self.announced and len(self.ready) >= self.count:
                self.announced = True
                self.notifier.ready(f"accepting mail with {self.count} workers")
                _log.info("workers_ready", workers=self.count)
        if "WATCHDOG=1" in fields:
            self.fed[pid] = time.monotonic()

    async def _watchdog(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            live = [p.pid for p in self.procs.values() if p.returncode is None]
            # A worker that hangs, even before its READY, stops feeding systemd's watchdog.
            if all(now - self.fed.get(pid, 0.0) < 2 * interval for pid in live):
                self.notifier.watchdog()


def _sender_pid(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(data) >= 12:
            pid, _uid, _gid = struct.unpack("3i", data[:12])
            return int(pid)
    return None


def run(config: Config) -> int:
    return asyncio.run(Supervisor(config).run())


def service_pid() -> int:
    """The relay's pid as systemd and an operator know it: the supervisor's, in a worker."""
    parent = os.environ.get(_PARENT, "")
    return int(parent) if parent.isdigit() else os.getpid()


def follow_parent() -> None:
    """In a worker: die with the supervisor, even when it is killed with SIGKILL and cannot
    pass SIGTERM on (prctl PR_SET_PDEATHSIG; Linux, so ctypes and no library)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if str(os.getppid()) != os.environ.get(_PARENT, ""):  # gone before the call: stop now
        os.kill(os.getpid(), signal.SIGTERM)


_PR_SET_PDEATHSIG = 1
_PARENT = "SES_RELAY_SUPERVISOR"
