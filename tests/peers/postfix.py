"""A private Postfix instance that uses the relay as its smarthost (tests/test_interop_postfix.py).

Its configuration, queue, data and log live in one temporary directory; nothing listens
(no smtpd), and the system's Postfix is left alone except for one line in
/etc/postfix/main.cf, `alternate_config_directories`, which the set-group-id programs
(postdrop, postqueue) require to accept a private configuration directory. That line is
created if missing, lists this instance while it exists, and is pruned of instances whose
directory is gone.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from peers.interop import need

SYSTEM_MAIN_CF = Path("/etc/postfix/main.cf")
MARK = "ses-relay-test-postfix"  # the name of every private config directory

# chroot = n everywhere (a chroot would need copies of /etc files in the queue directory);
# no inet services; postlogd writes maillog_file, so no syslog is needed.
MASTER_CF = """\
pickup     unix  n - n 60    1 pickup
cleanup    unix  n - n -     0 cleanup
qmgr       unix  n - n 300   1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n -     - trivial-rewrite
bounce     unix  - - n -     0 bounce
defer      unix  - - n -     0 bounce
trace      unix  - - n -     0 bounce
verify     unix  - - n -     1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -     - proxymap
proxywrite unix  - - n -     1 proxymap
smtp       unix  - - n -     - smtp
relay      unix  - - n -     - smtp
showq      unix  n - n -     - showq
error      unix  - - n -     - error
retry      unix  - - n -     - error
discard    unix  - - n -     - discard
anvil      unix  - - n -     1 anvil
scache     unix  - - n -     1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


def _postconf_list(value: str) -> list[str]:
    return [v for v in re.split(r"[\s,]+", value) if v]


