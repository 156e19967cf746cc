"""mTLS for service mode: PEM material checked at startup, hot reload on both ends, expiry readiness, and
an allow-list of typed client identities.

* :func:`load_key_pair` and :func:`load_ca_bundle` read and *check* the PEM files before grpc ever sees
  them, so bad material is a clear :class:`ConfigError` naming the file and the problem (unreadable, not
  PEM, no certificate, private key does not match the certificate, certificate expired or not yet valid)
  instead of grpc's opaque "could not start server".
* :class:`ReloadingServerCredentials` (``kubeshield kms serve --listen``) builds
  ``grpc.dynamic_ssl_server_credentials`` with ``require_client_authentication=True``. grpc calls our
  fetcher before every new TLS handshake; it costs one ``stat`` per file while nothing changed, and when
  cert-manager replaces the files it loads and checks the new material and hands it to grpc (a bad or
  half-written new set is refused, the old one stays in use and the failure is logged). Existing
  connections keep their session.
* :class:`ReloadingClientCredentials` (``kubeshield kms relay``) does the same for the relay's client
  certificate and the replicas' CA: :meth:`~ReloadingClientCredentials.poll` (called by the relay on every
  replica check round) returns new channel credentials when the files changed and the new set checks out;
  the relay then opens new channels with them and lets the old ones finish their calls.
* Both offer :meth:`readiness`: ``(False, why)`` once the certificate that the *next* handshake would
  present expires within ``expiry_margin`` (default 24 h), so ``/readyz`` fails (never ``/livez``) while
  there is still time to renew. A renewed certificate on disk counts as soon as it checks out.
* :class:`AllowList` is checked on every RPC *before* the request reaches the KMS service. Entries are
  typed (``dns:``, ``uri:``, ``email:``, ``ip:``, ``cn:``) and match only a certificate identity of that
  type, which :func:`peer_identities` reads from the verified peer certificate itself. An empty list
  permits nobody; accepting any certificate the client CA signed is the explicit
  :meth:`AllowList.any_client` (``--allow-any-client-cert``).

No key bytes ever appear in an error, log line or metric.
"""

from __future__ import annotations

import abc
import ipaddress
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Generic, TypeVar

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry, Gauge

from kubeshield.errors import ConfigError
from kubeshield.kms.logging import fields, get_logger

__all__ = [
    "DEFAULT_EXPIRY_MARGIN",
    "AllowList",
    "KeyPair",
    "ReloadingClientCredentials",
    "ReloadingServerCredentials",
    "client_credentials",
    "identities_of",
    "load_ca_bundle",
    "load_key_pair",
    "peer_identities",
]

#: ``/readyz`` fails once the certificate expires within this many seconds (``--tls-expiry-margin``).
DEFAULT_EXPIRY_MARGIN = 24 * 3600.0
_T = TypeVar("_T")

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


class _Reloader(Generic[_T]):
    """Material loaded (and checked) from files, loaded again when their ``stat`` stamp changes.

    ``poll`` is cheap while nothing changed (one ``stat`` per file). A changed set that does not check out
    (cert-manager writes the files one by one) is retried on every poll and logged once per state; until
    it checks out the previous material stays current.
    """

    def __init__(self, paths: Sequence[Path], load: Callable[[], _T], *, what: str) -> None:
        self._paths = tuple(paths)
        self._load = load
        self._what = what
        self._lock = threading.Lock()
        self.current = load()  # raises ConfigError at startup: fail closed
        self._stamp = _stamp(self._paths)
        self._logged_failure: tuple[tuple[int, int, int], ...] | None = None
        self.generation = 0
        self.reloads = 0
        self.failed_reloads = 0

    def poll(self) -> bool:
        """Reload when the files changed; True when new material became current."""
        with self._lock:
            stamp = _stamp(self._paths)
            if stamp == self._stamp:
                return False
            try:
                value = self._load()
            except ConfigError as exc:
                self.failed_reloads += 1
                if stamp != self._logged_failure:
                    self._logged_failure = stamp
                    _log.warning(f"{self._what} not reloaded", extra=fields(detail=str(exc)))
                return False
            self.current, self._stamp, self._logged_failure = value, stamp, None
            self.generation += 1
            self.reloads += 1
            return True


