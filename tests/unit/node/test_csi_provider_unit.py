"""The provider's Mount without a socket: failures of what it depends on become the right gRPC codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kubeshield.errors import KubeUnavailable
from kubeshield.keys.testing import InMemoryBackend
from kubeshield.node.csi.provider import CsiProvider, LocalSealedSource, MountError
from kubeshield.node.identity import Binding, Identity
from kubeshield.node.review import PodVerifier
from kubeshield.node.sealing_keys import SealingKeyFile


class Down:
    def token_review(self, token, audiences=()):
        raise KubeUnavailable("the API server cannot be reached", code=0)


def test_an_unreachable_api_server_is_unavailable_not_internal(tmp_path: Path) -> None:
    """Regression: a KubeError from the TokenReview escaped Mount and became INTERNAL."""
    backend = InMemoryBackend()
    SealingKeyFile(tmp_path / "k.json").create(backend)
    keys = SealingKeyFile(tmp_path / "k.json").open(backend)
    verifier = PodVerifier(reviewer=Down(), pods=None, audience="kubeshield")
    provider = CsiProvider(sealed=LocalSealedSource(keys, verifier), stores={}, hmac_key=bytes(32))
    sealed = keys.seal(b"v", binding=Binding(Identity("ns-a", "app")))
    attributes = json.dumps(
        {
            "objects": yaml.safe_dump([{"objectName": "a", "sealed": sealed}]),
            "csi.storage.k8s.io/serviceAccount.tokens": json.dumps({"kubeshield": {"token": "t"}}),
        }
    )
    with pytest.raises(MountError) as err:
        provider.mount(attributes=attributes, secrets="{}", permission="420")
    assert err.value.code == "UNAVAILABLE" and "KubeUnavailable" in str(err.value)
    assert (
        'kubeshield_node_csi_mounts_total{outcome="unavailable"} 1.0'
        in provider.metrics.exposition().decode()
    )
