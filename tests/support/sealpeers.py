"""Independent sealed-secrets implementations, run for real as interop peers.

* npm ``@socialgouv/aes-gcm-rsa-oaep`` 1.1.4 and ``@linode/kubeseal-encrypt`` 1.0.1, installed on first
  use into ``.venv/npm`` (never committed) with the machine's npm, run with the machine's node.
* PyPI ``aes-gcm-rsa-oaep`` 0.1.0 pins ``cryptography<38``, which cannot share our venv, so it gets a
  venv of its own at ``.venv/peers/aes-gcm-rsa-oaep`` with exactly the dependencies it declares.
* PyPI ``kubesealpy`` 1.0.1 is a ``dev`` dependency and is imported directly by the tests.

A missing node/npm, or a registry that cannot be reached, fails the test with the install line; nothing
is skipped. Each peer call gets JSON on stdin and prints JSON on stdout.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "AES_GCM_VERSION",
    "NPM_PACKAGES",
    "aes_gcm_python",
    "ensure_aes_gcm_venv",
    "ensure_npm_peers",
    "run_node",
]

ROOT = Path(__file__).resolve().parents[2]
NPM_DIR = ROOT / ".venv" / "npm"
PEERS_DIR = ROOT / ".venv" / "peers"
NPM_PACKAGES = {"@socialgouv/aes-gcm-rsa-oaep": "1.1.4", "@linode/kubeseal-encrypt": "1.0.1"}
AES_GCM_VERSION = "0.1.0"
NODE_HINT = "apt-get install -y nodejs npm   (node >= 20 is needed by @linode/kubeseal-encrypt)"


def _installed_version(package: str) -> str | None:
    manifest = NPM_DIR / "node_modules" / package / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def ensure_npm_peers() -> Path:
    """Install the npm peers into ``.venv/npm`` unless the right versions are there; return the dir."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail(
            f"node/npm not found (needed for the npm sealed-secrets peers): {NODE_HINT}", pytrace=False
        )
    missing = [f"{p}@{v}" for p, v in NPM_PACKAGES.items() if _installed_version(p) != v]
    if missing:
        NPM_DIR.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["npm", "install", "--prefix", str(NPM_DIR), "--no-audit", "--no-fund", "--omit=dev", *missing],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            pytest.fail(f"npm install {' '.join(missing)} failed:\n{proc.stderr[-2000:]}", pytrace=False)
    return NPM_DIR


def run_node(script: str, payload: Any, *, module: bool = False) -> Any:
    """Run ``script`` with node in the npm dir (so ``require``/``import`` find the peers)."""
    ensure_npm_peers()
    suffix = ".mjs" if module else ".cjs"
    path = NPM_DIR / f"peer-{hashlib.sha256(script.encode()).hexdigest()[:16]}{suffix}"
    path.write_text(textwrap.dedent(script))
    proc = subprocess.run(
        ["node", str(path)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=NPM_DIR,
    )
    if proc.returncode != 0:
        raise AssertionError(f"node peer failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def ensure_aes_gcm_venv() -> Path:
    """A venv holding PyPI aes-gcm-rsa-oaep 0.1.0 and the cryptography it pins; returns its python."""
    venv = PEERS_DIR / "aes-gcm-rsa-oaep"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if stamp.is_file() and python.is_file():
        return python
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    proc = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"aes-gcm-rsa-oaep=={AES_GCM_VERSION}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"pip install aes-gcm-rsa-oaep=={AES_GCM_VERSION} failed:\n{proc.stderr[-2000:]}", pytrace=False
        )
    stamp.touch()
    return python


def aes_gcm_python(code: str, payload: Any) -> Any:
    """Run ``code`` in the aes-gcm-rsa-oaep venv with ``payload`` as JSON on stdin; return its JSON."""
    python = ensure_aes_gcm_venv()
    proc = subprocess.run(
        [str(python), "-c", textwrap.dedent(code)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
    )
    if proc.returncode != 0:
        raise AssertionError(f"aes-gcm-rsa-oaep peer failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)
