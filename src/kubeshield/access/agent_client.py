"""The Python client of the access agent (``kubeshield access agent``), used by the CLI, ``login`` and tests.

    client = AgentClient()                       # $KUBESHIELD_AGENT_SOCKET, else the default path
    client.add(credential)
    info = client.start_proxy("prod")           # ProxyInfo(url, ca_pem, expires_at)
    status = client.exec_credential("prod", proxy=True)

Each call opens one connection, sends one request (see ``agent_protocol``), reads the answer and
closes, under ``timeout`` seconds. Errors: :class:`AgentUnavailable` when no agent answers on the
socket or it refuses this process (wrong uid, executable not on its allow-list), :class:`AgentError`
when the agent answered with an error (``kind`` is the protocol's error type: ``not-found``,
``expired``, ``locked``, ``invalid``, ``protocol``...). Messages never hold a credential.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kubeshield.access.agent_protocol import (
    PROTOCOL_VERSION,
    ProtocolError,
    b64,
    credential_to_wire,
    endpoint_to_wire,
    parse_time,
    recv_message,
    send_message,
    unb64,
)
from kubeshield.access.credential import ClusterCredential, ClusterEndpoint
from kubeshield.errors import KubeshieldError

__all__ = [
    "SOCKET_ENV",
    "AgentClient",
    "AgentError",
    "AgentUnavailable",
    "ProxyInfo",
    "default_socket_path",
]

SOCKET_ENV = "KUBESHIELD_AGENT_SOCKET"


class AgentUnavailable(KubeshieldError):
    """No agent answers on the socket, or the agent refused this process. The message says which."""


class AgentError(KubeshieldError):
    """The agent answered with an error. ``kind`` is its type (see ``agent_protocol``)."""

    def __init__(self, message: str, *, kind: str = "internal") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """A running proxy session: its https URL, the CA that signed its certificate, when it ends."""

    url: str
    ca_pem: bytes
    expires_at: datetime | None


def default_socket_path(environ: Mapping[str, str] | None = None, *, uid: int | None = None) -> Path:
    """``$KUBESHIELD_AGENT_SOCKET``, else ``$XDG_RUNTIME_DIR/kubeshield/agent.sock``, else
    ``/run/user/UID/kubeshield/agent.sock``."""
    env = os.environ if environ is None else environ
    if env.get(SOCKET_ENV):
        return Path(env[SOCKET_ENV])
    runtime = env.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid() if uid is None else uid}"
    return Path(runtime) / "kubeshield" / "agent.sock"


class AgentClient:
    """See the module docstring. Keyword-only options; one connection per call."""

    def __init__(self, socket_path: Path | None = None, *, timeout: float = 10.0) -> None:
        self.socket_path = Path(socket_path) if socket_path is not None else default_socket_path()
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"AgentClient({str(self.socket_path)!r})"

    # --- transport ---------------------------------------------------------------------------------

    def call(self, op: str, **arguments: Any) -> Any:
        """Send one request and return its ``result``; raise the error the agent answered with."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        where = str(self.socket_path)
        try:
            try:
                sock.connect(where)
            except FileNotFoundError:
                raise AgentUnavailable(
                    f"no agent socket at {where}: start one with `kubeshield access agent`"
                ) from None
            except ConnectionRefusedError:
                raise AgentUnavailable(
                    f"no agent listens on {where} (a stale socket?): start `kubeshield access agent`"
                ) from None
            except PermissionError:
                raise AgentUnavailable(f"cannot reach the agent socket {where}: permission denied") from None
            except TimeoutError:
                raise AgentUnavailable(
                    f"the agent at {where} did not accept the connection in time"
                ) from None
            try:
                try:
                    send_message(sock, {"v": PROTOCOL_VERSION, "op": op, **arguments})
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the agent refused us at connect and closed: its answer is there to read
                answer = recv_message(sock)
            except TimeoutError:
                raise AgentUnavailable(f"the agent at {where} did not answer {op!r} in time") from None
            except (ConnectionError, BrokenPipeError):
                raise AgentUnavailable(f"the agent at {where} closed the connection") from None
            except ProtocolError as exc:
                raise AgentUnavailable(f"the agent at {where} sent a malformed answer: {exc}") from None
        finally:
            sock.close()
        if answer is None:
            raise AgentUnavailable(f"the agent at {where} closed the connection without an answer")
        if answer.get("ok") is True:
            return answer.get("result")
        error = answer.get("error")
        kind = str(error.get("type", "internal")) if isinstance(error, dict) else "internal"
        message = (
            str(error.get("message", "the agent failed")) if isinstance(error, dict) else "the agent failed"
        )
        if kind == "refused":
            raise AgentUnavailable(f"the agent at {where} refused this process: {message}")
        raise AgentError(message, kind=kind)

    # --- the API ---------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        result = self.call("status")
        return dict(result) if isinstance(result, dict) else {}

    def add(self, credential: ClusterCredential) -> None:
        self.call("add", credential=credential_to_wire(credential))

    def contexts(self) -> list[dict[str, Any]]:
        """One entry per context: context, server, kind, expires, subject, proxy (its URL or None)."""
        result = self.call("contexts")
        return [dict(r) for r in result] if isinstance(result, list) else []

    def remove(self, context: str) -> None:
        self.call("remove", context=context)

    def lock(self) -> None:
        self.call("lock")

    def unlock(self, *, passphrase: bytes | None = None) -> list[str]:
        """Ask the agent to load its sealed store (with ``passphrase``, or its configured key backend)."""
        args: dict[str, Any] = {} if passphrase is None else {"passphrase": b64(passphrase)}
        result = self.call("unlock", **args)
        loaded = result.get("loaded", []) if isinstance(result, dict) else []
        return [str(c) for c in loaded]

    def new_key(self) -> tuple[str, bytes]:
        """A fresh key pair made in the agent: (handle, CSR PEM). The private key stays in the agent."""
        result = self.call("new_key")
        if not isinstance(result, dict) or not isinstance(result.get("handle"), str):
            raise AgentError("the agent's new_key answer is malformed", kind="protocol")
        return result["handle"], unb64(result.get("csr"), field="csr")

    def install_certificate(
        self,
        *,
        handle: str,
        cert_pem: bytes,
        clusters: Sequence[ClusterEndpoint],
        subject: str | None = None,
    ) -> None:
        """Pair the certificate the relay signed with the key ``handle`` names: one credential per cluster."""
        self.call(
            "install_certificate",
            handle=handle,
            cert=b64(cert_pem),
            clusters=[endpoint_to_wire(c) for c in clusters],
            subject=subject,
        )

    def exec_credential(self, context: str, *, proxy: bool, listen: str | None = None) -> dict[str, Any]:
        """The ExecCredential ``status`` for ``context``: the proxy session's bearer (``proxy``; a stopped
        proxy is started again on ``listen``) or the credential itself."""
        args: dict[str, Any] = {"context": context, "proxy": proxy}
        if listen is not None:
            args["listen"] = listen
        result = self.call("exec_credential", **args)
        return dict(result) if isinstance(result, dict) else {}

    def start_proxy(self, context: str, *, listen: str = "127.0.0.1:0") -> ProxyInfo:
        """Start (or find the running) proxy session for ``context``."""
        result = self.call("start_proxy", context=context, listen=listen)
        if not isinstance(result, dict) or not isinstance(result.get("url"), str):
            raise AgentError("the agent's start_proxy answer is malformed", kind="protocol")
        return ProxyInfo(
            url=result["url"],
            ca_pem=unb64(result.get("ca"), field="ca"),
            expires_at=parse_time(result.get("expires"), field="expires"),
        )

    def stop_proxy(self, context: str) -> None:
        self.call("stop_proxy", context=context)
