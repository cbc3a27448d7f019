"""`ses-relay check-config --running`: the file against the configuration the running relay
uses (as Postfix's `postconf -n` against the master's), key by key, and which of the
differences a reload would apply and which need a restart.

The running relay records its configuration in its queue directory (relay.running). The
file's queue.directory is where it is looked for; a relay started with another one
(queue.directory changed since) is found with --queue-dir.

Exit codes: 0 the running relay uses the file's configuration; 1 they differ (a reload or
a restart is due); 2 the file is invalid; 3 no running relay to compare with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from relay import running
from relay.config import Config

SAME, DIFFERS, NOT_RUNNING = 0, 1, 3


def compare(cfg: Config, out: TextIO, queue_dir: Path | None = None) -> int:
    directory = queue_dir or cfg.queue.directory
    try:
        record = running.read(directory)
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        print(f"no running relay recorded in {directory} ({reason}); a relay started "
              "with another queue.directory is found with --queue-dir", file=out)
        return NOT_RUNNING
    pid = record.get("pid")
    if not running.alive(pid):
        print(f"no running relay: {directory / running.STATE_FILE} was left by process "
              f"{pid}, which is gone", file=out)
        return NOT_RUNNING
    ran: dict[str, Any] = record["config"]
    got = record.get("bound")
    bound: dict[str, Any] = got if isinstance(got, dict) else {}
    wanted = running.flatten(cfg)
    live, restart = running.split(ran, wanted, bound)
    keys = live + restart
    if not keys:
        print(f"the running relay (pid {pid}) uses this configuration", file=out)
        return SAME
    print(f"the running relay (pid {pid}) differs from the file in {len(keys)} "
          f"key{'s' if len(keys) > 1 else ''}:", file=out)
    for title, group in (("applied by a reload (systemctl reload ses-relay)", live),
                         ("need a restart (systemctl restart ses-relay)", restart)):
        if group:
            print(f"  {title}:", file=out)
            for key in group:
                print(f"    {key}: {_show(key, ran)} -> {_show(key, wanted)}"
                      + (f" (bound: {bound[key]})" if key in bound else ""), file=out)
    return DIFFERS


def _show(key: str, values: dict[str, Any]) -> str:
    if key not in values:
        return "(not set)"
    value = values[key]
    if key.rsplit(".", 1)[-1] in running.SECRETS and value is not None:
        return "(secret)"
    return json.dumps(value)