class _Expiry(abc.ABC):
    """Readiness and a metric from the ``not_after`` of the current certificate."""

    def __init__(self, *, cert: Path, role: str, margin: float, clock: Callable[[], float]) -> None:
        if margin < 0:
            raise ValueError("expiry margin must be >= 0")
        self._cert_path = cert
        self._role = role
        self.expiry_margin = margin
        self._clock = clock

    @property
    @abc.abstractmethod
    def not_after(self) -> datetime:
        """When the current certificate expires."""

    @abc.abstractmethod
    def poll(self) -> object:
        """Look at the files again (reload when they changed and check out)."""

    def readiness(self) -> tuple[bool, str]:
        """``(False, why)`` when the certificate new handshakes would use expires within the margin."""
        self.poll()  # a renewed certificate on disk counts as soon as it checks out
        not_after = self.not_after
        left = not_after.timestamp() - self._clock()
        if left <= self.expiry_margin:
            state = "expired" if left <= 0 else "expires"
            return False, (
                f"TLS {self._role} certificate {str(self._cert_path)!r} {state} at {not_after.isoformat()} "
                f"(readiness margin {self.expiry_margin / 3600:g}h): renew it"
            )
        return True, "ok"

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """``kubeshield_tls_certificate_expiry_timestamp_seconds{role}`` on ``registry``."""
        gauge = Gauge(
            "kubeshield_tls_certificate_expiry_timestamp_seconds",
            "Unix time at which the TLS certificate in use expires.",
            ["role"],
            registry=registry,
        )
        gauge.labels(role=self._role).set_function(lambda: self.not_after.timestamp())


