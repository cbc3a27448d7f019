"""SIGHUP and the certificate, on a real relay process: a reload that is refused leaves the
old certificate serving every new handshake (STARTTLS on 587, implicit TLS on 465); a good
one serves the new certificate to new handshakes and leaves sessions already up alone."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from conftest import PASSWORD, SENDER, USER, Setup
from reloadkit import reload

MESSAGE = (b"From: sender@example.com\r\nSubject: tls\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000"
           b"\r\nMessage-ID: <tls@example.com>\r\n\r\nbody\r\n")


def _any_certificate() -> ssl.SSLContext:
    # Which certificate the relay presents is compared byte for byte, so any is accepted.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def presented(setup: Setup, mode: str) -> bytes:
    """The DER certificate a new handshake gets, after a full SMTP session on it."""
    client: smtplib.SMTP
    if mode == "starttls":
        client = smtplib.SMTP("127.0.0.1", setup.starttls_port, timeout=10)
        client.ehlo("client.test")
        client.starttls(context=_any_certificate())
    else:
        client = smtplib.SMTP_SSL("127.0.0.1", setup.implicit_port, timeout=10,
                                  context=_any_certificate())
    with client:
        client.login(USER, PASSWORD)
        assert client.sendmail(SENDER, ["a@example.net"], MESSAGE) == {}
        assert isinstance(client.sock, ssl.SSLSocket)
        der = client.sock.getpeercert(binary_form=True)
    assert der is not None
    return der


def der(cert: Path) -> bytes:
    pem = cert.read_text()
    return ssl.PEM_cert_to_DER_cert(pem[:pem.index("-----END CERTIFICATE-----") + 25])


@pytest.fixture
def own_files(setup: Setup, tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(setup.certs.cert.read_bytes())
    key.write_bytes(setup.certs.key.read_bytes())
    setup.doc["tls"] = {"cert": str(cert), "key": str(key)}
    setup.write()
    return cert, key


def _another_key(cert: Path, key: Path) -> None:
    trustme.CA().issue_cert("localhost").private_key_pem.write_to_path(str(key))


def _half_written_key(cert: Path, key: Path) -> None:
    whole = key.read_bytes()
    key.write_bytes(whole[:len(whole) // 2])


def _missing_key(cert: Path, key: Path) -> None:
    key.unlink()


def _new_cert_old_key(cert: Path, key: Path) -> None:
    trustme.CA().issue_cert("localhost").cert_chain_pems[0].write_to_path(str(cert))


def _new_cert_half_written_key(cert: Path, key: Path) -> None:
    # A renewal caught between its two writes: the certificate is new, its key is not
    # all there yet.
    issued = trustme.CA().issue_cert("localhost")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    whole = issued.private_key_pem.bytes()
    key.write_bytes(whole[:len(whole) // 2])


BAD_RELOADS: dict[str, Callable[[Path, Path], None]] = {
    "another key": _another_key,
    "half-written key": _half_written_key,
    "missing key": _missing_key,
    "new certificate, old key": _new_cert_old_key,
    "new certificate, half-written key": _new_cert_half_written_key,
}


@pytest.mark.parametrize("case", sorted(BAD_RELOADS))
def test_a_refused_reload_keeps_the_old_certificate_for_new_handshakes(
        setup: Setup, own_files: tuple[Path, Path], start_process, case: str) -> None:
    cert, key = own_files
    old = der(cert)
    relay = start_process(setup)
    assert presented(setup, "starttls") == old
    BAD_RELOADS[case](cert, key)
    refused = reload(relay, "reload_refused")
    for mode in ("starttls", "implicit", "starttls", "implicit"):
        assert presented(setup, mode) == old, mode
    assert str(key) in str(refused["problems"]), refused  # which file is wrong
    assert relay.proc.poll() is None


def test_a_good_reload_serves_the_new_certificate_and_keeps_sessions_up(
        setup: Setup, own_files: tuple[Path, Path], start_process) -> None:
    cert, key = own_files
    old = der(cert)
    relay = start_process(setup)
    # A refused reload first: the swap that follows must still happen.
    _half_written_key(cert, key)
    reload(relay, "reload_refused")
    with smtplib.SMTP_SSL("127.0.0.1", setup.implicit_port, timeout=10,
                          context=_any_certificate()) as up, \
            smtplib.SMTP("127.0.0.1", setup.starttls_port, timeout=10) as up2:
        up2.starttls(context=_any_certificate())
        up.login(USER, PASSWORD)
        up2.login(USER, PASSWORD)
        issued = trustme.CA().issue_cert("localhost", "127.0.0.1")
        issued.private_key_pem.write_to_path(str(key))
        issued.cert_chain_pems[0].write_to_path(str(cert))
        new = der(cert)
        assert new != old
        reload(relay, "reloaded")
        for mode in ("starttls", "implicit"):
            assert presented(setup, mode) == new, mode
        for session in (up, up2):  # sessions made before the reload carry on
            assert isinstance(session.sock, ssl.SSLSocket)
            assert session.sock.getpeercert(binary_form=True) == old
            assert session.sendmail(SENDER, ["a@example.net"], MESSAGE) == {}


def test_a_non_ascii_server_name_is_served_as_before_until_a_reload(
        setup: Setup, start_process) -> None:
    # (After a reload the SNI callback decides, and CPython refuses such a name there:
    # RFC 6066 allows only ASCII; see relay.smtp.tlscontext.)
    import subprocess

    relay = start_process(setup)
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{setup.implicit_port}",
         "-servername", "caf\u00e9.example", "-ign_eof"],
        input=b"QUIT\r\n", capture_output=True, timeout=30)
    assert b"220 " in result.stdout, result.stderr
    assert b"Traceback" not in relay.log_path.read_bytes()
