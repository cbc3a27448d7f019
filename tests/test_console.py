"""The web console over HTTP, against the real relay on loopback: who gets in, what a
request without a session, from another origin or without its CSRF token gets, and what
every answer tells the browser not to keep."""

from __future__ import annotations

import re
import smtplib
from pathlib import Path
from typing import Any

import pytest
from clients import implicit
from conftest import PASSWORD, SENDER, USER, Setup, wait_until
from consolekit import ADMIN, ADMIN_PASSWORD, client, with_console

from relay import config, running

MESSAGE = (b"From: sender@example.com\r\nSubject: m\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n"
           b"Message-ID: <m@example.com>\r\n\r\nbody\r\n")


@pytest.fixture
def console(setup: Setup, tmp_path: Path, start_relay):
    with_console(setup, tmp_path, max_auth_failures=3)
    return start_relay(setup)


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def test_no_session_gets_only_401_or_303_to_login(console) -> None:
    """Every route the console has (enumerated from the app, so a new one cannot slip
    through), with every method, and a path that is no route at all."""
    c = client(console)
    app = console.relay.console_server.app
    routes = {(r.method, r.resource.canonical) for r in app.router.routes()}
    assert len(routes) >= 15
    checked = 0
    for method, path in [*sorted(routes), ("GET", "/no/such/page"), ("DELETE", "/queue")]:
        if path == "/login" or path.startswith("/static/"):
            continue  # the login page and its stylesheet and script are public
        url = _concrete(path)
        r = c.http.request(method, c.base + url, allow_redirects=False, timeout=20,
                           headers={"Origin": c.base}, data={"csrf": "x"})
        if url.startswith("/api/"):
            assert r.status_code == 401, (method, url)
            assert r.json() == {"error": "not logged in"}
        else:
            assert (r.status_code, r.headers.get("Location")) == (303, "/login"), (method, url)
        assert r.headers["Cache-Control"] == "no-store", (method, url)
        checked += 1
    assert checked >= 15