class ReloadingServerCredentials(_Expiry):
    """Server credentials that require a client certificate and pick up replaced files without restart."""

    def __init__(
        self,
        *,
        cert: str | Path,
        key: str | Path,
        client_ca: str | Path,
        clock: Callable[[], float] = time.time,
        expiry_margin: float = DEFAULT_EXPIRY_MARGIN,
    ) -> None:
        cert, key, client_ca = Path(cert), Path(key), Path(client_ca)
        super().__init__(cert=cert, role="serving", margin=expiry_margin, clock=clock)

        def load() -> tuple[KeyPair, bytes]:
            return load_key_pair(cert, key, clock=clock), load_ca_bundle(client_ca)

        self._material = _Reloader((cert, key, client_ca), load, what="TLS material")
        self._served = 0  # the generation grpc has
        self._lock = threading.Lock()
        self.credentials = grpc.dynamic_ssl_server_credentials(
            # grpc's stubs say the fetcher never returns None, but None is how it says "unchanged"
            self._configuration(*self._material.current),
            self._fetch,  # type: ignore[arg-type]
            require_client_authentication=True,
        )

    @property
    def reloads(self) -> int:
        return self._material.reloads

    @property
    def failed_reloads(self) -> int:
        return self._material.failed_reloads

    @property
    def not_after(self) -> datetime:
        return self._material.current[0].not_after

    def poll(self) -> bool:
        """Check the files now (grpc gets new material at its next handshake); True when reloaded."""
        return self._material.poll()

    @staticmethod
    def _configuration(pair: KeyPair, ca: bytes) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(pair.key_pem, pair.chain_pem)], root_certificates=ca
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by grpc before each handshake: new configuration when the files changed, else None."""
        self._material.poll()
        with self._lock:
            if self._material.generation == self._served:
                return None
            self._served = self._material.generation
            pair, ca = self._material.current
        _log.info("TLS material reloaded", extra=fields(not_after=pair.not_after.isoformat()))
        return self._configuration(pair, ca)


class ReloadingClientCredentials(_Expiry):
    """The relay's mTLS channel credentials, rebuilt when the certificate, key or CA files change.

    ``credentials`` is the current ``grpc.ChannelCredentials``; :meth:`poll` returns new ones when the
    files changed and the new set checks out (else None), and the caller reopens its channels with them.
    """

    def __init__(
        self,
        *,
        ca: str | Path,
        cert: str | Path,
        key: str | Path,
        clock: Callable[[], float] = time.time,
        expiry_margin: float = DEFAULT_EXPIRY_MARGIN,
    ) -> None:
        ca, cert, key = Path(ca), Path(cert), Path(key)
        super().__init__(cert=cert, role="client", margin=expiry_margin, clock=clock)

        def load() -> tuple[KeyPair, bytes]:
            return load_key_pair(cert, key, clock=clock), load_ca_bundle(ca, what="CA")

        self._material = _Reloader((cert, key, ca), load, what="relay TLS material")
        self._lock = threading.Lock()
        self._taken = 0
        self.credentials = self._build()

    def _build(self) -> grpc.ChannelCredentials:
        pair, roots = self._material.current
        return grpc.ssl_channel_credentials(
            root_certificates=roots, private_key=pair.key_pem, certificate_chain=pair.chain_pem
        )

    @property
    def reloads(self) -> int:
        return self._material.reloads

    @property
    def failed_reloads(self) -> int:
        return self._material.failed_reloads

    @property
    def not_after(self) -> datetime:
        return self._material.current[0].not_after

    def poll(self) -> grpc.ChannelCredentials | None:
        """New channel credentials when the files changed and check out since the last call, else None."""
        self._material.poll()
        with self._lock:
            if self._material.generation == self._taken:
                return None
            self._taken = self._material.generation
            self.credentials = self._build()
            not_after = self._material.current[0].not_after
        _log.info("relay TLS material reloaded", extra=fields(not_after=not_after.isoformat()))
        return self.credentials


_KINDS = ("dns", "uri", "email", "ip", "cn")


def _normal(kind: str, value: str) -> str:
    """The comparable form of one identity of ``kind`` (DNS names and email domains are case-blind)."""
    if kind == "dns":
        return value.lower().rstrip(".")
    if kind == "email":
        local, at, domain = value.rpartition("@")
        return f"{local}@{domain.lower()}" if at else value
    if kind == "ip":
        return str(ipaddress.ip_address(value))
    return value


def identities_of(cert: x509.Certificate) -> frozenset[str]:
    """Every identity a certificate asserts, typed: ``dns:``, ``uri:``, ``email:``, ``ip:`` SANs and ``cn:``.

    Other SAN types (otherName, directoryName, registeredID) assert nothing we match on.
    """
    out: set[str] = set()
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = x509.SubjectAlternativeName([])
    for name in sans:
        if isinstance(name, x509.DNSName):
            out.add("dns:" + _normal("dns", name.value))
        elif isinstance(name, x509.UniformResourceIdentifier):
            out.add("uri:" + name.value)
        elif isinstance(name, x509.RFC822Name):
            out.add("email:" + _normal("email", name.value))
        elif isinstance(name, x509.IPAddress) and not isinstance(
            name.value, (ipaddress.IPv4Network, ipaddress.IPv6Network)
        ):
            out.add("ip:" + str(name.value))
    for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attribute.value
        out.add("cn:" + (value.decode("utf-8", "replace") if isinstance(value, bytes) else value))
    return frozenset(out)


def peer_identities(auth_context: Mapping[str, Iterable[object]]) -> frozenset[str]:
    """The typed identities of a TLS peer (:func:`identities_of`) from grpc's auth context.

    They come from the verified peer certificate grpc puts under ``x509_pem_cert``: grpc's own
    ``x509_subject_alternative_name`` list has no SAN types, so a ``dns:`` entry could not be told from
    an email or URI SAN with the same text. No (or an unparsable) certificate means no identity.
    """
    for value in auth_context.get("x509_pem_cert", ()):
        pem = value if isinstance(value, bytes) else str(value).encode("ascii", "replace")
        try:
            return identities_of(x509.load_pem_x509_certificate(pem))
        except ValueError:
            return frozenset()
    return frozenset()


class AllowList:
    """Client identities allowed to call the KMS API.

    Every entry names its type: ``dns:relay.kube-system.svc``, ``uri:spiffe://cluster/ns/kube-system/sa/relay``,
    ``email:ops@example.com``, ``ip:10.0.0.5`` or ``cn:<common name>``, and matches only a certificate
    identity of that type (:func:`identities_of`). An entry without a type is refused, because it would
    be unclear which identity it names. An empty list permits nobody; ``AllowList.any_client()`` permits
    any certificate the client CA signed (the handshake already verified it), which is opt-in
    (``--allow-any-client-cert``).
    """

    def __init__(self, entries: Iterable[str] = (), *, allow_any: bool = False) -> None:
        allowed: set[str] = set()
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            kind, sep, value = entry.partition(":")
            kind = kind.lower()
            if not sep or kind not in _KINDS:
                raise ConfigError(
                    f"allow-list entry {raw!r} has no type: write dns:NAME, uri:URI, email:ADDRESS, "
                    "ip:ADDRESS or cn:COMMON-NAME"
                )
            if not value:
                raise ConfigError(f"allow-list entry {raw!r} has no value after {kind}:")
            try:
                allowed.add(f"{kind}:{_normal(kind, value)}")
            except ValueError:
                raise ConfigError(f"allow-list entry {raw!r} is not an IP address") from None
        if allow_any and allowed:
            raise ConfigError("an allow-list and 'allow any client certificate' contradict each other")
        self.entries = frozenset(allowed)
        self.allow_any = allow_any

    @classmethod
    def parse(cls, text: str | None) -> AllowList:
        """A comma-separated list (the ``--allow`` flag)."""
        return cls((text or "").split(","))

    @classmethod
    def any_client(cls) -> AllowList:
        """Permit every client whose certificate the client CA signed (``--allow-any-client-cert``)."""
        return cls(allow_any=True)

    def __bool__(self) -> bool:
        return bool(self.entries) or self.allow_any

    def permits(self, identities: frozenset[str]) -> bool:
        """True when the peer presented a verified certificate and one of its identities is allowed."""
        if not identities:
            return False
        return self.allow_any or not self.entries.isdisjoint(identities)


def client_credentials(*, ca: str | Path, cert: str | Path, key: str | Path) -> grpc.ChannelCredentials:
    """mTLS channel credentials, read once and checked like the server's material."""
    roots = load_ca_bundle(ca, what="CA")
    pair = load_key_pair(cert, key)
    return grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=pair.key_pem, certificate_chain=pair.chain_pem
    )
