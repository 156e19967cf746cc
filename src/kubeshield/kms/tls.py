"""mTLS for service mode: PEM material checked at startup, hot reload, and an allow-list of client identities.

Server side (``kubeshield kms serve --listen``):

* :func:`load_key_pair` and :func:`load_ca_bundle` read and *check* the PEM files before grpc ever sees
  them, so bad material is a clear :class:`ConfigError` naming the file and the problem (unreadable, not
  PEM, no certificate, private key does not match the certificate, certificate expired or not yet valid)
  instead of grpc's opaque "could not start server".
* :class:`ReloadingServerCredentials` builds ``grpc.dynamic_ssl_server_credentials`` with
  ``require_client_authentication=True``. grpc calls our fetcher before every new TLS handshake; the
  fetcher costs one ``stat`` per file while nothing changed, and when cert-manager replaces the files it
  loads and checks the new material and hands it to grpc (a bad or half-written new set is refused, the
  old one stays in use and the failure is logged). Existing connections keep their session.
* :class:`AllowList` is checked on every RPC *before* the request reaches the KMS service: the peer's
  verified certificate identities (every SAN and the subject CN, as grpc's auth context reports them)
  must include one allowed identity, otherwise PERMISSION_DENIED. An empty allow-list accepts any
  client certificate the client CA signed (the handshake already required one).

Client side (``kubeshield kms relay``): :func:`client_credentials` gives channel credentials with the
relay's client certificate and the CA that signed the replicas' server certificates.

No key bytes ever appear in an error, log line or metric.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from kubeshield.errors import ConfigError
from kubeshield.kms.logging import fields, get_logger

__all__ = [
    "AllowList",
    "KeyPair",
    "ReloadingServerCredentials",
    "client_credentials",
    "load_ca_bundle",
    "load_key_pair",
    "peer_identities",
]

_log = get_logger("kms.tls")
_MAX_PEM = 1 << 20


def _read(path: Path, what: str) -> bytes:
    try:
        size = os.stat(path).st_size
        if size > _MAX_PEM:
            raise ConfigError(f"{what} {str(path)!r} is larger than {_MAX_PEM} bytes")
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {exc.strerror}") from None


def _certificates(data: bytes, path: Path, what: str) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ConfigError(f"{what} {str(path)!r} holds no PEM certificate")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"{what} {str(path)!r} is not valid PEM certificate data") from None


def _check_validity(cert: x509.Certificate, path: Path, what: str, now: datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise ConfigError(f"{what} {str(path)!r} is not valid before {cert.not_valid_before_utc.isoformat()}")
    if now > cert.not_valid_after_utc:
        raise ConfigError(f"{what} {str(path)!r} expired at {cert.not_valid_after_utc.isoformat()}")


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A checked certificate chain and its private key, as PEM bytes (repr hides the key)."""

    chain_pem: bytes
    key_pem: bytes
    not_after: datetime

    def __repr__(self) -> str:
        return f"KeyPair(not_after={self.not_after.isoformat()}, key=<hidden>)"


def load_key_pair(
    cert_path: str | Path, key_path: str | Path, *, clock: Callable[[], float] = time.time
) -> KeyPair:
    """Read and check a certificate chain and its private key. Raises ConfigError naming the problem."""
    cert_path, key_path = Path(cert_path), Path(key_path)
    chain_pem = _read(cert_path, "TLS certificate")
    key_pem = _read(key_path, "TLS private key")
    leaf = _certificates(chain_pem, cert_path, "TLS certificate")[0]
    _check_validity(leaf, cert_path, "TLS certificate", datetime.fromtimestamp(clock(), UTC))
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            f"TLS private key {str(key_path)!r} is not an unencrypted PEM private key"
        ) from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
                            ed448.Ed448PrivateKey)):  # fmt: skip
        raise ConfigError(f"TLS private key {str(key_path)!r} has an unsupported key type")
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, public) != leaf.public_key().public_bytes(der, public):
        raise ConfigError(
            f"TLS private key {str(key_path)!r} does not match the certificate {str(cert_path)!r}"
        )
    return KeyPair(chain_pem=chain_pem, key_pem=key_pem, not_after=leaf.not_valid_after_utc)


def load_ca_bundle(path: str | Path, *, what: str = "client CA") -> bytes:
    """Read and check a PEM bundle of CA certificates (each must be a CA). Raises ConfigError."""
    path = Path(path)
    data = _read(path, what)
    for cert in _certificates(data, path, what):
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is not None and not constraints.ca:
            raise ConfigError(f"{what} {str(path)!r} holds a certificate that is not a CA")
    return data


