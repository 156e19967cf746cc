"""Read the credentials of an existing kubeconfig, once, so that they can move into the sealed store.

Every way a kubeconfig ``user`` entry can hold a credential is read: ``client-certificate-data`` /
``client-certificate`` (a file) with ``client-key-data`` / ``client-key``, ``token`` and ``tokenFile``.
Relative file paths are resolved against the kubeconfig's own directory, as kubectl does. A user that
authenticates through an ``exec`` plugin or an ``auth-provider`` holds no credential kubeshield could
take over and is refused with a message saying so; so is ``username``/``password`` (basic auth is gone
from Kubernetes) and a cluster with ``insecure-skip-tls-verify`` (the proxy always verifies the
apiserver). The cluster's ``server``, ``certificate-authority(-data)`` and ``tls-server-name`` come along.

:func:`read_kubeconfig_credentials` returns the credentials and the files they came from (the
``--remove`` step deletes the kubeconfig and those files, never before the sealed copy is readable).
Errors name the kubeconfig, the context and the field, never a value.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from kubeshield.access.credential import ClusterCredential
from kubeshield.errors import ConfigError

__all__ = ["ImportedContext", "KubeconfigImport", "read_kubeconfig_credentials"]

_MAX_FILE_BYTES = 4 * 1024 * 1024
_CRED_FIELDS = ("client-certificate", "client-certificate-data", "client-key", "client-key-data", "token",
                "tokenFile")  # fmt: skip


@dataclass(frozen=True)
class ImportedContext:
    """One context's credential and the plaintext files (besides the kubeconfig) it was read from."""

    credential: ClusterCredential
    secret_files: tuple[Path, ...] = ()
    public_files: tuple[Path, ...] = ()
    namespace: str | None = None


@dataclass(frozen=True)
class KubeconfigImport:
    """What :func:`read_kubeconfig_credentials` found."""

    path: Path
    contexts: tuple[ImportedContext, ...]
    #: contexts of the file that were not imported but whose user holds a credential of its own
    other_secret_contexts: tuple[str, ...] = field(default=())


def _load(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            raw = fh.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: kubeconfig not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the kubeconfig: {exc.strerror}") from None
    if len(raw) > _MAX_FILE_BYTES:
        raise ConfigError(f"{path}: the kubeconfig is larger than {_MAX_FILE_BYTES} bytes")
    try:
        data = yaml.safe_load(raw)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}" if mark is not None else "unknown place"
        raise ConfigError(f"{path}: not valid YAML at {where}") from None
    except yaml.YAMLError:
        raise ConfigError(f"{path}: not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a kubeconfig (expected a mapping with clusters, users, contexts)")
    return data


def _named(data: Mapping[str, Any], section: str, key: str, path: Path) -> dict[str, dict[str, Any]]:
    entries = data.get(section) or []
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: {section}: expected a list")
    out: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"{path}: {section}[{i}]: expected a mapping with a name")
        body = entry.get(key) or {}
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: {section}[{i}].{key}: expected a mapping")
        out[entry["name"]] = body
    return out


