"""Resource types: paths, kubectl's plural guess, apiVersion parsing."""

from __future__ import annotations

import pytest

from kubeshield.kube import Resource, resources
from kubeshield.kube.resources import guess_plural, split_api_version


@pytest.mark.parametrize(
    ("kind", "plural"),
    [
        ("SealedSecret", "sealedsecrets"),
        ("SecretProviderClass", "secretproviderclasses"),
        ("Policy", "policies"),
        ("Ingress", "ingresses"),
        ("Endpoints", "endpoints"),
        ("Gateway", "gatewaies"),
        ("Pod", "pods"),
    ],
)
def test_plural_guess_is_kubectls(kind, plural):
    assert guess_plural(kind) == plural  # "gatewaies": kubectl's guess is just as naive


def test_paths():
    assert resources.SECRETS.object_path("a b", "ns") == "/api/v1/namespaces/ns/secrets/a%20b"
    assert resources.NODES.object_path("n1", None, "status") == "/api/v1/nodes/n1/status"
    assert resources.DEPLOYMENTS.collection_path(None) == "/apis/apps/v1/deployments"
    sealed = Resource.custom("bitnami.com/v1alpha1", "SealedSecret")
    assert sealed == resources.SEALED_SECRETS
    assert sealed.collection_path("team") == "/apis/bitnami.com/v1alpha1/namespaces/team/sealedsecrets"
    with pytest.raises(ValueError, match="namespace"):
        resources.SECRETS.object_path("x", None)
    with pytest.raises(ValueError):
        resources.SECRETS.object_path("", "ns")


def test_api_versions():
    assert split_api_version("v1") == ("", "v1")
    assert split_api_version("apps/v1") == ("apps", "v1")
    for bad in ("", "a/b/c", "apps/"):
        with pytest.raises(ValueError):
            split_api_version(bad)


def test_builtin_table_is_keyed_by_api_version_and_kind():
    assert resources.BUILTIN[("v1", "Secret")] is resources.SECRETS
    assert resources.BUILTIN[("rbac.authorization.k8s.io/v1", "ClusterRole")].namespaced is False
