"""docs/backends.md's quick starts, run as written, from an empty token or key service to a serving plugin.

Each ``<!-- quickstart: NAME -->`` block is run by bash (``set -euo pipefail``) with only these
substitutions, so the docs and the commands cannot drift apart:

* ``/etc/kubeshield``, ``/var/run/kubeshield``, ``/var/lib/kubeshield`` -> directories under tmp_path;
* the health address ``127.0.0.1:8081`` -> a free port;
* the key service's address -> the real server started here (OpenBao with TLS, moto);
* the last line, ``kubeshield kms serve ...``, is ``exec``-ed so the plugin keeps the shell's PID (and
  the environment the block exported) and is stopped by it.

What the prose asks for before the block is provided as the prose says: ``BAO_TOKEN`` (an operator's
token) and OpenBao's CA at ``/etc/kubeshield/bao-ca.crt``; AWS credentials in the environment. The
plugin is then driven by the apiserver-emulating client: prime, store, restart, read.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from kubeshield.kms.client import KMSv2Client
from tests.support.apiserver import EmulatedAPIServer
from tests.support.kms_process import clean_env, wait_until_healthy
from tests.support.moto import MotoServer, dummy_aws_env
from tests.support.openbao import bao_binary, free_port, start_dev_server
from tests.support.softhsm import INSTALL_HINT, SOFTHSM_MODULE

DOC = Path(__file__).resolve().parents[3] / "docs" / "backends.md"


def quickstart(name: str) -> str:
    """The shell block that follows ``<!-- quickstart: name -->`` in docs/backends.md."""
    text = DOC.read_text()
    match = re.search(rf"<!-- quickstart: {re.escape(name)} -->\n```sh\n(.*?)\n```\n", text, re.S)
    assert match is not None, f"docs/backends.md has no quickstart block {name!r}"
    return match.group(1)


def localise(script: str, tmp: Path, extra: Mapping[str, str] = {}) -> tuple[str, int]:
    port = free_port()
    replacements = {
        "/etc/kubeshield": str(tmp / "etc" / "kubeshield"),
        "/var/run/kubeshield": str(tmp / "run" / "kubeshield"),
        "/var/lib/kubeshield": str(tmp / "lib" / "kubeshield"),
        "127.0.0.1:8081": f"127.0.0.1:{port}",
        **extra,
    }
    for old, new in replacements.items():
        optional = old == "/var/lib/kubeshield"  # only the PKCS#11 block keeps state there
        assert optional or old in script, f"the quick start no longer mentions {old}"
        script = script.replace(old, new)
    lines = script.rstrip().splitlines()
    assert lines[-1].startswith("kubeshield kms serve --config "), "the quick start must end with kms serve"
    lines[-1] = "exec " + lines[-1]
    return "\n".join(lines) + "\n", port


@pytest.fixture
def run_quickstart(tmp_path: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def run(script: str, env: Mapping[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / "quickstart.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["bash", "-c", "set -euo pipefail\n" + script],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
            )
        procs.append(proc)
        return proc, log

    yield run
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(30)


def _serve_and_drive(run: object, script: str, env: Mapping[str, str], tmp: Path) -> str:
    """Run the block; wait for the plugin; drive it like kube-apiserver; stop it; return the output."""
    proc, log = run(script, env)  # type: ignore[operator]
    socket = tmp / "run" / "kubeshield" / "kms.sock"
    deadline = time.monotonic() + 180  # generous: keys init and the plugin's start on a loaded machine
    while not socket.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert socket.exists(), f"the plugin did not start:\n{log.read_text()[-4000:]}"
    wait_until_healthy(socket)
    with KMSv2Client(str(socket), timeout=5) as client:
        api = EmulatedAPIServer(client)
        api.probe()
        api.store("/registry/secrets/default/db", b"password=from-the-quick-start")
        api.restart()
        api.probe()
        assert api.read("/registry/secrets/default/db") == (b"password=from-the-quick-start", False)
    os.kill(proc.pid, signal.SIGTERM)  # the plugin (exec'd by the shell)
    assert proc.wait(30) == 0, log.read_text()[-4000:]
    return log.read_text()


def test_pkcs11_quickstart(tmp_path: Path, run_quickstart: object) -> None:
    if not Path(SOFTHSM_MODULE).is_file() or shutil.which("softhsm2-util") is None:
        pytest.fail(f"SoftHSM2 is not installed: {INSTALL_HINT}", pytrace=False)
    script, _port = localise(quickstart("pkcs11"), tmp_path)
    out = _serve_and_drive(run_quickstart, script, clean_env({"SOFTHSM2_CONF": None}), tmp_path)
    assert "Created KEK: PKCS#11 token 'kubeshield'" in out and "key label 'kubeshield-kek'" in out
    assert "ok  encrypt and decrypt in the token" in out
    pin = (tmp_path / "etc" / "kubeshield" / "pin").read_text().strip()
    assert pin not in out
    assert (tmp_path / "etc" / "kubeshield" / "pin").stat().st_mode & 0o077 == 0  # umask 077 in the block


def test_transit_quickstart(tmp_path: Path, run_quickstart: object) -> None:
    server = start_dev_server(tmp_path / "bao", tls=True)
    try:
        assert server.ca_file is not None
        etc = tmp_path / "etc" / "kubeshield"
        etc.mkdir(parents=True)
        shutil.copy(server.ca_file, etc / "bao-ca.crt")  # "OpenBao's CA certificate at ..." (prose)
        script, _port = localise(quickstart("transit"), tmp_path, {"https://openbao:8200": server.address})
        env = clean_env(
            {
                "BAO_TOKEN": server.root_token,  # "an operator's token" (prose)
                "HOME": str(tmp_path),
                "PATH": f"{Path(bao_binary()).parent}{os.pathsep}{clean_env()['PATH']}",
                "VAULT_TOKEN": None,
                "BAO_ADDR": None,
            }
        )
        out = _serve_and_drive(run_quickstart, script, env, tmp_path)
        assert "Checked existing KEK: transit key transit/kubeshield" in out
        assert "ok  encrypt and decrypt with this token" in out and "ok  rotate" in out
        plugin_token = (etc / "bao-token").read_text().strip()
        assert plugin_token and plugin_token != server.root_token
        assert plugin_token not in out and server.root_token not in out
    finally:
        server.stop()


def test_awskms_quickstart(tmp_path: Path, run_quickstart: object) -> None:
    moto = MotoServer(log_dir=tmp_path).start()  # an empty AWS: no key, no alias
    try:
        script, _port = localise(
            quickstart("awskms"),
            tmp_path,
            {"    region: eu-west-1": f"    region: us-east-1\n    endpointUrl: {moto.endpoint}"},
        )
        out = _serve_and_drive(run_quickstart, script, clean_env(dummy_aws_env()), tmp_path)
        assert re.search(
            r"Created KEK: AWS KMS key arn:aws:kms:us-east-1:\d+:key/\S+ \(alias alias/kubeshield\)", out
        )
        assert "ok  encrypt and decrypt with these credentials" in out
    finally:
        moto.stop()
