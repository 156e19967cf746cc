"""``kubeshield node injector``: the mutating admission webhook (AdmissionReview v1, JSONPatch) over HTTPS.

``POST /mutate`` with an ``admission.k8s.io/v1`` ``AdmissionReview`` (formats.md §5.3). The answer has the
same ``apiVersion``/``kind`` and the request's ``uid``:

* a Pod CREATE to inject: ``allowed: true`` with ``patchType: JSONPatch`` and ``patch`` = base64 of the
  JSON array (:func:`~kubeshield.node.injector.mutate.mutate`), plus ``warnings`` when there are some;
* a pod that is not annotated, already injected, in ``kube-system``/``kube-public``/the injector's own
  namespace, or an operation other than CREATE: ``allowed: true`` without a patch;
* a pod whose annotations cannot work (:class:`Refusal`), or a request for a kind other than Pod:
  ``allowed: false`` with ``status: {code: 400 or 403, message: <reason>}``;
* a body that is not an ``admission.k8s.io/v1`` AdmissionReview: HTTP 400 with the reason (the API server
  treats it as a webhook failure and applies ``failurePolicy``).

Also ``GET /healthz`` and ``GET /metrics``. Reasons never hold the pod's values (it has none: only
sealed texts, which are not secret).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from kubeshield.errors import InvalidRequest
from kubeshield.node._http import JsonServer, Reply, Request, RequestError, server_tls_context
from kubeshield.node.injector.mutate import InjectorConfig, Refusal, mutate, skip_reason
from kubeshield.node.metrics import NodeMetrics
from kubeshield.node.settings import ServerTLS

__all__ = ["InjectorServer", "review"]

log = logging.getLogger("kubeshield.node.injector")
API_VERSION = "admission.k8s.io/v1"


def _answer(uid: str, response: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": {"uid": uid, **response}}


def review(
    doc: Mapping[str, Any], *, config: InjectorConfig, metrics: NodeMetrics | None = None
) -> dict[str, Any]:
    """Answer one AdmissionReview. Raises ``InvalidRequest`` for a body that is not a v1 AdmissionReview."""
    metrics = metrics or NodeMetrics()
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != "AdmissionReview":
        metrics.injections.labels(outcome="bad-request").inc()
        raise InvalidRequest(
            f"expected apiVersion {API_VERSION} kind AdmissionReview, got "
            f"{str(doc.get('apiVersion'))[:60]!r} {str(doc.get('kind'))[:60]!r} "
            "(set admissionReviewVersions: [v1])"
        )
    request = doc.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str) or not request["uid"]:
        metrics.injections.labels(outcome="bad-request").inc()
        raise InvalidRequest("request.uid: required")
    uid = request["uid"]
    kind = request.get("kind") or {}
    if not isinstance(kind, dict) or (kind.get("group"), kind.get("version"), kind.get("kind")) != (
        "",
        "v1",
        "Pod",
    ):
        metrics.injections.labels(outcome="refused").inc()
        what = (
            "/".join(str(kind.get(k, "")) for k in ("group", "version", "kind"))
            if isinstance(kind, dict)
            else "?"
        )
        return _answer(
            uid,
            {
                "allowed": False,
                "status": {"code": 400, "message": f"this webhook mutates core/v1 Pods only, not {what}"},
            },
        )
    if request.get("operation") != "CREATE" or request.get("subResource"):
        metrics.injections.labels(outcome="skipped").inc()
        return _answer(uid, {"allowed": True})
    pod = request.get("object")
    namespace = request.get("namespace")
    if not isinstance(pod, dict) or not isinstance(namespace, str) or not namespace:
        metrics.injections.labels(outcome="refused").inc()
        return _answer(
            uid,
            {
                "allowed": False,
                "status": {"code": 400, "message": "request.object and request.namespace: required"},
            },
        )
    why = skip_reason(pod, namespace=namespace, config=config)
    name = (pod.get("metadata") or {}).get("name") or (pod.get("metadata") or {}).get(
        "generateName", ""
    ) + "*"
    if why is not None:
        metrics.injections.labels(outcome="skipped").inc()
        return _answer(uid, {"allowed": True})
    try:
        result = mutate(pod, namespace=namespace, config=config)
    except (Refusal, InvalidRequest) as exc:
        metrics.injections.labels(outcome="refused").inc()
        log.info("injector: refused pod %s/%s: %s", namespace, name, exc)
        return _answer(
            uid, {"allowed": False, "status": {"code": 403, "message": f"kubeshield injector: {exc}"}}
        )
    metrics.injections.labels(outcome="injected").inc()
    log.info("injector: injected pod %s/%s (%d operations)", namespace, name, len(result.patch))
    response: dict[str, Any] = {
        "allowed": True,
        "patchType": "JSONPatch",
        "patch": base64.b64encode(json.dumps(result.patch).encode()).decode("ascii"),
    }
    if result.warnings:
        response["warnings"] = result.warnings
    return _answer(uid, response)


class InjectorServer:
    def __init__(
        self,
        config: InjectorConfig,
        *,
        listen: str,
        tls: ServerTLS | None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or NodeMetrics()
        ctx = server_tls_context(tls.cert, tls.key, tls.client_ca) if tls is not None else None
        self._http = JsonServer(
            listen,
            {
                ("POST", "/mutate"): self._mutate,
                ("GET", "/healthz"): lambda r: Reply(200, body=b"ok\n", content_type="text/plain"),
                ("GET", "/metrics"): lambda r: Reply(
                    200, body=self.metrics.exposition(), content_type=CONTENT_TYPE_LATEST
                ),
            },
            tls=ctx,
            max_body=8 << 20,
        )

    @property
    def url(self) -> str:
        return self._http.url

    def _mutate(self, request: Request) -> Reply:
        try:
            return Reply(200, review(request.json(), config=self.config, metrics=self.metrics))
        except InvalidRequest as exc:
            raise RequestError(400, str(exc)) from None

    def start(self) -> InjectorServer:
        self._http.start()
        return self

    def serve_forever(self) -> None:
        self._http.serve_forever()

    def shutdown(self) -> None:
        self._http.shutdown()
