"""Throwaway certificates made at test time with `cryptography`: two CAs, a server certificate from each
(for 127.0.0.1 and localhost) and a client certificate, written as PEM files."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca: Path  # signs server, client
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    ca2: Path  # a second CA, for the reloaded server certificate
    server2_cert: Path
    server2_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _builder(
    subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(cn, _name(cn), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    cn: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], server: bool
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(cn, ca[0].subject, key.public_key()).add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True
    )
    if server:
        names: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    cert = builder.sign(ca[1], hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)

    def write(name: str, data: bytes) -> Path:
        path = folder / name
        path.write_bytes(data)
        path.chmod(0o600)
        return path

    ca, ca2 = _ca("test CA"), _ca("second test CA")
    server = _leaf("server", ca, server=True)
    client = _leaf("client", ca, server=False)
    server2 = _leaf("server 2", ca2, server=True)
    return Pki(
        ca=write("ca.pem", ca[0].public_bytes(serialization.Encoding.PEM)),
        server_cert=write("server.pem", server[0]),
        server_key=write("server.key", server[1]),
        client_cert=write("client.pem", client[0]),
        client_key=write("client.key", client[1]),
        ca2=write("ca2.pem", ca2[0].public_bytes(serialization.Encoding.PEM)),
        server2_cert=write("server2.pem", server2[0]),
        server2_key=write("server2.key", server2[1]),
    )


def mutual_tls_args(pki: Pki, certs: Path) -> tuple[str, ...]:
    """`serve` arguments for mutual TLS with copies of the server certificate and key in `certs` (as
    server.pem and server.key, which a reload test replaces) and `pki.ca` as the client CA."""
    certs.mkdir(parents=True, exist_ok=True)
    shutil.copy(pki.server_cert, certs / "server.pem")
    shutil.copy(pki.server_key, certs / "server.key")
    return (
        "--grpc-use-ssl", "true", "--grpc-use-ssl-mutual", "true",
        "--grpc-server-cert", str(certs / "server.pem"),
        "--grpc-server-key", str(certs / "server.key"),
        "--grpc-root-cert", str(pki.ca),
    )  # fmt: skip
