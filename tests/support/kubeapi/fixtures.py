"""pytest fixtures for the Kubernetes API stand-in; import them into a conftest.py:

    from tests.support.kubeapi.fixtures import kube, kube_api, kube_ns, kubectl  # noqa: F401

``kube_api`` is one stand-in for the session; ``kube_ns`` a fresh namespace per test (deleted after),
so tests sharing the server do not see each other's objects; ``kube`` an admin ``KubeClient``;
``kubectl`` runs the real kubectl from ``.venv/tools`` (``make tools`` puts it there).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubeshield.kube import KubeClient
from tests.support.kubeapi._server import KubeAPI
from tests.support.kubeapi._status import ApiStatus

__all__ = ["Kubectl", "kube", "kube_api", "kube_ns", "kubectl", "kubectl_binary"]

_TOOLS = Path(sys.prefix) / "tools"


def kubectl_binary() -> Path:
    """The real kubectl v1.35 of the project's tools folder; a missing one fails loudly."""
    path = Path(os.environ.get("KUBESHIELD_KUBECTL", _TOOLS / "kubectl"))
    if not path.is_file():
        pytest.fail(
            f"kubectl not found at {path}: run `make tools` (python -m tests.support.helm .venv/tools)"
        )
    return path


@dataclass
class Kubectl:
    binary: Path
    home: Path

    def run(
        self,
        *args: str,
        kubeconfig: Path,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "KUBECONFIG": str(kubeconfig),
            "KUBECACHEDIR": str(self.home / f"cache-{uuid.uuid4().hex[:8]}"),  # no stale discovery
            **(env or {}),  # e.g. KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false for the SPDY fallback
        }
        done = subprocess.run(
            [str(self.binary), *args], env=env, input=input, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
        return done

    def popen(
        self,
        *args: str,
        kubeconfig: Path,
        env: Mapping[str, str] | None = None,
        stdin: int | None = None,
    ) -> subprocess.Popen[str]:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.home),
            "KUBECONFIG": str(kubeconfig),
            "KUBECACHEDIR": str(self.home / f"cache-{uuid.uuid4().hex[:8]}"),
            **(env or {}),
        }
        return subprocess.Popen(
            [str(self.binary), *args],
            env=env,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


@pytest.fixture(scope="session")
def kube_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPI]:
    api = KubeAPI(tmp_path_factory.mktemp("kubeapi")).start()
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture
def kube_ns(kube_api: KubeAPI) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    rtype = kube_api.store.type_of("", "v1", "namespaces")
    kube_api.store.create(rtype, None, {"metadata": {"name": name}})
    try:
        yield name
    finally:
        try:
            kube_api.store.delete(rtype, None, name)
        except ApiStatus:
            pass


@pytest.fixture
def kube(kube_api: KubeAPI, kube_ns: str, tmp_path: Path) -> Iterator[KubeClient]:
    config = kube_api.kubeconfig(tmp_path / "admin.kubeconfig", credential=kube_api.admin, namespace=kube_ns)
    with KubeClient.from_kubeconfig(config) as client:
        yield client


@pytest.fixture(scope="session")
def kubectl(tmp_path_factory: pytest.TempPathFactory) -> Kubectl:
    return Kubectl(kubectl_binary(), tmp_path_factory.mktemp("kubectl-home"))
