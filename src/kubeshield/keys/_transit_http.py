"""HTTP plumbing for the Transit backend: one client, one status table, one exception mapper.

Private to :mod:`kubeshield.keys.transit`. httpx is imported here and in the Transit modules only.

Every failure becomes a member of the kubeshield error tree. No message ever holds a response body, a
token, a request body or a URL query: only the operation name, the path template and the HTTP status.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

import httpx

from kubeshield.errors import (
    BackendAuthError,
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    InvalidCiphertext,
    InvalidRequest,
    KeyNotFound,
    KubeshieldError,
)

__all__ = ["TransitHTTP", "error_for_status"]

# The one table from HTTP status to error class (hvac's ``from_status`` idea, without the body).
# 400 depends on the operation: on decrypt it is the opaque InvalidCiphertext, elsewhere InvalidRequest.
_STATUS_ERRORS: Final[Mapping[int, type[KubeshieldError]]] = {
    400: InvalidRequest,
    401: BackendAuthError,
    403: BackendAuthError,
    404: KeyNotFound,
    412: BackendUnavailable,  # Vault/OpenBao: a standby has not caught up yet
    429: BackendUnavailable,  # rate limited
    500: BackendUnavailable,
    502: BackendUnavailable,
    503: BackendUnavailable,  # sealed, or in standby without request forwarding
    504: BackendTimeout,
}


def error_for_status(status: int, *, op: str, decrypt: bool = False) -> KubeshieldError:
    """The error for a non-2xx ``status`` answered to operation ``op``. Never includes the body."""
    if status == 400 and decrypt:
        return InvalidCiphertext()
    cls = _STATUS_ERRORS.get(status)
    if cls is None:
        cls = BackendUnavailable if status >= 500 else BackendError
    return cls(f"transit {op}: the key service answered HTTP {status}")


@contextmanager
def _map_transport_errors(op: str) -> Iterator[None]:
    try:
        yield
    except httpx.TimeoutException as exc:
        raise BackendTimeout(f"transit {op}: the key service did not answer in time") from exc
    except httpx.TransportError as exc:  # connect errors, resets, TLS failures, protocol errors
        raise BackendUnavailable(
            f"transit {op}: cannot reach the key service ({type(exc).__name__})"
        ) from exc


class TransitHTTP:
    """A small JSON-over-HTTP client for the Vault/OpenBao API (``/v1/...``)."""

    def __init__(
        self,
        *,
        address: str,
        ca_file: str | None,
        timeout: float,
        namespace: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not address.startswith(("http://", "https://")):
            raise ConfigError("transit address must start with http:// or https://")
        if timeout <= 0:
            raise ConfigError("transit timeout must be positive")
        self._timeout = timeout
        verify: ssl.SSLContext | bool = True
        if ca_file is not None:
            try:
                verify = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"transit caFile cannot be loaded: {ca_file}") from exc
        headers = {"X-Vault-Request": "true"}
        if namespace:
            headers["X-Vault-Namespace"] = namespace
        self._client = httpx.Client(
            base_url=address.rstrip("/") + "/v1/",
            verify=verify,
            timeout=httpx.Timeout(timeout),
            headers=headers,
            transport=transport,
            follow_redirects=False,
            trust_env=False,
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        op: str,
        token: str | None,
        body: Mapping[str, Any] | None = None,
        decrypt: bool = False,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """Send one request; return the decoded JSON object (``{}`` for 204). Raise mapped errors.

        Each network phase (connect, write, read, pool) waits at most ``timeout`` seconds, and at most
        until ``deadline`` (a ``time.monotonic()`` instant) when one is given: a call that has used up its
        budget is ``BackendTimeout`` without being sent.
        """
        headers = {"X-Vault-Token": token} if token is not None else {}
        limit = self._timeout
        if deadline is not None:
            limit = min(limit, deadline - time.monotonic())
            if limit <= 0:
                raise BackendTimeout(f"transit {op}: no time left in this call's budget")
        with _map_transport_errors(op):
            response = self._client.request(
                method, path, json=body, headers=headers, timeout=httpx.Timeout(limit)
            )
        if response.status_code == 204:
            return {}
        if not 200 <= response.status_code < 300:
            raise error_for_status(response.status_code, op=op, decrypt=decrypt)
        try:
            decoded = response.json()
        except ValueError as exc:
            raise BackendError(f"transit {op}: the key service sent a reply that is not JSON") from exc
        if not isinstance(decoded, dict):
            raise BackendError(f"transit {op}: the key service sent an unexpected reply")
        return decoded

    def close(self) -> None:
        self._client.close()
