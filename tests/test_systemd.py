"""The systemd unit: hardened, notify-type, and rated by systemd's own analyzer."""

from __future__ import annotations

import re
import shutil
import subprocess

from conftest import REPO

UNIT = REPO / "systemd" / "ses-relay.service"


def test_the_unit_is_rated_2_or_lower_by_systemd_analyze() -> None:
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze is missing: run `make peers` (it installs systemd)"
    result = subprocess.run([exe, "security", "--offline=yes", "--no-pager", str(UNIT)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0


def test_the_unit_waits_for_ready_reloads_with_sighup_and_does_not_loop_on_bad_config(
        ) -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID",
                 "RestartPreventExitStatus=2", "User=ses-relay", "StateDirectory=ses-relay",
                 "ConfigurationDirectory=ses-relay", "ProtectSystem=strict",
                 "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
                 "AmbientCapabilities=CAP_NET_BIND_SERVICE", "NoNewPrivileges=yes"):
        assert f"\n{line}\n" in text, line
