"""``kubeshield node release-server``: the release service (:mod:`.release`) over HTTPS.

Routes: ``POST /v1/release``, ``POST /v1/seal``, ``GET /v1/public-key`` (see :mod:`.release`), and
``GET /healthz`` (200 while serving), ``GET /readyz`` (200 when the sealing keys are loaded), ``GET
/metrics`` (Prometheus). With ``node.release.tls.clientCA`` every client must present a certificate
signed by that CA (mutual TLS) in addition to its token.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST

from kubeshield.node._http import JsonServer, Reply, Request, RequestError, server_tls_context
from kubeshield.node.release import HttpError, ReleaseService
from kubeshield.node.settings import ReleaseSettings

__all__ = ["ReleaseServer"]

log = logging.getLogger("kubeshield.node.release")


class ReleaseServer:
    """The HTTP(S) front of a :class:`ReleaseService`; ``refresh_every`` seconds the key file is re-read."""

    def __init__(
        self,
        service: ReleaseService,
        settings: ReleaseSettings,
        *,
        listen: str | None = None,
        refresh_every: float = 30.0,
    ) -> None:
        self.service = service
        tls = None
        if settings.tls is not None:
            tls = server_tls_context(settings.tls.cert, settings.tls.key, settings.tls.client_ca)
        routes: dict[tuple[str, str], Callable[[Request], Reply]] = {
            ("POST", "/v1/release"): self._release,
            ("POST", "/v1/seal"): self._seal,
            ("GET", "/v1/public-key"): lambda r: Reply(200, service.public_key()),
            ("GET", "/healthz"): lambda r: Reply(200, body=b"ok\n", content_type="text/plain"),
            ("GET", "/readyz"): self._ready,
            ("GET", "/metrics"): lambda r: Reply(
                200, body=service.metrics.exposition(), content_type=CONTENT_TYPE_LATEST
            ),
        }
        self._http = JsonServer(listen or settings.listen, routes, tls=tls)
        self._refresh_every = refresh_every
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self._http.url

    def _call(self, fn: Callable[..., dict[str, object]], request: Request) -> Reply:
        try:
            return Reply(200, fn(token=request.bearer(), body=request.json(), client=request.client))
        except HttpError as exc:
            raise RequestError(exc.status, str(exc), retry_after=exc.retry_after) from None

    def _release(self, request: Request) -> Reply:
        return self._call(self.service.release, request)

    def _seal(self, request: Request) -> Reply:
        return self._call(self.service.seal, request)

    def _ready(self, request: Request) -> Reply:
        try:
            self.service.public_key()
        except Exception:
            return Reply(503, body=b"sealing keys not loaded\n", content_type="text/plain")
        return Reply(200, body=b"ok\n", content_type="text/plain")

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self._refresh_every):
            try:
                self.service.refresh_keys()
            except Exception as exc:  # keep serving with the keys we have
                log.error("release: reloading the sealing keys failed: %s", type(exc).__name__)

    def start(self) -> ReleaseServer:
        self._http.start()
        self._refresher = threading.Thread(
            target=self._refresh_loop, name="kubeshield-node-keys", daemon=True
        )
        self._refresher.start()
        return self

    def wait(self) -> None:
        """Block until :meth:`shutdown`."""
        self._stop.wait()

    def serve_forever(self) -> None:
        self.start()
        self.wait()

    def shutdown(self) -> None:
        self._stop.set()
        self._http.shutdown()
