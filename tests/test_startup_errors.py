"""A broken users file, configuration or certificate: `serve` and `check-config` exit 2
(systemd's RestartPreventExitStatus=2: no restart loop), name the file, print no traceback."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Setup, ses_relay_exe


def _write_bytes(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _directory(path: Path) -> None:
    path.mkdir()


BROKEN_USERS: dict[str, Callable[[Path], None]] = {
    "yaml syntax": _write_bytes(b"users:\n  app: {password_hash: [\n"),
    "users not a mapping": _write_bytes(b"users: [app]\n"),
    "top level a list": _write_bytes(b"- app\n"),
    "user not a mapping": _write_bytes(b"users:\n  app: 3\n"),
    "hash not a string": _write_bytes(b"users:\n  app: {password_hash: 5}\n"),
    "hash format": _write_bytes(b"users:\n  app: {password_hash: 'secret'}\n"),
    "hash with a bad salt": _write_bytes(b"users:\n  app: {password_hash: "
                                         b"'scrypt$16384$8$1$*$AAAAAAAAAAAAAAAAAAAAAA=='}\n"),
    "hash beyond scrypt's memory": _write_bytes(
        b"users:\n  app: {password_hash: 'scrypt$1048576$8$1$AAAA$"
        b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA='}\n"),
    "senders not a list": _write_bytes(b"users:\n  app: {password_hash: 'x', "
                                       b"allowed_senders: 'a@example.com'}\n"),
    "misspelt key": _write_bytes(b"users:\n  app: {password_hash: 'x', "
                                 b"allowed_sender: ['a@example.com']}\n"),
    "not utf-8": _write_bytes(b"users:\n  caf\xe9: {password_hash: 'x'}\n"),
    "nested too deeply": _write_bytes(b"[" * 100_000),
    "a directory": _directory,
    "missing": lambda path: None,
}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ses_relay_exe(), *args], capture_output=True, text=True,
                          timeout=60)


def assert_refused(result: subprocess.CompletedProcess[str], path: Path) -> None:
    assert result.returncode == 2, result.stderr
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["check-config", "serve"])
@pytest.mark.parametrize("case", sorted(BROKEN_USERS))
def test_a_broken_users_file_exits_2_with_its_path(setup: Setup, tmp_path: Path,
                                                   command: str, case: str) -> None:
    path = tmp_path / "broken-users.yaml"
    BROKEN_USERS[case](path)
    setup.doc["users_file"] = str(path)
    setup.write()
    assert_refused(run(command, "--config", str(setup.path)), path)


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_a_users_file_that_cannot_be_opened_exits_2(setup: Setup, tmp_path: Path,
                                                    command: str) -> None:
    # (Tests run as root, who reads a mode-000 file: a file in place of a directory on
    # the path gives the same "cannot read" path.)
    (tmp_path / "not-a-dir").write_text("")
    path = tmp_path / "not-a-dir" / "users.yaml"
    setup.doc["users_file"] = str(path)
    setup.write()
    assert_refused(run(command, "--config", str(setup.path)), path)


BROKEN_CONFIG: dict[str, bytes] = {
    "yaml syntax": b"hostname: [relay.test\n",
    "not utf-8": b"hostname: relay\xe9.test\n",
    "nested too deeply": b"[" * 100_000,
    "wrong type": b"hostname: relay.test\nlisteners: 5\n",
}


@pytest.mark.parametrize("command", ["check-config", "serve"])
@pytest.mark.parametrize("case", sorted(BROKEN_CONFIG))
def test_a_broken_configuration_exits_2_with_its_path(tmp_path: Path, command: str,
                                                      case: str) -> None:
    path = tmp_path / "ses-relay.yaml"
    path.write_bytes(BROKEN_CONFIG[case])
    result = run(command, "--config", str(path))
    assert_refused(result, path)


@pytest.mark.parametrize("command", ["check-config", "serve"])
@pytest.mark.parametrize("case", ["directory", "missing"])
def test_a_configuration_file_that_cannot_be_read_exits_2(tmp_path: Path, command: str,
                                                          case: str) -> None:
    path = tmp_path / "ses-relay.yaml"
    if case == "directory":
        path.mkdir()
    assert_refused(run(command, "--config", str(path)), path)


@pytest.mark.parametrize("command", ["check-config", "serve"])
@pytest.mark.parametrize("case", ["another key", "half-written key", "encrypted key"])
def test_a_key_that_cannot_serve_the_certificate_exits_2(setup: Setup, tmp_path: Path,
                                                         command: str, case: str) -> None:
    import trustme

    key = tmp_path / "key.pem"
    if case == "another key":
        trustme.CA().issue_cert("localhost").private_key_pem.write_to_path(str(key))
    elif case == "half-written key":
        whole = setup.certs.key.read_bytes()
        key.write_bytes(whole[:len(whole) // 2])  # a renewal caught mid-write
    else:
        subprocess.run(["openssl", "pkey", "-in", str(setup.certs.key), "-aes256",
                        "-passout", "pass:secret", "-out", str(key)], check=True)
    setup.doc["tls"]["key"] = str(key)
    setup.write()
    # stdin is not a terminal here, but OpenSSL would prompt on /dev/tty if there is one.
    assert_refused(run(command, "--config", str(setup.path)), key)


def test_a_listener_port_already_taken_exits_2_without_a_traceback(setup: Setup) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        setup.doc["listeners"][0]["port"] = port  # the port of a socket listening already
        setup.write()
        result = run("serve", "--config", str(setup.path))
    assert result.returncode == 2, result.stderr
    assert str(port) in result.stderr and "address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_reload_without_the_users_file_is_refused_and_logins_go_on(
        setup: Setup, tmp_path: Path, start_process) -> None:
    from clients import implicit
    from conftest import PASSWORD, USER
    from reloadkit import reload

    path = tmp_path / "users.yaml"
    path.write_bytes(Path(setup.doc["users_file"]).read_bytes())
    setup.doc["users_file"] = str(path)
    setup.write()
    relay = start_process(setup)
    path.unlink()  # e.g. a deploy that has not written it yet
    refused = reload(relay, "reload_refused")
    assert str(path) in refused["problems"][0]
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        assert s.noop()[0] == 250
