"""A private redis-server for the tests, on a unix socket in a temporary folder.

redis-server cannot bind port 0 and report the port it got, so it listens on no TCP port
at all (``--port 0``) and on a unix socket the test names: nothing to race for. No
persistence, so a restart starts empty, as a lost Redis would.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

EXE = shutil.which("redis-server")


class RedisServer:
    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.socket}"

    def start(self) -> None:
        if EXE is None:
            pytest.skip("redis-server is not installed (scripts/install-peers)")
        args = [EXE, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm",
                "700", "--save", "", "--appendonly", "no", "--dir", str(self.directory),
                "--logfile", str(self.directory / "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self._answers():
            assert self.proc.poll() is None, "redis-server exited (see redis.log)"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: a Redis that is gone without a word."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None
        self.socket.unlink(missing_ok=True)

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1)
                s.connect(str(self.socket))
                s.sendall(b"PING\r\n")
                return s.recv(64) in (b"+PONG\r\n", b"-NOAUTH Authentication required.\r\n")
        except OSError:
            return False
