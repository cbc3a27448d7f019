"""``make run``'s development setup: a config, a self-signed certificate and one user.

Everything lands in one folder (``.dev/`` from the Makefile) and needs no AWS account: the
transport is the local outbox. Running it again keeps what exists, so the password stays.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from relay import users

DEV_USER = "dev"

_CONFIG = """\
# Development configuration written by `ses-relay dev-init` (make run). Not for production:
# see config/ses-relay.yaml for every key, documented.
hostname: localhost
listeners:
  - {{name: submission,  address: 127.0.0.1, port: {starttls_port}, tls: starttls, auth: required}}
  - {{name: submissions, address: 127.0.0.1, port: {implicit_port}, tls: implicit, auth: required}}
tls: {{cert: tls/cert.pem, key: tls/key.pem}}
users_file: users.yaml
queue: {{directory: queue, max_age: 5d}}
suppression: {{database: suppression.sqlite3}}
feedback: {{database: events.sqlite3}}
delivery:
  transport: outbox        # each message becomes outbox/<id>.eml (+ .json envelope)
  outbox_dir: outbox
log: {{format: auto, level: info}}
console: {{address: 127.0.0.1, port: {console_port}}}  # the web console; log in as the dev user
"""


def init(directory: Path, *, starttls_port: int = 2587, implicit_port: int = 2465,
         console_port: int = 8025) -> str:
    """Create what is missing under *directory*; return the dev user's password."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "ses-relay.yaml"
    if not config.exists():
        config.write_text(_CONFIG.format(starttls_port=starttls_port,
                                         implicit_port=implicit_port,
                                         console_port=console_port))
    tls = directory / "tls"
    if not (tls / "cert.pem").exists() or not (tls / "key.pem").exists():
        tls.mkdir(exist_ok=True)
        write_self_signed(tls / "cert.pem", tls / "key.pem", "localhost")
    password_file = directory / "dev-password"
    if password_file.exists():
        return password_file.read_text().strip()
    password = secrets.token_urlsafe(12)
    db = users.load(directory / "users.yaml")
    users.save(directory / "users.yaml",
               db.with_user(users.User(DEV_USER, users.hash_password(password), admin=True)))
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password


def write_self_signed(cert_path: Path, key_path: Path, hostname: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(hostname),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]), critical=False)
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
