"""Self-signed certificates for TLS between the Flower CLI, SuperLink and SuperNodes.

``generate_certificates(folder)`` writes a CA (``ca.crt``, ``ca.key``) and a
SuperLink certificate signed by it (``server.pem``, ``server.key``) whose
subject alternative names cover loopback and the compose service name, the
files ``flower-superlink --ssl-ca-certfile/--ssl-certfile/--ssl-keyfile`` and
``flower-supernode --root-certificates`` take. For demos and tests: in
production use certificates from your own CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedforget.deploy import TlsFiles

DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1", "superlink")
VALID_DAYS = 365


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alternative_names(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def generate_certificates(folder: Path, names: Sequence[str] = DEFAULT_NAMES) -> TlsFiles:
    """Write a CA and a SuperLink certificate for ``names`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedforget demo CA"))
        .issuer_name(_name("fedforget demo CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(_alternative_names(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(
        ca_cert=str(folder / "ca.crt"),
        server_cert=str(folder / "server.pem"),
        server_key=str(folder / "server.key"),
    )
    Path(files.ca_cert).write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(folder / "ca.key", ca_key)
    Path(files.server_cert).write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(Path(files.server_key), server_key)
    return files