class PrivatePostfix:
    def __init__(self) -> None:
        for program in ("postfix", "postconf", "postqueue", "postsuper", "sendmail"):
            need(program)
        assert os.geteuid() == 0, "the Postfix tests need root: Postfix's master runs as root"
        # Not under pytest's 0700 temporary root: Postfix's daemons (user postfix) must reach
        # their data directory and the log by absolute path.
        self.base = Path(tempfile.mkdtemp(prefix="ses-relay-postfix-"))
        self.base.chmod(0o755)
        self.conf = self.base / MARK
        self.spool = self.base / "spool"
        self.data = self.base / "data"
        self.logfile = self.base / "log" / "postfix.log"
        self._settings: dict[str, Any] = {}  # configure()'s, for retarget()
        for d in (self.conf, self.spool, self.data, self.logfile.parent):
            d.mkdir()
        # Programs that run without postlogd (postsuper, after dropping root) write the log
        # file themselves, as user postfix.
        for owned in (self.data, self.logfile.parent):
            shutil.chown(owned, "postfix")
        (self.conf / "master.cf").write_text(MASTER_CF)
        self._allow_config_directory()

    # -- the one line in /etc/postfix/main.cf

    def _system_list(self) -> list[str]:
        out = subprocess.run([need("postconf"), "-c", str(SYSTEM_MAIN_CF.parent), "-h",
                              "alternate_config_directories"], capture_output=True, text=True,
                             check=True, timeout=10).stdout
        return _postconf_list(out)

    def _set_system_list(self, before: list[str], after: list[str]) -> None:
        if after == before:
            return
        setting = (["-e", f"alternate_config_directories = {' '.join(after)}"] if after
                   else ["-X", "alternate_config_directories"])
        subprocess.run([need("postconf"), "-c", str(SYSTEM_MAIN_CF.parent), *setting],
                       check=True, timeout=10)

    def _allow_config_directory(self) -> None:
        if not SYSTEM_MAIN_CF.exists():
            SYSTEM_MAIN_CF.parent.mkdir(parents=True, exist_ok=True)
            SYSTEM_MAIN_CF.write_text(
                "# Created by ses-relay's tests (tests/peers/postfix.py) to allow private\n"
                "# Postfix instances; Postfix was installed with \"No configuration\".\n")
        before = self._system_list()
        after = [d for d in before if not (Path(d).name == MARK and not Path(d).is_dir())]
        if str(self.conf) not in after:
            after.append(str(self.conf))
        self._set_system_list(before, after)

    def _disallow_config_directory(self) -> None:
        before = self._system_list()
        self._set_system_list(before, [d for d in before if d != str(self.conf)])

    # -- configuration and life cycle

    def configure(self, *, port: int, ca: Path, user: str, password: str,
                  tls_policy: str | None = None, **params: str) -> None:
        """(Re)start the instance relaying everything to [127.0.0.1]:PORT with SASL and TLS.

        *tls_policy* is the smtp_tls_policy_maps entry for the relay (e.g. "secure
        match=localhost"); *params* are more main.cf settings. The queue starts empty.
        """
        self.stop()
        self._settings = dict(ca=ca, user=user, password=password, tls_policy=tls_policy,
                              **params)
        self._write_config(port, ca=ca, user=user, password=password, tls_policy=tls_policy,
                           **params)
        if (self.spool / "deferred").is_dir():  # not before the first start
            self._postsuper("-d", "ALL")
        self.logfile.write_text("")
        shutil.chown(self.logfile, "postfix")
        self._run("postfix", "-c", str(self.conf), "start")

    def retarget(self, port: int) -> None:
        """Relay to [127.0.0.1]:PORT from now on, keeping the queue (``postfix reload``).

        A relay under test binds port 0, so one started again has another port; Postfix
        resolves a message's next hop when it tries it, so what it deferred goes there."""
        self._write_config(port, **self._settings)
        self._run("postfix", "-c", str(self.conf), "reload")

    def _write_config(self, port: int, *, ca: Path, user: str, password: str,
                      tls_policy: str | None, **params: str) -> None:
        nexthop = f"[127.0.0.1]:{port}"
        shutil.copyfile(ca, self.conf / "ca.pem")
        # texthash: read when a process starts, so no postmap is needed.
        sasl = self.conf / "sasl_passwd"
        sasl.write_text(f"{nexthop} {user}:{password}\n")
        sasl.chmod(0o600)
        (self.conf / "tls_policy").write_text(f"{nexthop} {tls_policy}\n" if tls_policy else "")
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.spool),
            "data_directory": str(self.data),
            "maillog_file": str(self.logfile),
            "maillog_file_prefixes": str(self.logfile.parent),
            "myhostname": "postfix-client.test",
            "mydestination": "",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "relayhost": nexthop,
            "smtp_sasl_auth_enable": "yes",
            "smtp_sasl_password_maps": f"texthash:{sasl}",
            # The defaults forbid plaintext mechanisms; PLAIN/LOGIN are fine inside TLS.
            "smtp_sasl_security_options": "noanonymous",
            "smtp_sasl_tls_security_options": "noanonymous",
            "smtp_tls_security_level": "encrypt",
            "smtp_tls_CAfile": str(self.conf / "ca.pem"),
            "smtp_tls_policy_maps": f"texthash:{self.conf / 'tls_policy'}",
            "smtp_tls_loglevel": "1",
            "smtp_connect_timeout": "5s",
            "queue_run_delay": "10s",
            "minimal_backoff_time": "10s",
            "maximal_backoff_time": "60s",
            **params,
        }
        (self.conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))

    def running(self) -> bool:
        return subprocess.run([need("postfix"), "-c", str(self.conf), "status"],
                              capture_output=True, timeout=10).returncode == 0

    def stop(self) -> None:
        if not (self.spool / "pid" / "master.pid").exists() or not self.running():
            return
        subprocess.run([need("postfix"), "-c", str(self.conf), "stop"], capture_output=True,
                       timeout=30)
        deadline = time.monotonic() + 10
        while self.running():
            if time.monotonic() > deadline:
                pid = int((self.spool / "pid" / "master.pid").read_text().split()[0])
                os.kill(pid, 9)  # our own master, by its id
                break
            time.sleep(0.1)

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            self._disallow_config_directory()
            shutil.rmtree(self.base, ignore_errors=True)

    # -- using it

    def sendmail(self, sender: str, recipients: list[str], data: bytes) -> None:
        self._run("sendmail", "-C", str(self.conf), "-f", sender, "-i", "--", *recipients,
                  input=data)

    def queue(self) -> str:
        return self._run("postqueue", "-c", str(self.conf), "-p").stdout.decode()

    def flush(self) -> None:
        self._run("postqueue", "-c", str(self.conf), "-f")

    def log(self) -> str:
        return self.logfile.read_text() if self.logfile.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log())
            if found:
                return found
            time.sleep(0.1)
        raise AssertionError(f"no /{pattern}/ in the Postfix log:\n{self.log()}\n"
                             f"queue:\n{self.queue()}")

    def wait_queue_empty(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while "Mail queue is empty" not in (queue := self.queue()):
            if time.monotonic() > deadline:
                raise AssertionError(f"Postfix still holds mail:\n{queue}\n{self.log()}")
            time.sleep(0.1)

    def _postsuper(self, *args: str) -> None:
        self._run("postsuper", "-c", str(self.conf), *args)

    def _run(self, program: str, *args: str, input: bytes | None = None,
             ) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run([need(program), *args], input=input, capture_output=True,
                                timeout=30)
        assert result.returncode == 0, (f"{program} {' '.join(args)} exited with "
                                        f"{result.returncode}: {result.stderr.decode()}"
                                        f"\n{self.log()}")
        return result
