"""The Kubernetes API stand-in, an admin client in a fresh namespace, and the real kubectl."""

from tests.support.kubeapi.fixtures import kube, kube_api, kube_ns, kubectl  # noqa: F401
