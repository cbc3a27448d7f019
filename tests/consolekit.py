"""The web console under test: a relay with ``console:`` on a loopback port, an admin
user and an ordinary one, and a logged-in HTTP client (requests) for it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from conftest import PASSWORD, USER, InProcess, Setup

from relay import users

ADMIN, ADMIN_PASSWORD = "boss", "admin password for tests"  # test credentials


def write_users(path: Path) -> None:
    db = users.UserDB({}).with_user(users.User(USER, users.hash_password(PASSWORD)))
    db = db.with_user(users.User(ADMIN, users.hash_password(ADMIN_PASSWORD), admin=True))
    users.save(path, db)


def with_console(setup: Setup, tmp_path: Path, **limits: Any) -> None:
    """Turn the console on (port 0: any free port) with our own users file."""
    write_users(tmp_path / "console-users.yaml")
    setup.doc["users_file"] = str(tmp_path / "console-users.yaml")
    setup.doc["console"] = {"address": "127.0.0.1", "port": 0}
    if limits:
        setup.doc["limits"] = limits
    setup.write()


@dataclass
class Client:
    base: str
    http: requests.Session

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.http.get(self.base + path, allow_redirects=False, timeout=20, **kw)

    def post(self, path: str, data: dict[str, str] | None = None, *, origin: bool = True,
             **kw: Any) -> requests.Response:
        headers = {"Origin": self.base} if origin else {}
        headers.update(kw.pop("headers", {}))
        return self.http.post(self.base + path, data=data or {}, headers=headers,
                              allow_redirects=False, timeout=20, **kw)

    def login(self, user: str = ADMIN, password: str = ADMIN_PASSWORD) -> requests.Response:
        return self.post("/login", {"user": user, "password": password})

    def csrf(self, path: str = "/") -> str:
        match = re.search(r'name="csrf" value="([^"]+)"', self.get(path).text)
        assert match, "the page carries a CSRF token"
        return match.group(1)


def client(relay: InProcess) -> Client:
    return Client(f"http://127.0.0.1:{relay.relay.console_port}", requests.Session())
