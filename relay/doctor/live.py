"""The doctor beside a running relay: a port that will not bind because the relay itself
holds it is checked by asking it (its SMTP banner), and the relay is checked as it runs:
its /readyz and its running configuration against the file (relay.running).

The running relay is the one whose record (queue directory, ``running-config.json``)
names a process that exists.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay import running
from relay.config import Config, Listener
from relay.doctor.report import FAIL, OK, WARN, Context, Row, oneline

TIMEOUT = 5.0
_ANY = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104  # what binds all


@dataclass(frozen=True)
class Relay:
    pid: int
    config: dict[str, Any]
    record: Path
    bound: dict[str, Any]  # the ports it got (relay.running.bound_keys)


def find(cfg: Config) -> Relay | None:
    try:
        record = running.read(cfg.queue.directory)
    except (OSError, ValueError):
        return None
    pid = record.get("pid")
    if not isinstance(pid, int) or not running.alive(pid):
        return None
    bound = record.get("bound")
    return Relay(pid, record["config"], cfg.queue.directory / running.STATE_FILE,
                 bound if isinstance(bound, dict) else {})


def listener_row(listener: Listener, cfg: Config, relay: Relay | None,
                 where: str) -> Row | None:
    """An OK row when the port that would not bind is the running relay's, answering with
    its banner; None when it is not (someone else holds the port)."""
    hostnames = {cfg.hostname}
    if relay is not None:
        hostnames.add(str(relay.config.get("hostname")))
    line = _banner(listener)
    if line is None or not any(line.startswith(f"220 {h} ") for h in hostnames):
        return None
    who = f"the running ses-relay (pid {relay.pid})" if relay is not None else "ses-relay"
    return Row(OK, f"listener {listener.name}",
               f"{where}: {who} answers: {oneline(line, 60)}")


def _banner(listener: Listener) -> str | None:
    if listener.proxy_protocol:  # the relay waits for a balancer's PROXY header first
        return None
    host = _ANY.get(listener.address, listener.address)
    try:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(socket.create_connection((host, listener.port),
                                                                timeout=TIMEOUT))
            if listener.tls == "implicit":
                ctx = ssl.create_default_context()
                ctx.check_hostname = False  # which certificate: the TLS rows say
                ctx.verify_mode = ssl.CERT_NONE
                sock = stack.enter_context(ctx.wrap_socket(sock))
            f = stack.enter_context(sock.makefile("rb"))
            line = f.readline(512).decode("ascii", "replace").rstrip("\r\n")
            with contextlib.suppress(OSError):
                sock.sendall(b"QUIT\r\n")
            return line
    except (OSError, ValueError):
        return None


def check_running(ctx: Context) -> list[Row]:
    """Rows about the running relay, if one runs: none when it does not."""
    relay = find(ctx.config)
    if relay is None:
        return []
    rows = [Row(OK, "running relay", f"pid {relay.pid} (recorded in {relay.record})"),
            _config_row(ctx.config, relay)]
    ready = _readiness_row(relay)
    return rows + ([ready] if ready is not None else [])


def _config_row(cfg: Config, relay: Relay) -> Row:
    wanted = running.flatten(cfg)
    live, restart = running.split(relay.config, wanted, relay.bound)
    if not live and not restart:
        return Row(OK, "running config", "the running relay uses this file's configuration")
    parts = ([f"a reload applies {', '.join(live)}"] if live else []) + (
        [f"a restart is needed for {', '.join(restart)}"] if restart else [])
    return Row(WARN, "running config", oneline(f"differs from the file: {'; '.join(parts)}"),
               fix=("systemctl restart ses-relay" if restart else "systemctl reload ses-relay")
               + " (`ses-relay check-config --running` lists the keys)")


def _readiness_row(relay: Relay) -> Row | None:
    address = relay.config.get("metrics.address")
    port = relay.bound.get("metrics.port", relay.config.get("metrics.port"))
    if not isinstance(address, str) or not isinstance(port, int):
        return None  # no metrics listener: nothing to ask
    host = _ANY.get(address, address)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT + 2) as r:  # http only
            return Row(OK, "relay readiness", f"{url}: {r.read(200).decode().strip()}")
    except urllib.error.HTTPError as e:
        return Row(FAIL, "relay readiness", oneline(f"{url}: {e.code}: "
                                                    f"{e.read(200).decode().strip()}"),
                   fix="the relay accepts no mail it could not deliver: see the detail and "
                       "the AWS rows below, and the relay's log")
    except (OSError, ValueError) as e:
        return Row(WARN, "relay readiness", oneline(f"{url}: no answer ({e})"),
                   fix="the metrics listener of the running relay does not answer: see its "
                       "log")