def test_admin_logs_in_and_the_session_cookie_is_strict(console) -> None:
    c = client(console)
    r = c.login()
    assert (r.status_code, r.headers["Location"]) == (303, "/")
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("console=")
    flags = {f.strip().lower() for f in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= flags
    assert "secure" not in flags  # loopback, plain HTTP: a Secure cookie would be dropped
    page = c.get("/")
    assert page.status_code == 200
    assert f"logged in as <strong>{ADMIN}</strong>" in page.text
    for name, value in [("Cache-Control", "no-store"), ("X-Frame-Options", "DENY"),
                        ("X-Content-Type-Options", "nosniff")]:
        assert page.headers[name] == value
    csp = page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "<script>" not in page.text and "style=" not in page.text  # nothing inline
    api = c.get("/api/overview")
    assert api.status_code == 200 and api.headers["Cache-Control"] == "no-store"
    assert set(api.json()["data"]["counts"]) == {"active", "deferred", "hold", "failed"}


def test_wrong_password_and_non_admin_are_refused_alike(console) -> None:
    c = client(console)
    for user, password in [(ADMIN, "wrong password"), (USER, PASSWORD), ("nobody", "x")]:
        r = c.login(user, password)
        assert r.status_code == 401, user
        assert "Wrong user name or password, or not an admin." in r.text
        assert "Set-Cookie" not in r.headers
        assert c.get("/").status_code == 303


def test_lockout_is_the_smtp_auth_lockout(console, setup: Setup) -> None:
    """max_auth_failures: 3. After three wrong passwords the right one is refused too, in
    the console and over SMTP AUTH from the same address: one guard for both."""
    c = client(console)
    for _ in range(2):
        assert c.login(ADMIN, "wrong password").status_code == 401
    # The third failure locks the name out at this address: said at once.
    assert c.login(ADMIN, "wrong password").status_code == 429
    r = c.login()
    assert r.status_code == 429 and "Too many failed logins" in r.text
    assert "Set-Cookie" not in r.headers
    # SMTP AUTH from this address, as the same user with the right password: locked too.
    with implicit(setup.implicit_port, setup.certs.ca) as s, \
            pytest.raises(smtplib.SMTPException):
        s.login(ADMIN, ADMIN_PASSWORD)


def test_csrf_token_missing_or_wrong_is_refused(console) -> None:
    c = client(console)
    c.login()
    token = c.csrf("/reputation")
    for data in [{"reason": "x"}, {"reason": "x", "csrf": "wrong"},
                 {"reason": "x", "csrf": token[:-1]}]:
        r = c.post("/reputation/pause", data)
        assert r.status_code == 403, data
        assert "CSRF" in r.text
    assert c.get("/reputation").text.count('id="pause"') == 1  # nothing was paused
    r = c.post("/reputation/pause", {"reason": "testing", "csrf": token})
    assert (r.status_code, r.headers["Location"]) == (303, "/reputation")
    assert "testing (by boss in the console)" in c.get("/reputation").text
    # The running scheduler takes the pause (through the trigger `ses-relay pause` uses),
    # and the resume.
    scheduler = console.relay.scheduler
    wait_until(lambda: scheduler.paused_reason == "testing (by boss in the console)")
    r = c.post("/reputation/resume", {"csrf": token})
    assert "resumed (was paused: testing (by boss in the console))" in c.get(
        "/reputation").text
    wait_until(lambda: scheduler.paused_reason is None)


def test_cross_origin_post_is_refused_even_with_a_token(console) -> None:
    c = client(console)
    c.login()
    token = c.csrf("/reputation")
    for headers in [{"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Referer": "http://evil.example/page"}, {}]:
        r = c.post("/reputation/pause", {"reason": "x", "csrf": token}, origin=False,
                   headers=headers)
        assert r.status_code == 403, headers
        assert "cross-origin" in r.text
    # A login form posted from elsewhere is refused too (login CSRF).
    r = c.post("/login", {"user": ADMIN, "password": ADMIN_PASSWORD}, origin=False,
               headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "Set-Cookie" not in r.headers
    # Our own origin, by Referer when no Origin is sent: accepted.
    r = c.post("/reputation/pause", {"reason": "x", "csrf": token}, origin=False,
               headers={"Referer": c.base + "/reputation"})
    assert r.status_code == 303


def test_a_loopback_console_answers_only_to_loopback_names(console) -> None:
    """DNS rebinding: a page at evil.example resolving to 127.0.0.1 would send its own
    name as Host."""
    c = client(console)
    for host in ["evil.example", f"evil.example:{console.relay.console_port}"]:
        r = c.get("/login", headers={"Host": host})
        assert r.status_code == 421, host
        assert r.headers["Cache-Control"] == "no-store"
        r = c.post("/login", {"user": ADMIN, "password": "guess"}, origin=False,
                   headers={"Host": host, "Origin": f"http://{host}"})
        assert r.status_code == 421 and "Set-Cookie" not in r.headers
    assert not console.relay.auth_guard.locked("127.0.0.1", ADMIN)
    for host in ["localhost", f"127.0.0.1:{console.relay.console_port}"]:
        assert c.get("/login", headers={"Host": host}).status_code == 200, host


def test_logout_ends_the_session(console) -> None:
    c = client(console)
    c.login()
    cookie = c.http.cookies.get("console")
    token = c.csrf()
    r = c.post("/logout", {"csrf": token})
    assert (r.status_code, r.headers["Location"]) == (303, "/login")
    c.http.cookies.set("console", cookie)  # replaying the old cookie gets nothing
    assert c.get("/").status_code == 303
    assert c.get("/api/overview").status_code == 401


def test_an_admin_made_ordinary_is_logged_out(console, tmp_path: Path) -> None:
    from relay import users

    c = client(console)
    c.login()
    path = tmp_path / "console-users.yaml"
    db = users.load(path)
    from dataclasses import replace

    old = db.get(ADMIN)
    assert old is not None
    users.save(path, db.with_user(replace(old, admin=False)))
    console.call(console.relay.reload())
    assert c.get("/").status_code == 303


def test_pages_show_queue_and_history(console, setup: Setup) -> None:
    """Mail sent through the relay shows on the messages page; a held message can be
    found, released after a confirmation, and a suppression removed."""
    c = client(console)
    c.login()
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        s.sendmail(SENDER, ["reader@example.net"], MESSAGE)
    wait_until(lambda: "reader@example.net" in c.get("/messages").text)
    story = c.get("/messages", params={"q": "reader@example.net"}).text
    assert "queued" in story and "delivered" in story
    token = c.csrf("/suppression")
    r = c.post("/suppression/add", {"address": "Gone@Example.net", "reason": "manual",
                                    "csrf": token})
    assert r.status_code == 303
    page = c.get("/suppression", params={"q": "gone"}).text
    assert "gone@example.net" in page and "console:boss" in page
    assert "Yes, remove" in c.get("/suppression/remove",
                                  params={"address": "gone@example.net"}).text
    r = c.post("/suppression/remove", {"address": "gone@example.net", "csrf": token})
    assert r.status_code == 303
    assert "removed gone@example.net" in c.get("/suppression").text
    assert console.relay.suppression.lookup("gone@example.net") is None


def test_off_the_loopback_the_console_needs_tls(setup: Setup) -> None:
    from relay.errors import ConfigError

    setup.doc["console"] = {"address": "192.0.2.10", "port": 8025}
    tls = setup.doc.pop("tls")
    setup.write()
    with pytest.raises(ConfigError) as e:
        setup.load()
    assert any(p.startswith("console.address: off the loopback the console is served "
                            "over TLS") for p in e.value.problems)
    setup.doc.update(tls=tls, console={"address": "127.0.0.1"})
    setup.write()
    cfg = setup.load()
    assert cfg.console is not None and not cfg.console.tls and cfg.console.port == 8025


def test_with_tls_the_cookie_is_secure_and_host_only() -> None:
    from aiohttp import web

    from relay.web.console.access import Access, Sessions

    access = Access(Sessions(60), tls=True, is_admin=lambda _: True)
    response = web.Response()
    access.set_cookie(response, access.sessions.create(ADMIN))
    morsel = response.cookies["__Host-console"]
    assert morsel["secure"] and morsel["httponly"] and morsel["samesite"] == "Strict"
    assert morsel["path"] == "/" and not morsel["domain"]


def test_a_session_ends_after_its_idle_timeout_and_ids_are_random() -> None:
    from relay.web.console.access import Sessions

    now = [1000.0]
    sessions = Sessions(60, clock=lambda: now[0])
    a, b = sessions.create(ADMIN), sessions.create(ADMIN)
    assert a.id != b.id and a.csrf != b.csrf and len(a.id) >= 43  # 32 random bytes
    now[0] += 59
    assert sessions.get(a.id) is a  # in use: its expiry moves on
    now[0] += 59
    assert sessions.get(a.id) is a
    assert sessions.get(b.id) is None  # idle for 118 s
    now[0] += 61
    assert sessions.get(a.id) is None
    assert sessions.get("made-up") is None and sessions.get(None) is None


def test_many_logins_keep_the_session_store_bounded_dropping_the_least_recently_used(
        ) -> None:
    from relay.web.console.access import MAX_SESSIONS, Sessions

    sessions = Sessions(3600)
    kept = sessions.create(ADMIN)
    first = sessions.create(ADMIN)
    for _ in range(3 * MAX_SESSIONS):
        assert sessions.get(kept.id) is kept  # in use: never the one dropped
        last = sessions.create(ADMIN)
    assert len(sessions) == MAX_SESSIONS
    assert sessions.get(first.id) is None and sessions.get(last.id) is last


def test_the_overview_says_when_the_file_differs_from_the_running_configuration(
        console, setup: Setup) -> None:
    c = client(console)
    c.login()
    assert "configuration file differs" not in c.get("/").text
    setup.doc.setdefault("limits", {})["max_recipients"] = 7  # a reload applies it
    setup.doc["queue"]["directory"] = str(setup.path.parent / "elsewhere")  # a restart
    setup.write()
    page = c.get("/").text
    assert "configuration file differs" in page
    live, restart = page.split("needs a restart", 1)
    assert "limits.max_recipients" in live and "queue.directory" in restart
    assert "queue.directory" in c.get("/api/overview").json()["html"]  # the live refresh too


def test_the_overview_reads_the_file_again_only_when_it_changed(
        console, setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[Path] = []

    def load(path: Path) -> Any:
        parsed.append(path)
        return config.load(path)

    monkeypatch.setattr(running, "load", load)  # what running.pending reads the file with
    c = client(console)
    c.login()
    for _ in range(3):  # three refreshes of an unchanged file: one parse
        assert "configuration file differs" not in c.get("/api/overview").json()["html"]
    assert len(parsed) == 1
    setup.doc.setdefault("limits", {})["max_recipients"] = 7
    setup.write()
    assert "limits.max_recipients" in c.get("/api/overview").json()["html"]
    assert len(parsed) == 2


def test_the_overview_counts_recipients_per_hour_and_in_the_window(tmp_path: Path) -> None:
    import time

    from relay.events import EventStore

    store = EventStore(tmp_path / "events.sqlite3")
    try:
        store.step("Q1", "delivered", rcpts=["a@x.test", "b@x.test", "c@x.test"])
        store.step("Q2", "delivered", rcpts=["d@x.test", "e@x.test"])
        store.step("Q3", "delivered")  # no recipients recorded
        store.step("Q4", "failed", rcpts=["f@x.test", "g@x.test"])  # a message, counted once
        store.step("Q5", "deferred", rcpts=["h@x.test"])  # not on the chart
        now = time.time()
        since = (now // 3600 - 1) * 3600  # the hour before this one, then this one
        hourly = store.hourly(since, 2)
        assert hourly == {"delivered": [0, 5], "failed": [0, 1], "bounce": [0, 0],
                          "complaint": [0, 0]}
        assert store.hourly(now + 3600, 2)["delivered"] == [0, 0]  # after them: none
        assert store.rates(now - 60).delivered == 5
    finally:
        store.close()
