"""Start ``kubeshield kms serve`` while its key service is down, bring the service up, watch it heal.

One scenario per remote backend, each against the real server (issue 15 item 3):

* ``transit``: a raft-backed OpenBao (keys survive a restart). A first plugin writes Secrets through
  an emergency keyring (escrow); OpenBao is stopped; a second plugin starts during the outage and must
  serve Decrypts of those Secrets through the emergency keyring; OpenBao is started again.
* ``awskms``: nothing listens on the configured endpoint at start; then moto starts there and
  ``kubeshield keys init`` creates the key behind the configured alias.
* ``pkcs11``: ``SOFTHSM2_CONF`` names a token directory that does not exist at start (SoftHSM2 then
  fails ``C_Initialize``, as a token that is not there); then the directory, the token
  (``softhsm2-util --init-token``) and the key (``kubeshield keys init``) appear.

During the outage every scenario checks what must hold: the socket is bound, Status answers
UNAVAILABLE, ``/livez`` is 200 while ``/healthz`` and ``/readyz`` are 503, Encrypt is UNAVAILABLE. After
the service is back, Status turns ok without a restart and the apiserver-emulating client stores and
reads Secrets. Each returns how long the socket took to appear and how long Status took to turn ok
after the service was back (``bench/outage_bench.py`` prints them; tests do not assert on them).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from kubeshield.errors import BackendUnavailable
from kubeshield.kms.client import KMSv2Client
from tests.support.apiserver import EmulatedAPIServer
from tests.support.kms_process import (
    ServeProcess,
    clean_env,
    http_status,
    run_cli,
    status_or_error,
    wait_until_healthy,
)
from tests.support.moto import MotoServer, dummy_aws_env
from tests.support.openbao import BaoServer, free_port, start_persistent_server, write_secret_file
from tests.support.softhsm import INSTALL_HINT, SOFTHSM_MODULE

__all__ = ["SCENARIOS", "OutageRun", "awskms_outage", "pkcs11_outage", "transit_outage"]


@dataclass(frozen=True)
class OutageRun:
    backend: str
    to_socket: float  # seconds from starting kms serve to its socket, with the key service down
    to_healthy: float  # seconds from the key service being back to Status ok
    break_glass_decrypts: int  # Decrypts served by the emergency keyring during the outage


def _config(path: Path, *, socket: Path, health_port: int, keys: str) -> Path:
    path.write_text(f"kms:\n  socket: {socket}\n  healthAddr: 127.0.0.1:{health_port}\n{keys}")
    return path


def _check_down(serve: ServeProcess, port: int) -> None:
    """What must hold while the key service is down (module docstring)."""
    status = status_or_error(serve.socket)
    assert isinstance(status, BackendUnavailable), f"Status during the outage: {status!r}"
    assert http_status(port, "/livez") == 200, "/livez must not depend on the key backend"
    assert http_status(port, "/healthz") == 503
    assert http_status(port, "/readyz") == 503
    with KMSv2Client(str(serve.socket), timeout=5) as client:
        try:
            client.encrypt(os.urandom(32))
        except BackendUnavailable:
            pass
        else:
            raise AssertionError("Encrypt must fail while the key service is down")


def _check_serving(serve: ServeProcess, port: int, api: EmulatedAPIServer | None = None) -> None:
    """After the service is back: the apiserver flow works and the health endpoints are 200."""
    assert http_status(port, "/healthz") == 200 and http_status(port, "/readyz") == 200
    with KMSv2Client(str(serve.socket), timeout=5) as client:
        if api is None:
            api = EmulatedAPIServer(client)
        else:
            api.client = client
        api.probe()
        api.store("/registry/secrets/default/after", b"written after the outage")
        api.restart()
        api.probe()
        for key in list(api.etcd):
            plaintext, _stale = api.read(key)
            assert plaintext, key
        assert api.read("/registry/secrets/default/after")[0] == b"written after the outage"


def _break_glass_count(port: int) -> int:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("kubeshield_break_glass_decrypts_total")
        )
    )


def _restart(bao: BaoServer) -> None:
    """Start the stopped OpenBao again and unseal it (the unseal call retried on a loaded machine)."""
    bao.start()
    for attempt in range(3):
        try:
            bao._unseal()
            return
        except httpx.TimeoutException:
            if attempt == 2:
                raise


def transit_outage(tmp: Path) -> OutageRun:
    bao = start_persistent_server(tmp / "bao")
    serve: ServeProcess | None = None
    try:
        bao.enable_transit()
        bao.create_key("kubeshield")
        token = write_secret_file(tmp / "bao-token", bao.root_token)
        emergency_pass = write_secret_file(tmp / "emergency-pass", secrets.token_urlsafe(24))
        env = clean_env()
        made = run_cli(
            "keys", "init", "--keyring", str(tmp / "emergency"), "--passphrase-file", emergency_pass, env=env
        )
        assert made.returncode == 0, made.stderr
        socket, port = tmp / "kms.sock", free_port()
        config = _config(
            tmp / "kubeshield.yaml",
            socket=socket,
            health_port=port,
            keys=(
                "keys:\n  backend: transit\n"
                f"  transit: {{address: '{bao.address}', key: kubeshield, "
                f"auth: {{method: token, tokenFile: {token}}}}}\n"
                f"  emergency: {{keyring: {tmp / 'emergency'}, passphraseFile: {emergency_pass}}}\n"
            ),
        )
        # before the outage: a plugin writes Secrets (each DEK seed escrowed under the emergency keyring)
        serve = ServeProcess.kms_serve("--config", str(config), socket=socket, env=env, log_dir=tmp)
        serve.wait_for_socket()
        wait_until_healthy(socket)
        with KMSv2Client(str(socket), timeout=5) as client:
            api = EmulatedAPIServer(client)
            api.probe()
            for i in range(3):
                api.store(f"/registry/secrets/default/s{i}", f"value-{i}".encode())
        assert serve.stop() == 0, serve.stderr()

        bao.stop()
        serve = ServeProcess.kms_serve("--config", str(config), socket=socket, env=env, log_dir=tmp)
        to_socket = serve.wait_for_socket()
        _check_down(serve, port)
        # the apiserver kept its state (only the plugin restarted): its Decrypts go through break-glass
        with KMSv2Client(str(socket), timeout=5) as client:
            api.client = client
            api.seed_cache.clear()
            for i in range(3):
                assert api.read(f"/registry/secrets/default/s{i}")[0] == f"value-{i}".encode()
        served = _break_glass_count(port)
        assert served >= 1, "the emergency keyring must have served the Decrypts"

        _restart(bao)  # started again and unsealed: the key service is back
        to_healthy = wait_until_healthy(socket)
        _check_serving(serve, port, api)
        assert serve.stop() == 0, serve.stderr()
        assert bao.root_token not in serve.stderr()
        return OutageRun("transit", to_socket, to_healthy, served)
    finally:
        if serve is not None:
            serve.stop()
        bao.stop()


def awskms_outage(tmp: Path) -> OutageRun:
    moto = MotoServer(log_dir=tmp, port=free_port())  # not started: nothing listens there yet
    serve: ServeProcess | None = None
    try:
        socket, port = tmp / "kms.sock", free_port()
        config = _config(
            tmp / "kubeshield.yaml",
            socket=socket,
            health_port=port,
            keys=(
                "keys:\n  backend: awskms\n"
                f"  awskms: {{keyId: alias/kubeshield, region: us-east-1, endpointUrl: '{moto.endpoint}'}}\n"
            ),
        )
        env = clean_env(dummy_aws_env())
        serve = ServeProcess.kms_serve("--config", str(config), socket=socket, env=env, log_dir=tmp)
        to_socket = serve.wait_for_socket()
        _check_down(serve, port)

        moto.start()
        made = run_cli("keys", "init", "--config", str(config), env=env)  # the key behind the alias
        assert made.returncode == 0, made.stdout + made.stderr
        assert "Created KEK" in made.stdout, made.stdout
        to_healthy = wait_until_healthy(socket)
        _check_serving(serve, port)
        assert serve.stop() == 0, serve.stderr()
        return OutageRun("awskms", to_socket, to_healthy, 0)
    finally:
        if serve is not None:
            serve.stop()
        moto.stop()


def pkcs11_outage(tmp: Path) -> OutageRun:
    if not Path(SOFTHSM_MODULE).is_file() or shutil.which("softhsm2-util") is None:
        raise AssertionError(f"SoftHSM2 is not installed: {INSTALL_HINT}")
    tokendir = tmp / "tokens"  # does not exist yet: the token is not there
    conf = tmp / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokendir}\nobjectstore.backend = file\nlog.level = ERROR\n")
    pin = secrets.token_urlsafe(12)
    pin_file = write_secret_file(tmp / "pin", pin)
    socket, port = tmp / "kms.sock", free_port()
    config = _config(
        tmp / "kubeshield.yaml",
        socket=socket,
        health_port=port,
        keys=(
            "keys:\n  backend: pkcs11\n"
            f"  pkcs11: {{module: {SOFTHSM_MODULE}, token: ks-late, pinFile: {pin_file}, keyLabel: kek}}\n"
        ),
    )
    env = clean_env({"SOFTHSM2_CONF": str(conf)})
    serve = ServeProcess.kms_serve("--config", str(config), socket=socket, env=env, log_dir=tmp)
    try:
        to_socket = serve.wait_for_socket()
        _check_down(serve, port)

        tokendir.mkdir(mode=0o700)
        subprocess.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                "ks-late",
                "--pin",
                pin,
                "--so-pin",
                "so-12345",
            ],
            check=True,
            capture_output=True,
            env=env,
            timeout=60,
        )
        made = run_cli("keys", "init", "--config", str(config), env=env)
        assert made.returncode == 0, made.stdout + made.stderr
        to_healthy = wait_until_healthy(socket)
        _check_serving(serve, port)
        assert serve.stop() == 0, serve.stderr()
        assert pin not in serve.stderr()
        return OutageRun("pkcs11", to_socket, to_healthy, 0)
    finally:
        serve.stop()


SCENARIOS: Mapping[str, Callable[[Path], OutageRun]] = {
    "transit": transit_outage,
    "awskms": awskms_outage,
    "pkcs11": pkcs11_outage,
}
