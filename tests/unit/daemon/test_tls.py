"""The optional TCP listener: mutual TLS or nothing."""

from __future__ import annotations

import datetime
import socket
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hostwarden.proto import warden_pb2 as pb
from hostwarden.proto import warden_pb2_grpc as pb_grpc
from tests.unit.daemon.conftest import make_daemon


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _issue(name: str, issuer: x509.Certificate | None, issuer_key: ec.EllipticCurvePrivateKey | None,
           *, ca: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer.subject if issuer else subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
               .not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256()), key


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tcp_needs_a_client_certificate_from_the_configured_ca(tmp_path: Path):
    ca, ca_key = _issue("hostwarden test CA", None, None, ca=True)
    server, server_key = _issue("localhost", ca, ca_key)
    client, client_key = _issue("runtime", ca, ca_key)
    stranger_ca, stranger_ca_key = _issue("other CA", None, None, ca=True)
    stranger, stranger_key = _issue("stranger", stranger_ca, stranger_ca_key)
    files = {"tls_cert": _pem(server), "tls_key": _pem_key(server_key), "tls_client_ca": _pem(ca)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    port = _free_port()
    daemon = make_daemon(tmp_path, tcp_address=f"127.0.0.1:{port}",
                         **{name: tmp_path / name for name in files})
    daemon.start()
    try:
        def list_with(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> object:
            creds = grpc.ssl_channel_credentials(_pem(ca), _pem_key(key), _pem(cert))
            options = (("grpc.ssl_target_name_override", "localhost"),)
            with grpc.secure_channel(f"127.0.0.1:{port}", creds, options) as channel:
                return pb_grpc.WardenStub(channel).ListSandboxes(pb.ListSandboxesRequest(), timeout=5)

        assert list(list_with(client, client_key).sandboxes) == []
        with pytest.raises(grpc.RpcError) as refused:
            list_with(stranger, stranger_key)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(f"127.0.0.1:{port}") as plain, pytest.raises(grpc.RpcError):
            pb_grpc.WardenStub(plain).ListSandboxes(pb.ListSandboxesRequest(), timeout=5)
    finally:
        daemon.shutdown()
