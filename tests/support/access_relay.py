"""Helpers for the login relay's tests: a relay served over https in the test process (its CA key
wrapped by a real local keyring), a relay.yaml for the CLI, a key holder made at test time, and the
person who answers the device flow.

    relay = start_relay(tmp_path, provider=oidc_provider, clusters=[endpoint])
    relay.url, relay.tls_ca, relay.ca_pem                     # https URL, its TLS CA, the client CA
    person = DevicePerson(oidc_provider, login="alice")       # show=person.show in login()
    relay.stop()
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kubeshield.access.credential import ClusterEndpoint
from kubeshield.access.idtoken import IdTokenVerifier, JwksCache
from kubeshield.access.relay import Relay, RelayServer, provider_jwks_fetch, relay_tls_context
from kubeshield.access.relay_ca import RelayCA
from kubeshield.access.relay_settings import OidcSettings
from kubeshield.keys.local import LocalKeyBackend
from tests.support.keys import CHEAP_ARGON2, PASSPHRASE, make_keyring
from tests.support.oidc_provider import OidcProvider, complete_device_login
from tests.support.tls import make_ca

__all__ = ["DevicePerson", "RunningRelay", "TestKeyHolder", "start_relay", "write_relay_config"]

_CODE = re.compile(r"open (\S+) and enter the code (\S+)")


@dataclass
class RunningRelay:
    relay: Relay
    server: RelayServer
    tls_ca: Path
    ca: RelayCA
    backend: LocalKeyBackend

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem

    def stop(self) -> None:
        self.server.shutdown()
        self.backend.close()


def start_relay(
    directory: Path,
    *,
    provider: OidcProvider,
    clusters: Sequence[ClusterEndpoint] = (ClusterEndpoint(name="example", server="https://127.0.0.1:6443"),),
    client_id: str | None = None,
    issuer: str | None = None,
    clock: Callable[[], float] = time.time,
    oidc: dict[str, Any] | None = None,
    attest: Callable[[object, bytes], str] | None = None,
    challenge: Callable[[], dict[str, Any]] | None = None,
    own_evidence: Callable[[object], dict[str, Any]] | None = None,
) -> RunningRelay:
    """A relay for ``provider`` on https://127.0.0.1:<free port>. ``client_id``/``issuer`` override what
    the relay expects (to test refusals); ``clock`` is the relay's idea of now (to test expiry)."""
    directory.mkdir(parents=True, exist_ok=True)
    make_keyring(directory / "keyring")
    backend = LocalKeyBackend(path=directory / "keyring", passphrase=PASSPHRASE, argon2=CHEAP_ARGON2)
    ca = RelayCA.create(directory / "relay-ca.json", backend=backend)
    tls = make_ca(directory / "tls", "relay-tls-ca")
    serving = tls.issue("relay", ips=("127.0.0.1",), server=True)
    settings = OidcSettings(
        issuer=issuer or provider.issuer,
        client_id=client_id or provider.client_id,
        scopes=("openid", "email", "groups"),
        **(oidc or {}),
    )
    verifier = IdTokenVerifier(
        issuer=settings.issuer,
        client_id=settings.client_id,
        jwks=JwksCache(fetch=provider_jwks_fetch(provider.issuer, context=None)),
        clock=clock,
    )
    relay = Relay(
        oidc=settings,
        verifier=verifier,
        ca=ca,
        clusters=clusters,
        lifetime=timedelta(minutes=15),
        max_lifetime=timedelta(hours=1),
        attest=attest,
        challenge=challenge,
        own_evidence=own_evidence,
        clock=clock,
    )
    server = RelayServer(
        relay=relay, listen="127.0.0.1:0", tls=relay_tls_context(cert=str(serving.cert), key=str(serving.key))
    ).start()
    return RunningRelay(relay=relay, server=server, tls_ca=tls.path, ca=ca, backend=backend)


def write_relay_config(
    directory: Path,
    *,
    provider: OidcProvider,
    clusters: Sequence[tuple[str, str, Path]] = (),
    extra: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """A relay.yaml (local keyring, TLS from a test CA) for the CLI; returns (config, TLS CA)."""
    directory.mkdir(parents=True, exist_ok=True)
    make_keyring(directory / "keyring")
    (directory / "passphrase").write_bytes(PASSPHRASE)
    tls = make_ca(directory / "tls", "relay-tls-ca")
    serving = tls.issue("relay", ips=("127.0.0.1",), server=True)
    doc = {
        "listen": "127.0.0.1:0",
        "tls": {"cert": str(serving.cert), "key": str(serving.key)},
        "oidc": {
            "issuer": provider.issuer,
            "clientId": provider.client_id,
            "scopes": ["openid", "email", "groups"],
        },
        "ca": {"file": "relay-ca.json", "commonName": "test relay CA"},
        "clusters": [{"name": n, "server": s, "caFile": str(ca)} for n, s, ca in clusters],
        # keys: paths are kubeshield.config's (resolved against the working directory): absolute here
        "keys": {
            "backend": "local",
            "local": {"keyring": str(directory / "keyring"), "passphraseFile": str(directory / "passphrase")},
        },
    }
    doc.update(extra or {})
    path = directory / "relay.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, tls.path


@dataclass
class TestKeyHolder:
    """Makes the key in the test (as the agent would inside itself) and records what it was given."""

    __test__ = False
    keys: dict[str, ec.EllipticCurvePrivateKey] = field(default_factory=dict)
    installed: list[dict[str, Any]] = field(default_factory=list)

    def new_key(self) -> tuple[str, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubeshield-access")]))
            .sign(key, hashes.SHA256())
        )
        handle = f"h{len(self.keys)}"
        self.keys[handle] = key
        return handle, csr.public_bytes(serialization.Encoding.PEM)

    def install_certificate(
        self, *, handle: str, cert_pem: bytes, clusters: Sequence[ClusterEndpoint], subject: str | None = None
    ) -> None:
        self.installed.append(
            {"handle": handle, "cert": cert_pem, "clusters": list(clusters), "subject": subject}
        )

    def key_pem(self, handle: str) -> bytes:
        return self.keys[handle].private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


class DevicePerson:
    """``show`` for ``login()``: when the device code appears, a person completes it (on a thread)."""

    def __init__(self, provider: OidcProvider, *, login: str = "alice") -> None:
        self.provider = provider
        self.login = login
        self.lines: list[str] = []
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []

    def show(self, line: str) -> None:
        self.lines.append(line)
        match = _CODE.search(line)
        if match is None:
            return
        url, code = match.groups()

        def act() -> None:
            try:
                complete_device_login(self.provider, url, code, login=self.login)
            except BaseException as exc:  # reported by join()
                self.errors.append(exc)

        thread = threading.Thread(target=act, daemon=True)
        thread.start()
        self._threads.append(thread)

    def join(self) -> None:
        for thread in self._threads:
            thread.join(60)
        if self.errors:
            raise self.errors[0]
