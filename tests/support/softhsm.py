"""SoftHSM2 for tests: a token directory in a temp dir, tokens made with ``softhsm2-util``.

SoftHSM2 reads ``SOFTHSM2_CONF`` once, when a process first initialises the module, and a running
process does not see tokens created after that. So one ``SoftHsm`` serves a whole pytest session: it
writes its ``softhsm2.conf``, exports ``SOFTHSM2_CONF`` and creates every token the tests use before
any test loads the module. Tests isolate themselves by key label, not by token.

Helpers that act "as another process" (rotate, delete a key) run a child Python with the same
environment, exactly as ``kubeshield keys rotate`` on the same host would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = [
    "INSTALL_HINT",
    "SOFTHSM_MODULE",
    "SoftHsm",
    "Token",
    "run_python",
    "start_softhsm",
    "unique_label",
]

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
INSTALL_HINT = "apt-get install -y softhsm2   (or: bash scripts/install-system-deps; `make test` runs it)"


@dataclass(frozen=True)
class Token:
    label: str
    pin: bytes
    so_pin: bytes


@dataclass
class SoftHsm:
    root: Path
    conf: Path
    module: str = SOFTHSM_MODULE
    tokens: dict[str, Token] = field(default_factory=dict)

    def init_token(self, label: str, *, pin: bytes, so_pin: bytes = b"so-pin-1234") -> Token:
        subprocess.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                so_pin.decode(),
                "--pin",
                pin.decode(),
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "SOFTHSM2_CONF": str(self.conf)},
            timeout=30,
        )
        token = Token(label=label, pin=pin, so_pin=so_pin)
        self.tokens[label] = token
        return token


def start_softhsm(root: Path, token_labels: list[str]) -> SoftHsm:
    """Write the config under ``root``, export SOFTHSM2_CONF and create the tokens. Fails (never skips)
    with the install line when SoftHSM2 is missing."""
    if not Path(SOFTHSM_MODULE).is_file() or shutil.which("softhsm2-util") is None:
        pytest.fail(f"SoftHSM2 is not installed (needed by the PKCS#11 tests): {INSTALL_HINT}", pytrace=False)
    tokendir = root / "tokens"
    tokendir.mkdir(parents=True, mode=0o700)
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokendir}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    hsm = SoftHsm(root=root, conf=conf)
    for i, label in enumerate(token_labels):
        hsm.init_token(label, pin=f"user-pin-{i}".encode())
    return hsm


def unique_label(prefix: str = "kek") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def run_python(code: str, *, timeout: float = 60) -> str:
    """Run ``code`` in a child interpreter with our environment (SOFTHSM2_CONF included); return stdout."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )
    if proc.returncode != 0:
        raise AssertionError(f"child process failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.stdout
