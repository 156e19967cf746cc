"""The agent's local CA: serving certificates for 127.0.0.1/localhost that a verifying client accepts."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import tempfile
import threading
from pathlib import Path

from cryptography import x509

from kubeshield.access.local_ca import LocalCA


def test_the_serving_certificate_names_loopback_only() -> None:
    ca = LocalCA()
    serving = ca.issue_serving()
    cert = x509.load_pem_x509_certificate(serving.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert cert.not_valid_after_utc <= ca.expires_at
    assert "PRIVATE" not in repr(serving) and "PRIVATE" not in repr(ca)
    root = x509.load_pem_x509_certificate(ca.cert_pem)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert root.extensions.get_extension_for_class(x509.NameConstraints).critical


def _handshake(ca: LocalCA, server_name: str, *, trusted: LocalCA | None = None) -> str | None:
    """A real TLS handshake against the CA's serving certificate, by a client that trusts ``trusted``
    (default: the same CA); the verification error, or None when the client accepted it."""
    serving = ca.issue_serving()
    with tempfile.TemporaryDirectory() as d:
        cert, key = Path(d) / "c", Path(d) / "k"
        cert.write_bytes(serving.cert_pem)
        key.write_bytes(serving.key_pem)
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cadata=(trusted or ca).cert_pem.decode())
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port)) as raw:
            try:
                with client_ctx.wrap_socket(raw, server_hostname=server_name) as tls:
                    tls.sendall(b"x")
                return None
            except ssl.SSLCertVerificationError as exc:
                return str(exc)
    finally:
        thread.join(30)
        listener.close()


def test_a_verifying_client_accepts_127_0_0_1_and_localhost() -> None:
    ca = LocalCA()
    assert _handshake(ca, "127.0.0.1") is None
    assert _handshake(ca, "localhost") is None


def test_a_verifying_client_refuses_other_names_and_other_cas() -> None:
    assert "match" in (_handshake(LocalCA(), "example.com") or "")
    # a client that trusts another agent's CA refuses this one's certificate
    assert "certificate verify failed" in (_handshake(LocalCA(), "127.0.0.1", trusted=LocalCA()) or "")