def _stamp(paths: Sequence[Path]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append((-1, -1, -1))
            continue
        out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


class ReloadingServerCredentials:
    """Server credentials that require a client certificate and pick up replaced files without restart."""

    def __init__(
        self,
        *,
        cert: str | Path,
        key: str | Path,
        client_ca: str | Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._paths = (Path(cert), Path(key), Path(client_ca))
        self._clock = clock
        self._lock = threading.Lock()
        pair, ca = self._load()  # raises ConfigError at startup: fail closed
        self._stamp = _stamp(self._paths)
        self.reloads = 0
        self.failed_reloads = 0
        self.not_after = pair.not_after
        self.credentials = grpc.dynamic_ssl_server_credentials(
            # grpc's stubs say the fetcher never returns None, but None is how it says "unchanged"
            self._configuration(pair, ca),
            self._fetch,  # type: ignore[arg-type]
            require_client_authentication=True,
        )

    def _load(self) -> tuple[KeyPair, bytes]:
        cert, key, ca = self._paths
        return load_key_pair(cert, key, clock=self._clock), load_ca_bundle(ca)

    @staticmethod
    def _configuration(pair: KeyPair, ca: bytes) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(pair.key_pem, pair.chain_pem)], root_certificates=ca
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by grpc before each handshake: new configuration when the files changed, else None."""
        with self._lock:
            stamp = _stamp(self._paths)
            if stamp == self._stamp:
                return None
            try:
                pair, ca = self._load()
            except ConfigError as exc:
                # cert-manager writes the files one by one: a mismatched half-update is retried on the next
                # handshake; until then the old material stays in use.
                self.failed_reloads += 1
                _log.warning("TLS material not reloaded", extra=fields(detail=str(exc)))
                return None
            self._stamp = stamp
            self.reloads += 1
            self.not_after = pair.not_after
            _log.info("TLS material reloaded", extra=fields(not_after=pair.not_after.isoformat()))
            return self._configuration(pair, ca)


_KINDS = ("dns", "uri", "ip", "email", "cn")


def _as_text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def peer_identities(auth_context: Mapping[str, Iterable[object]]) -> frozenset[str]:
    """The verified identities of a TLS peer from grpc's auth context.

    grpc lists every SAN under ``x509_subject_alternative_name`` (DNS names, URIs, IPs and emails, as
    plain strings) and the subject CN under ``x509_common_name``; we return each SAN bare and the CN as
    ``cn:<name>``. A connection without a verified client certificate has neither.
    """
    out: set[str] = set()
    for value in auth_context.get("x509_subject_alternative_name", ()):
        out.add(_as_text(value))
    for value in auth_context.get("x509_common_name", ()):
        out.add("cn:" + _as_text(value))
    return frozenset(out)


class AllowList:
    """Client identities allowed to call the KMS API.

    Entries are SAN values (``relay.kube-system.svc``, ``spiffe://cluster/ns/kube-system/sa/relay``,
    ``10.0.0.5``), optionally prefixed with their kind (``dns:``, ``uri:``, ``ip:``, ``email:``, which
    is dropped: grpc does not report SAN kinds), or ``cn:<common name>``. Empty means: any client
    certificate signed by the client CA.
    """

    def __init__(self, entries: Iterable[str] = ()) -> None:
        allowed: set[str] = set()
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            kind, sep, rest = entry.partition(":")
            if sep and kind.lower() in _KINDS and not rest.startswith("//"):
                if not rest:
                    raise ConfigError(f"allow-list entry {raw!r} has no value after {kind}:")
                entry = ("cn:" + rest) if kind.lower() == "cn" else rest
            allowed.add(entry)
        self.entries = frozenset(allowed)

    @classmethod
    def parse(cls, text: str | None) -> AllowList:
        """A comma-separated list (the ``--allow`` flag)."""
        return cls((text or "").split(","))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def permits(self, identities: frozenset[str]) -> bool:
        """True when the peer presented a verified certificate and (if configured) one identity is allowed."""
        if not identities:
            return False
        return not self.entries or not self.entries.isdisjoint(identities)


def client_credentials(*, ca: str | Path, cert: str | Path, key: str | Path) -> grpc.ChannelCredentials:
    """mTLS channel credentials for the relay (checked like the server's material)."""
    roots = load_ca_bundle(ca, what="CA")
    pair = load_key_pair(cert, key)
    return grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=pair.key_pem, certificate_chain=pair.chain_pem
    )
