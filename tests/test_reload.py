"""SIGHUP to a real relay process applies what can be applied live (limits on new
connections, the metrics listener moved to another port, new port bound before the old is
closed), refuses a reload whose new HTTP port is taken (everything stays as it runs), and
says which keys need a restart, in its log and in `ses-relay check-config --running`."""

from __future__ import annotations

import smtplib
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import PASSWORD, USER, Process, Setup, ses_relay_exe, wait_until
from reloadkit import reload as _reload


def _with_metrics(setup: Setup, start_process) -> tuple[Process, int]:
    """A relay process with a metrics listener on a free port, and that port."""
    setup.doc["metrics"] = {"address": "127.0.0.1", "port": 0}
    setup.write()
    relay = start_process(setup)
    return relay, setup.port("metrics")


def _no_verify() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _healthz(port: int, host: str = "127.0.0.1") -> int:
    with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=10) as r:
        return int(r.status)


def _refused(port: int, host: str = "127.0.0.1") -> bool:
    try:
        _healthz(port, host)
    except urllib.error.URLError as e:
        return isinstance(e.reason, ConnectionRefusedError)
    return False


def _greeting(setup: Setup) -> bytes:
    """The first line a new connection to 587 gets (220, or the 421 refusing it)."""
    with socket.create_connection(("127.0.0.1", setup.starttls_port), timeout=10) as s:
        return s.makefile("rb").readline()


def _login(setup: Setup, password: str) -> int:
    client = smtplib.SMTP("127.0.0.1", setup.starttls_port, timeout=10)
    try:
        client.starttls(context=_no_verify())
        try:
            client.login(USER, password)
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code
        except smtplib.SMTPServerDisconnected:
            return 421
        return 235
    finally:
        client.close()


def test_new_auth_and_connection_limits_apply_to_new_connections(
        setup: Setup, start_process) -> None:
    relay = start_process(setup)
    assert _login(setup, "wrong") == 535  # one failure of the default 5
    with socket.create_connection(("127.0.0.1", setup.starttls_port), timeout=10) as held:
        assert held.makefile("rb").readline().startswith(b"220")
        assert _greeting(setup).startswith(b"220")  # two from one address: fine so far
        setup.doc["limits"] = {"max_auth_failures": 1, "max_connections_per_ip": 1,
                               "max_message_size": 1000}
        setup.write()
        reloaded = _reload(relay, "reloaded")
        assert "restart_needed_for" not in reloaded, reloaded
        # The held connection is one: a second one from this address is now too many.
        assert _greeting(setup).startswith(b"421 4.7.0"), "max_connections_per_ip"
    # One failure already counts: max_auth_failures 1 locks that user out here.
    reply = _login(setup, PASSWORD)
    assert reply == 421, "max_auth_failures"
    with smtplib.SMTP("127.0.0.1", setup.starttls_port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.esmtp_features["size"] == "1000"  # max_message_size, for new sessions


def test_the_metrics_listener_moves_to_its_new_address(setup: Setup, start_process) -> None:
    relay, old = _with_metrics(setup, start_process)
    assert _healthz(old) == 200
    setup.doc["metrics"]["address"] = "127.0.0.2"  # loopback too, and a port of its own
    setup.write()
    reloaded = _reload(relay, "reloaded")
    assert reloaded.get("web_restarted") == ["metrics"], reloaded
    new = reloaded["http"]["metrics"]  # type: ignore[index]
    assert _healthz(new, "127.0.0.2") == 200
    assert _refused(old)


def test_a_reload_whose_metrics_port_is_taken_is_refused_whole(
        setup: Setup, start_process) -> None:
    relay, old = _with_metrics(setup, start_process)
    with socket.create_server(("127.0.0.1", 0)) as taken:  # another service's port
        setup.doc["metrics"]["port"] = taken.getsockname()[1]
        setup.doc["limits"] = {"max_connections_per_ip": 1}
        setup.write()
        refused = _reload(relay, "reload_refused")
        assert "metrics" in str(refused["problems"]), refused
        assert _healthz(old) == 200
        # Nothing of the refused file applies: its connection limit neither.
        with socket.create_connection(("127.0.0.1", setup.starttls_port), timeout=10) as s:
            assert s.makefile("rb").readline().startswith(b"220")
            assert _greeting(setup).startswith(b"220")
    assert relay.proc.poll() is None


def _check_running(setup: Setup, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ses_relay_exe(), "check-config", "--config", str(setup.path),
                           "--running", *extra], capture_output=True, text=True, timeout=60,
                          check=False)


def test_a_new_queue_directory_needs_a_restart_and_check_config_running_says_so(
        setup: Setup, start_process, tmp_path: Path) -> None:
    relay = start_process(setup)
    wait_until(lambda: (setup.queue_dir / "running-config.json").exists())
    same = _check_running(setup)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "uses this configuration" in same.stdout
    running_queue = str(setup.queue_dir)
    setup.doc["queue"]["directory"] = str(tmp_path / "other-queue")
    setup.doc["limits"] = {"max_recipients": 7}
    setup.write()
    reloaded = _reload(relay, "reloaded")
    assert reloaded["restart_needed_for"] == ["queue.directory"], reloaded
    differs = _check_running(setup, "--queue-dir", running_queue)
    assert differs.returncode == 1, differs.stdout + differs.stderr
    restart = differs.stdout[differs.stdout.index("need a restart"):]
    assert "queue.directory" in restart
    assert "max_recipients" not in differs.stdout  # applied by the reload
    # Without --queue-dir it looks in the new directory, where no relay runs.
    assert _check_running(setup).returncode == 3


