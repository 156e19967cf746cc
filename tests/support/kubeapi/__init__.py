"""A stateful Kubernetes API stand-in for tests (see ``_server.KubeAPI``) and its pytest fixtures
(``tests.support.kubeapi.fixtures``)."""

from tests.support.kubeapi._auth import Attributes, Decision, User
from tests.support.kubeapi._pki import Credential
from tests.support.kubeapi._server import KubeAPI, RequestRecord, SubresourceContext
from tests.support.kubeapi._store import Store

__all__ = [
    "Attributes",
    "Credential",
    "Decision",
    "KubeAPI",
    "RequestRecord",
    "Store",
    "SubresourceContext",
    "User",
]
