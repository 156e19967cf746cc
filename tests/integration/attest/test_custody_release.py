"""Wire-in (a): the custody process obtains its keys from the release server after a TPM quote (a real
swtpm), serves them to an allowed caller, and is refused when a PCR its release policy binds changes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from kubeshield.attest.tpm import ak_fingerprint
from kubeshield.attest_release.server import ReleaseServer, load_release_config
from kubeshield.keys.enclave import EnclaveKeyBackend
from kubeshield.keys.local import LocalKeyBackend
from kubeshield.keys.tpm import TpmSealer
from kubeshield.keys.tpm_attest import read_pcrs
from tests.support.swtpm import start_swtpm

KUBESHIELD = str(Path(sys.executable).parent / "kubeshield")


@pytest.fixture(scope="module")
def tpm(tmp_path_factory):
    t = start_swtpm(tmp_path_factory.mktemp("tpm-release"))
    yield t
    t.stop()


def release_server(tmp_path: Path, tcti: str) -> ReleaseServer:
    keyring = tmp_path / "keyring"
    LocalKeyBackend.create(path=keyring).close()
    ak = load_pem_public_key(TpmSealer(tcti=tcti).quote(nonce=b"enrol", pcrs=[0]).ak_public_pem)
    pcr16 = read_pcrs(tcti=tcti, pcrs=[16])[0].hex()
    (tmp_path / "release.yaml").write_text(
        f"""
listen: 127.0.0.1:0
resources:
  custody-keyring:
    keyring: {keyring}
    policy:
      version: 1
      tee: [tpm]
      claims:
        ak_sha256: {{in: ['{ak_fingerprint(ak)}']}}
        pcr16: {{equals: '{pcr16}'}}
"""
    )
    server = ReleaseServer(load_release_config(tmp_path / "release.yaml"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def start_custody(tmp_path: Path, url: str, tcti: str) -> subprocess.Popen[str]:
    policy = tmp_path / "custody-policy.yaml"
    policy.write_text(f"version: 1\nrules:\n  - name: tests\n    uid: {os.getuid()}\n")
    return subprocess.Popen(
        [
            KUBESHIELD,
            "custody",
            "serve-attested",
            "--release-url",
            url,
            "--resource",
            "custody-keyring",
            "--tcti",
            tcti,
            "--socket",
            str(tmp_path / "custody.sock"),
            "--policy",
            str(policy),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_ready(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("ready key_id="):
            return line.split("=", 1)[1].strip()
        if not line and proc.poll() is not None:
            break
    proc.kill()
    _, err = proc.communicate(timeout=10)
    raise AssertionError(f"custody did not become ready: {err}")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def test_custody_gets_its_keys_by_tpm_quote_and_is_refused_after_a_pcr_change(tmp_path, tpm):
    server = release_server(tmp_path, tpm.tcti)
    try:
        proc = start_custody(tmp_path, server.url, tpm.tcti)
        try:
            key_id = wait_ready(proc)
            keyring = LocalKeyBackend(path=tmp_path / "keyring")
            assert key_id == keyring.key_id()
            client = EnclaveKeyBackend(socket=str(tmp_path / "custody.sock"), timeout=10)
            wrapped = client.wrap(b"k" * 32, aad=b"a")
            assert keyring.unwrap(wrapped, aad=b"a") == b"k" * 32  # the custody process holds the real KEK
            client.close()
        finally:
            stop(proc)
        TpmSealer(tcti=tpm.tcti).extend(16, b"something else booted")
        proc = start_custody(tmp_path, server.url, tpm.tcti)
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            stop(proc)
        assert proc.returncode != 0
        assert "release refused (403)" in err and "claims.pcr16.equals" in err
        assert "ready" not in out
    finally:
        server.shutdown()