@pytest.mark.parametrize("secret", ["hunter2-upstream"])
def test_the_running_record_holds_no_secret(setup: Setup, start_process, secret: str) -> None:
    setup.doc["delivery"]["smtp"] = {"username": "u", "password": secret}
    setup.write()
    start_process(setup)
    record = setup.queue_dir / "running-config.json"
    wait_until(record.exists)
    assert secret not in record.read_text()
    same = _check_running(setup)
    assert same.returncode == 0, same.stdout
    setup.doc["delivery"]["smtp"]["password"] = secret + "-new"
    setup.write()
    differs = _check_running(setup)
    assert differs.returncode == 1 and "delivery.smtp.password: (secret)" in differs.stdout
    assert secret not in differs.stdout


def test_a_web_setting_restarts_the_listener_on_the_same_port_without_closing_it(
        setup: Setup, start_process) -> None:
    relay, port = _with_metrics(setup, start_process)
    setup.doc["web"] = {"max_headers": 20}
    setup.write()
    reloaded = _reload(relay, "reloaded")
    assert reloaded.get("web_restarted") == ["metrics"], reloaded
    assert _healthz(port) == 200
    # The new server's limits are the ones in force: 21 header lines is one too many.
    request = urllib.request.Request(f"http://127.0.0.1:{port}/healthz",
                                     headers={f"X-H{i}": "v" for i in range(21)})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=10)
    e.value.close()
    assert e.value.code == 400
    # Nothing changed: nothing restarts.
    assert "web_restarted" not in _reload(relay, "reloaded")


def test_a_new_max_send_rate_is_in_force_after_a_reload(setup: Setup, start_process) -> None:
    setup.doc["delivery"]["max_send_rate"] = 5
    relay, port = _with_metrics(setup, start_process)

    def rate() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            lines = r.read().decode().splitlines()
        return next(line for line in lines if line.startswith("ses_relay_send_rate_limit "))

    assert rate() == "ses_relay_send_rate_limit 5.0"
    setup.doc["delivery"]["max_send_rate"] = 2
    setup.write()
    reloaded = _reload(relay, "reloaded")
    assert "restart_needed_for" not in reloaded, reloaded
    assert rate() == "ses_relay_send_rate_limit 2.0"


def test_the_console_moves_with_a_reload(setup: Setup, start_process, tmp_path: Path) -> None:
    from consolekit import with_console

    with_console(setup, tmp_path)
    relay = start_process(setup)
    old = setup.port("console")
    with urllib.request.urlopen(f"http://127.0.0.1:{old}/login", timeout=10) as r:
        assert r.status == 200
    setup.doc["console"]["address"] = "127.0.0.2"
    setup.write()
    reloaded = _reload(relay, "reloaded")
    assert reloaded.get("web_restarted") == ["console"], reloaded
    new = reloaded["http"]["console"]  # type: ignore[index]
    with urllib.request.urlopen(f"http://127.0.0.2:{new}/login", timeout=10) as r:
        assert r.status == 200
    assert relay.wait_event("console", url=f"http://127.0.0.2:{new}/")
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{old}/login", timeout=10)


def test_a_relay_that_stops_leaves_no_record(setup: Setup, start_process) -> None:
    relay = start_process(setup)
    record = setup.queue_dir / "running-config.json"
    assert record.exists()
    assert relay.terminate() == 0
    assert not record.exists()
    assert _check_running(setup).returncode == 3


def test_a_connection_open_across_a_reload_is_still_answered(
        setup: Setup, start_process) -> None:
    relay, port = _with_metrics(setup, start_process)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as early:
        setup.doc["web"] = {"max_headers": 20}  # the listener is rebuilt on its port
        setup.write()
        assert _reload(relay, "reloaded").get("web_restarted") == ["metrics"]
        early.sendall(b"GET /healthz HTTP/1.1\r\nHost: relay.test\r\n\r\n")
        assert early.makefile("rb").readline().startswith(b"HTTP/1.1 200")
    assert _healthz(port) == 200


def test_a_new_console_session_timeout_restarts_the_console(
        setup: Setup, start_process, tmp_path: Path) -> None:
    from consolekit import with_console

    with_console(setup, tmp_path)
    relay = start_process(setup)
    port = setup.port("console")
    setup.doc["console"]["session_timeout"] = "10m"
    setup.write()
    reloaded = _reload(relay, "reloaded")
    # The console's app holds its section: a new one is served only by a new server.
    assert reloaded.get("web_restarted") == ["console"], reloaded
    assert "restart_needed_for" not in reloaded, reloaded
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=10) as r:
        assert r.status == 200


def test_a_console_that_cannot_open_the_queue_is_a_refused_reload(
        setup: Setup, start_process) -> None:
    relay = start_process(setup)
    # A folder the console's queue view makes sure of, now a file: only it trips on it.
    corrupt = setup.queue_dir / "corrupt"
    corrupt.rmdir()
    corrupt.write_text("")
    setup.doc["console"] = {"address": "127.0.0.1", "port": 0}
    setup.write()
    refused = _reload(relay, "reload_refused")
    assert "corrupt" in str(refused["problems"]), refused
    assert _greeting(setup).startswith(b"220")
    assert relay.proc.poll() is None
