"""The ses-relay command: users, send-test, and the development setup behind `make run`."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from clients import implicit, starttls
from conftest import SENDER, Moto, Process, Setup, ses_relay_exe

from relay import users
from relay.errors import UsersFileError

DEV_MESSAGE = (b"From: sender@example.com\r\nSubject: dev\r\n"
               b"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n"
               b"Message-ID: <dev@example.com>\r\n\r\nhello\r\n")


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([ses_relay_exe(), *args], input=stdin, capture_output=True,
                          text=True, timeout=60)


def own_users_file(setup: Setup, tmp_path: Path) -> Path:
    path = tmp_path / "own-users.yaml"
    setup.doc["users_file"] = str(path)
    setup.write()
    return path


def refused_user(tmp_path: Path, **entry: object) -> str:
    """The error users.load gives for a file whose one user "app" has *entry* besides a
    valid password hash."""
    path = tmp_path / "users.yaml"
    path.write_text(yaml.safe_dump({"users": {"app": {
        "password_hash": users.hash_password("long-enough-pw"), **entry}}}))
    with pytest.raises(UsersFileError) as e:
        users.load(path)
    return str(e.value)


def test_user_add_stores_only_a_salted_hash_and_the_relay_accepts_it(
        setup: Setup, tmp_path: Path, start_relay) -> None:
    path = own_users_file(setup, tmp_path)
    result = run("user", "add", "wordpress", "--config", str(setup.path),
                 stdin="s3cret-passw0rd\n")
    assert result.returncode == 0, result.stderr
    text = path.read_text()
    assert "s3cret-passw0rd" not in text
    assert re.search(r"password_hash: scrypt\$16384\$8\$1\$\S+\$\S+", text)
    start_relay(setup)
    with implicit(setup.implicit_port, setup.certs.ca, "wordpress", "s3cret-passw0rd") as s:
        assert s.noop()[0] == 250


def test_user_add_twice_changes_the_password_and_list_and_remove_work(
        setup: Setup, tmp_path: Path) -> None:
    path = own_users_file(setup, tmp_path)
    cfg = ["--config", str(setup.path)]
    assert run("user", "add", "app1", *cfg, stdin="first-password\n").returncode == 0
    first = users.load(path).get("app1")
    assert run("user", "add", "app2", *cfg, stdin="other-password\n").returncode == 0
    result = run("user", "add", "app1", *cfg, stdin="second-password\n")
    assert "updated app1" in result.stdout
    second = users.load(path).get("app1")
    assert first and second and first.password_hash != second.password_hash
    assert users.verify_password("second-password", second.password_hash)
    assert [line.split()[0] for line in run("user", "list", *cfg).stdout.splitlines()] == [
        "app1", "app2"]
    assert run("user", "remove", "app1", *cfg).returncode == 0
    assert [line.split()[0] for line in run("user", "list", *cfg).stdout.splitlines()] == [
        "app2"]
    missing = run("user", "remove", "app1", *cfg)
    assert missing.returncode == 1 and "no user" in missing.stderr


def test_user_add_refuses_short_passwords_and_odd_names(setup: Setup, tmp_path: Path) -> None:
    path = own_users_file(setup, tmp_path)
    cfg = ["--config", str(setup.path)]
    assert run("user", "add", "app", *cfg, stdin="short\n").returncode == 2
    assert run("user", "add", "bad name", *cfg, stdin="long-enough-pw\n").returncode == 2
    assert not path.exists()


def test_send_test_prints_the_ses_message_id(make_setup, moto: Moto) -> None:
    setup = make_setup("sesv2", region="us-east-1", endpoint_url=moto.url)
    result = run("send-test", "--config", str(setup.path), "--from", SENDER,
                 "--to", "someone@example.net")
    assert result.returncode == 0, result.stderr
    [sent] = moto.sent()
    assert result.stdout.strip() == sent["id"]
    assert "Subject: ses-relay test message" in sent["raw_data"]


def test_send_test_explains_a_failure_with_a_hint(make_setup, moto: Moto) -> None:
    setup = make_setup("sesv2", region="us-east-1", endpoint_url=moto.url)
    result = run("send-test", "--config", str(setup.path), "--from", "stranger@example.org",
                 "--to", "someone@example.net")
    assert result.returncode == 1
    assert "MessageRejected" in result.stderr
    assert "hint:" in result.stderr and "us-east-1" in result.stderr
    assert "Traceback" not in result.stderr


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def test_dev_init_and_serve_work_without_aws(tmp_path: Path) -> None:
    # What `make run` does, on ports 0 (any free port) so it cannot collide with a
    # developer's relay; the relay says which it got in its started line.
    dev = tmp_path / "dev"
    out = run("dev-init", str(dev)).stdout
    password = re.search(r"password:\s+(\S+)", out)
    assert password, out
    doc = yaml.safe_load((dev / "ses-relay.yaml").read_text())
    assert doc["delivery"]["transport"] == "outbox"
    assert "console:   http://127.0.0.1:8025/  (log in as dev, same password)" in out
    for listener in doc["listeners"]:
        listener["port"] = 0
    doc["console"]["port"] = 0
    (dev / "ses-relay.yaml").write_text(yaml.safe_dump(doc))
    assert run("dev-init", str(dev)).stdout.count(password.group(1)) == 1  # kept, not renewed
    log_path = tmp_path / "relay.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([ses_relay_exe(), "serve", "--config",
                                 str(dev / "ses-relay.yaml")], stdout=log, stderr=log)
    try:
        ports = Process(proc, log_path).ports()
        assert set(ports) == {"submission", "submissions", "console"}
        console_port = ports["console"]
        with starttls(ports["submission"], dev / "tls" / "cert.pem", "dev", password.group(1)) as s:
            s.sendmail(SENDER, ["someone@example.net"], DEV_MESSAGE)
        deadline = time.monotonic() + 10
        while not list((dev / "outbox").glob("*.eml")) and time.monotonic() < deadline:
            time.sleep(0.05)
        [eml] = (dev / "outbox").glob("*.eml")
        assert eml.read_bytes() == DEV_MESSAGE
        assert json.loads(eml.with_suffix(".json").read_text())["mail_from"] == SENDER
        # The console is on, and the dev user may log in to it.
        login = urllib.request.Request(
            f"http://127.0.0.1:{console_port}/login", method="POST",
            data=urllib.parse.urlencode({"user": "dev", "password": password.group(1)}).encode(),
            headers={"Origin": f"http://127.0.0.1:{console_port}"})
        with pytest.raises(urllib.error.HTTPError) as e:  # the 303 is not followed
            urllib.request.build_opener(_NoRedirect).open(login, timeout=20)
        e.value.close()
        assert e.value.code == 303 and "HttpOnly" in e.value.headers["Set-Cookie"]
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


def test_a_users_file_with_an_invalid_ses_option_is_refused(tmp_path: Path) -> None:
    assert "users.app.tags" in refused_user(tmp_path, tags={"campaign": "fall sale"})


def test_user_ses_headers_is_set_listed_and_reset(setup: Setup, tmp_path: Path) -> None:
    path = own_users_file(setup, tmp_path)
    cfg = ["--config", str(setup.path)]
    assert run("user", "add", "free", *cfg, stdin="first-password\n").returncode == 0
    result = run("user", "add", "boxed", *cfg, "--allow-sender", "@example.com",
                 "--ses-headers", "allow", stdin="other-password\n")
    assert result.returncode == 0, result.stderr
    assert "ses_headers: allow" in path.read_text()
    listing = run("user", "list", *cfg).stdout.splitlines()
    assert listing[0].split()[:3] == ["boxed", "senders=@example.com", "ses_headers=allow"]
    assert listing[1].split()[:3] == ["free", "senders=any", "ses_headers=allow(auto)"]
    assert run("user", "update", "boxed", *cfg, "--ses-headers", "default").returncode == 0
    assert "ses_headers" not in path.read_text()
    assert users.load(path).get("boxed").ses_headers is None  # type: ignore[union-attr]
    assert "ses_headers=ignore(auto)" in run("user", "list", *cfg).stdout
    assert run("user", "update", "free", *cfg, "--ses-headers", "yes").returncode == 2


def test_a_users_file_with_an_invalid_ses_headers_is_refused(tmp_path: Path) -> None:
    assert "users.app.ses_headers" in refused_user(tmp_path, ses_headers="yes")


def test_admin_flag_set_shown_and_cleared(setup: Setup, tmp_path: Path) -> None:
    path = own_users_file(setup, tmp_path)
    cfg = ("--config", str(setup.path))
    assert run("user", "add", "ops", "--admin", *cfg, stdin="ops-password-1\n").returncode == 0
    assert run("user", "add", "app", *cfg, stdin="app-password-1\n").returncode == 0
    db = users.load(path)
    assert [db.get("ops").admin, db.get("app").admin] == [True, False]  # type: ignore[union-attr]
    assert "admin: true" in path.read_text()
    lines = run("user", "list", *cfg).stdout.splitlines()
    assert [line.endswith("  admin") for line in lines] == [False, True]  # app, ops
    assert run("user", "update", "ops", "--no-admin", *cfg).returncode == 0
    assert run("user", "update", "app", "--admin", *cfg).returncode == 0
    db = users.load(path)
    assert [db.get("ops").admin, db.get("app").admin] == [False, True]  # type: ignore[union-attr]


def test_an_admin_flag_that_is_not_a_boolean_is_refused(tmp_path: Path) -> None:
    assert "users.app.admin: true or false" in refused_user(tmp_path, admin="yes")
