"""Check every KMS endpoint a run needs before walking etcd, so a wrong or dead socket fails at once.

kube-apiserver dials KMS plugins with ``WaitForReady``, and so do our clients (``kubeshield.kms.client``):
a missing socket costs the provider's whole ``timeout`` (3 s by default) on *every* key. A recovery run
pointed at the wrong socket would wait that out per Secret. Instead, each endpoint is probed once with a
plain ``connect()``: the socket file must exist, be a socket, and accept a connection. Problems are named
precisely: "does not exist", "is not a socket", "connection refused", "permission denied".

Endpoints are read exactly as the apiserver reads them (:func:`socket_path_from_endpoint`), and
:func:`client_endpoint` turns that path back into the form our gRPC clients dial, so the tools talk to the
same socket the apiserver would.

**Abstract sockets** (``unix:///@name``) are dialled too: the etcd tools are clients of an existing
EncryptionConfiguration, and refusing would make recovery of such clusters impossible. But an abstract
name has no permissions, so any local process could hold it: audit and decrypt only send it Status and
already-encrypted DEKs (an impostor can refuse or lie, and AES-GCM then refuses its answer), whereas
*writing* through it (``etcd rewrite --to``) would hand it a plaintext DEK seed.
:func:`refuse_abstract_for_writes` is therefore applied to the target of a rewrite.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Iterable, Sequence

from kubeshield.config.encryption import (
    EncryptionConfiguration,
    GroupResource,
    ProviderConfig,
    socket_path_from_endpoint,
)
from kubeshield.errors import ConfigError, KubeshieldError
from kubeshield.etcd.paths import storage_paths

__all__ = [
    "KMSUnreachable",
    "check_kms_providers",
    "client_endpoint",
    "endpoint_problem",
    "kms_providers_for",
    "refuse_abstract_for_writes",
]

_CONNECT_TIMEOUT = 2.0


class KMSUnreachable(KubeshieldError):
    """One or more KMS plugins the run needs do not accept connections; names each and why."""


def client_endpoint(endpoint: str) -> str:
    """The ``unix:`` URL our gRPC clients dial for ``endpoint``, read as the apiserver reads it
    (``unix://var/run/kms.sock`` is ``/run/kms.sock`` to Go, so it is to us)."""
    path = socket_path_from_endpoint(endpoint)
    return "unix:///" + path if path.startswith("@") else "unix://" + path


def endpoint_problem(endpoint: str, *, timeout: float = _CONNECT_TIMEOUT) -> str | None:
    """None when something accepts connections on ``endpoint``'s socket, else why not (one phrase)."""
    path = socket_path_from_endpoint(endpoint)
    if path.startswith("@"):
        address = "\0" + path[1:]
        shown = f"abstract socket {path}"
    else:
        address, shown = path, f"socket {path}"
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return f"{shown} does not exist"
        except PermissionError:
            return f"{shown}: permission denied (cannot reach its directory)"
        except OSError as exc:
            return f"{shown}: {exc.strerror}"
        if not stat.S_ISSOCK(info.st_mode):
            return f"{path} exists but is not a socket"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(address)
    except ConnectionRefusedError:
        return f"{shown}: connection refused (no plugin is listening on it)"
    except PermissionError:
        return f"{shown}: permission denied"
    except TimeoutError:
        return f"{shown} did not accept a connection within {timeout:g}s"
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return f"{shown} does not exist"
        return f"{shown}: {exc.strerror or exc}"
    finally:
        probe.close()
    return None


def kms_providers_for(
    config: EncryptionConfiguration, resources: Sequence[str] | None
) -> tuple[ProviderConfig, ...]:
    """The KMS providers that reading ``resources`` (None = everything) can need, once each by name."""
    if resources is None or "*.*" in resources or any(r.startswith("*.") for r in resources):
        return config.kms_providers()
    seen: dict[str, ProviderConfig] = {}
    for resource in resources:
        for path in storage_paths(GroupResource.parse(resource)):  # ranges follow the services rules
            for p in config.providers_for(path.encryption_resource) or ():
                if p.kind == "kms":
                    seen.setdefault(p.name, p)
    return tuple(seen.values())


def check_kms_providers(providers: Iterable[ProviderConfig], *, skip: Iterable[str] = ()) -> None:
    """Raise ``KMSUnreachable`` naming every provider (not in ``skip``) whose endpoint is unusable."""
    skipped = set(skip)
    problems: list[tuple[str, str]] = []
    for p in providers:
        if p.name in skipped:
            continue
        problem = endpoint_problem(p.endpoint)
        if problem is not None:
            problems.append((p.name, f"KMS provider {p.name!r} ({p.endpoint}): {problem}"))
    if problems:
        hints = " ".join(f"--kms-endpoint {name}=unix:///PATH" for name, _ in problems)
        raise KMSUnreachable(
            "; ".join(text for _, text in problems)
            + f". Start the plugin, point the provider at a running one ({hints}), or, if no stored value "
            "needs it, leave it out with --skip-kms NAME"
        )


def refuse_abstract_for_writes(provider: ProviderConfig) -> None:
    """Writing through an abstract socket would give a plaintext DEK seed to whoever holds the name."""
    if provider.kind != "kms":
        return
    if socket_path_from_endpoint(provider.endpoint).startswith("@"):
        raise ConfigError(
            f"KMS provider {provider.name!r}: refusing to write through the abstract socket "
            f"{provider.endpoint}: abstract sockets have no permissions, so any local process could hold "
            "the name and receive the plaintext DEK seed; point the provider at a path socket with "
            f"--kms-endpoint {provider.name}=unix:///PATH"
        )