def _read_file(base: Path, value: object, *, where: str) -> tuple[bytes, Path]:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a file path")
    target = Path(os.path.expanduser(value))
    if not target.is_absolute():
        target = base / target
    try:
        with target.open("rb") as fh:
            data = fh.read(_MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {target}: {exc.strerror}") from None
    if len(data) > _MAX_FILE_BYTES:
        raise ConfigError(f"{where}: {target} is larger than {_MAX_FILE_BYTES} bytes")
    return data, target


def _decode_data(value: object, *, where: str) -> bytes:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected base64 text")
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except binascii.Error:
        raise ConfigError(f"{where}: not valid base64") from None


def _pick(
    body: Mapping[str, Any], base: Path, data_key: str, file_key: str, *, where: str
) -> tuple[bytes | None, Path | None]:
    if body.get(data_key):
        return _decode_data(body[data_key], where=f"{where}.{data_key}"), None
    if body.get(file_key):
        data, target = _read_file(base, body[file_key], where=f"{where}.{file_key}")
        return data, target
    return None, None


def _cert_facts(cert_pem: bytes, *, where: str) -> tuple[datetime, str | None]:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ConfigError(f"{where}: the client certificate is not a PEM certificate") from None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    subject = str(names[0].value) if names else None
    return cert.not_valid_after_utc, subject


def _check_key(cert_pem: bytes, key_pem: bytes, *, where: str) -> None:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{where}: the client key is not an unencrypted PEM private key") from None
    cert = x509.load_pem_x509_certificate(cert_pem)
    mine = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if mine != theirs:
        raise ConfigError(f"{where}: the client key does not belong to the client certificate")


def _jwt_facts(token: str) -> tuple[datetime | None, str | None]:
    """``exp`` and ``sub`` of a JWT-shaped token, unverified (only to show and to drop it in time)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None, None
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeEncodeError, binascii.Error):
        return None, None
    if not isinstance(claims, dict):
        return None, None
    exp = claims.get("exp")
    expires = (
        datetime.fromtimestamp(exp, UTC)
        if isinstance(exp, int | float) and not isinstance(exp, bool)
        else None
    )
    sub = claims.get("sub")
    return expires, sub if isinstance(sub, str) else None


def _has_secret(user: Mapping[str, Any]) -> bool:
    return any(user.get(k) for k in (*_CRED_FIELDS, "password", "exec", "auth-provider"))


def _credential(
    name: str, context: Mapping[str, Any], clusters: Mapping[str, Any], users: Mapping[str, Any], path: Path
) -> ImportedContext:
    base = path.parent
    where = f"{path}: context {name!r}"
    cluster_name, user_name = context.get("cluster"), context.get("user")
    if not isinstance(cluster_name, str) or cluster_name not in clusters:
        raise ConfigError(f"{where}: its cluster {cluster_name!r} is not in the file")
    if not isinstance(user_name, str) or user_name not in users:
        raise ConfigError(f"{where}: its user {user_name!r} is not in the file")
    cluster, user = clusters[cluster_name], users[user_name]
    uwhere = f"{path}: user {user_name!r}"
    if user.get("exec"):
        raise ConfigError(
            f"{uwhere} authenticates with an exec plugin: it holds no credential to import. Log in "
            "through the relay instead (kubeshield access login), or import a kubeconfig that holds "
            "the certificate or token itself"
        )
    if user.get("auth-provider"):
        provider = user["auth-provider"]
        provider_name = provider.get("name", "?") if isinstance(provider, dict) else "?"
        raise ConfigError(
            f"{uwhere} uses an auth-provider ({str(provider_name)[:40]}): it holds no credential to "
            "import; log in through the relay instead (kubeshield access login)"
        )
    if user.get("username") or user.get("password"):
        raise ConfigError(f"{uwhere}: basic authentication (username/password) is not supported")
    if cluster.get("insecure-skip-tls-verify"):
        raise ConfigError(
            f"{path}: cluster {cluster_name!r} sets insecure-skip-tls-verify: the proxy always verifies the "
            "apiserver; give its certificate-authority instead"
        )
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith("https://"):
        raise ConfigError(f"{path}: cluster {cluster_name!r}: server must be an https:// URL")
    cwhere = f"{path}: cluster {cluster_name!r}"
    ca_pem, ca_file = _pick(
        cluster, base, "certificate-authority-data", "certificate-authority", where=cwhere
    )
    tls_server_name = cluster.get("tls-server-name")
    if tls_server_name is not None and not isinstance(tls_server_name, str):
        raise ConfigError(f"{cwhere}.tls-server-name: expected text")
    cert_pem, cert_file = _pick(user, base, "client-certificate-data", "client-certificate", where=uwhere)
    key_pem, key_file = _pick(user, base, "client-key-data", "client-key", where=uwhere)
    token: str | None = None
    token_file: Path | None = None
    if user.get("token"):
        if not isinstance(user["token"], str):
            raise ConfigError(f"{uwhere}.token: expected text")
        token = user["token"].strip()
    elif user.get("tokenFile"):
        raw, token_file = _read_file(base, user["tokenFile"], where=f"{uwhere}.tokenFile")
        try:
            token = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise ConfigError(f"{uwhere}.tokenFile: the token is not ASCII text") from None
        if not token:
            raise ConfigError(f"{uwhere}.tokenFile: {token_file} is empty")
    has_cert = cert_pem is not None or key_pem is not None
    if has_cert and (cert_pem is None or key_pem is None):
        missing = "client-key(-data)" if key_pem is None else "client-certificate(-data)"
        raise ConfigError(f"{uwhere}: a client certificate needs its key: {missing} is missing")
    if has_cert and token is not None:
        raise ConfigError(f"{uwhere}: holds both a client certificate and a token; keep one")
    if not has_cert and token is None:
        raise ConfigError(f"{uwhere}: holds no credential (no client certificate, token or tokenFile)")
    expires: datetime | None
    subject: str | None
    if cert_pem is not None and key_pem is not None:
        expires, subject = _cert_facts(cert_pem, where=uwhere)
        _check_key(cert_pem, key_pem, where=uwhere)
    else:
        assert token is not None
        expires, subject = _jwt_facts(token)
    namespace = context.get("namespace")
    credential = ClusterCredential(
        context=name,
        server=server,
        ca_pem=ca_pem,
        tls_server_name=tls_server_name,
        client_cert_pem=cert_pem,
        client_key_pem=key_pem,
        token=token,
        expires_at=expires,
        subject=subject,
    )
    return ImportedContext(
        credential=credential,
        secret_files=tuple(p for p in (key_file, token_file) if p is not None),
        public_files=tuple(p for p in (cert_file, ca_file) if p is not None),
        namespace=namespace if isinstance(namespace, str) else None,
    )


def read_kubeconfig_credentials(path: Path, *, contexts: Sequence[str] = ()) -> KubeconfigImport:
    """The credentials of ``contexts`` (default: the file's ``current-context``) of kubeconfig ``path``."""
    path = Path(path).absolute()
    data = _load(path)
    clusters = _named(data, "clusters", "cluster", path)
    users = _named(data, "users", "user", path)
    all_contexts = _named(data, "contexts", "context", path)
    wanted = list(contexts)
    if not wanted:
        current = data.get("current-context")
        if not isinstance(current, str) or not current:
            raise ConfigError(f"{path}: no current-context; name the context to import with --context")
        wanted = [current]
    for name in wanted:
        if name not in all_contexts:
            known = ", ".join(sorted(all_contexts)) or "none"
            raise ConfigError(f"{path}: no context {name!r} (the file has: {known})")
    imported = tuple(_credential(name, all_contexts[name], clusters, users, path) for name in wanted)
    taken = {all_contexts[n].get("user") for n in wanted}
    others = tuple(
        sorted(
            n
            for n, c in all_contexts.items()
            if n not in wanted
            and c.get("user") not in taken
            and _has_secret(users.get(str(c.get("user")), {}))
        )
    )
    return KubeconfigImport(path=path, contexts=imported, other_secret_contexts=others)
