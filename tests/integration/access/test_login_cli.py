# ruff: noqa: F811  (pytest fixtures imported from tests.support are re-bound as arguments)
"""The commands as a person and an admin run them: `access relay init-ca`, `access relay` (serve) and
`access login` (device flow against the real oidc-provider, key in a real agent process)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.support.access_agent import start_agent_process
from tests.support.access_relay import write_relay_config
from tests.support.kubeapi._server import KubeAPI
from tests.support.oidc_provider import (
    OidcProvider,
    complete_browser_login,
    complete_device_login,
    oidc_provider,  # noqa: F401
)

KUBESHIELD = str(Path(sys.executable).parent / "kubeshield")
_SERVING = re.compile(r"relay: serving on (https://\S+)")
_CODE = re.compile(r"open (\S+) and enter the code (\S+)")
_BROWSER = re.compile(r"open this URL in a browser on this machine: (\S+)")


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBESHIELD, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


class Lines:
    """A process's stderr, read on a thread; ``wait(regex)`` polls with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait(self, pattern: re.Pattern[str], bound: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if (m := pattern.search(line)) is not None:
                    return m
            if self.proc.poll() is not None and not self._thread.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"{pattern.pattern!r} not seen; stderr: {''.join(self.lines)[-2000:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._thread.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPI]:
    server = KubeAPI(tmp_path_factory.mktemp("kubeapi-cli")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def relay_config(tmp_path: Path, oidc_provider: OidcProvider, api: KubeAPI) -> tuple[Path, Path]:
    return write_relay_config(
        tmp_path / "relay", provider=oidc_provider, clusters=[("standin", api.url, api.ca_path)]
    )


def test_init_ca_prints_the_ca_and_keeps_the_key_wrapped(relay_config: tuple[Path, Path]) -> None:
    config, _ = relay_config
    done = run("access", "relay", "init-ca", "--config", str(config))
    assert done.returncode == 0, done.stderr
    cert = x509.load_pem_x509_certificate(done.stdout.encode())
    assert cert.subject.rfc4514_string() == "CN=test relay CA"
    assert "--client-ca-file" in done.stderr
    ca_file = config.parent / "relay-ca.json"
    assert stat.S_IMODE(ca_file.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" not in ca_file.read_bytes()
    again = run("access", "relay", "init-ca", "--config", str(config))
    assert again.returncode == 1 and "already exists" in again.stderr
    assert run("access", "relay", "init-ca", "--config", str(config), "--force").returncode == 0


@pytest.mark.parametrize("flow", ["device", "auth-code"])
def test_relay_serves_and_login_puts_the_certificate_into_the_agent(
    flow: str,
    relay_config: tuple[Path, Path],
    oidc_provider: OidcProvider,
    api: KubeAPI,
    tmp_path: Path,
) -> None:
    config, tls_ca = relay_config
    assert run("access", "relay", "init-ca", "--config", str(config)).returncode == 0
    relay = Lines(
        subprocess.Popen(
            [KUBESHIELD, "access", "relay", "--config", str(config)],
            text=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
    )
    runtime = Path(tempfile.mkdtemp(prefix="ks-login-", dir="/tmp"))  # a unix socket path must stay short
    agent = start_agent_process(runtime / "agent.sock")
    login: Lines | None = None
    try:
        url = relay.wait(_SERVING).group(1)
        proc = subprocess.Popen(
            [
                KUBESHIELD,
                "access",
                "login",
                "--relay-ca",
                str(tls_ca),
                "--socket",
                str(runtime / "agent.sock"),
                "--flow",
                flow,
                "--no-browser",
            ],
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "KUBESHIELD_RELAY": url},  # --relay from the environment
        )
        login = Lines(proc)
        if flow == "device":
            verification, code = login.wait(_CODE).groups()
            complete_device_login(oidc_provider, verification, code, login="alice")
        else:
            authorization = login.wait(_BROWSER).group(1)
            assert complete_browser_login(authorization, login="alice").status_code == 200
        assert proc.wait(120) == 0, "".join(login.lines)
        assert proc.stdout is not None
        out = proc.stdout.read()
        assert (
            "logged in as alice@example.test (groups dev,ops)" in out
            and "contexts in the agent: standin" in out
        )
        (context,) = agent.client().contexts()
        assert context["context"] == "standin" and context["subject"] == "alice@example.test"
        assert context["server"] == api.url
        assert any(
            "issued a client certificate: user=alice@example.test groups=dev,ops" in line
            for line in relay.lines
        )
        everything = "".join(relay.lines + login.lines) + out
        assert "eyJ" not in everything  # no JWT (ID token) in any output
        assert "PRIVATE KEY" not in everything and "BEGIN CERTIFICATE" not in everything
    finally:
        if login is not None:
            login.close()
        agent.stop()
        relay.close()
        import shutil

        shutil.rmtree(runtime, ignore_errors=True)
    assert relay.proc.returncode == 0 and "relay: stopped" in "".join(relay.lines)


def test_login_usage_and_failures() -> None:
    bad_flow = run("access", "login", "--relay", "https://127.0.0.1:1", "--flow", "implicit")
    assert bad_flow.returncode == 2 and "implicit" in bad_flow.stderr
    plain = run("access", "login", "--relay", "http://127.0.0.1:1")
    assert plain.returncode == 1 and "must be https://" in plain.stderr
    missing = run("access", "login", env={"KUBESHIELD_RELAY": ""})
    assert missing.returncode == 2 and "--relay" in missing.stderr
    no_config = run("access", "relay", "init-ca", env={"KUBESHIELD_CONFIG": ""})
    assert no_config.returncode == 2 and "--config" in no_config.stderr


def test_a_bad_relay_config_is_named(tmp_path: Path) -> None:
    (tmp_path / "relay.yaml").write_text(
        "oidc: {issuer: https://x, clientId: k, isuer: y}\ntls: {cert: a, key: b}\nca: {file: c}\n"
    )
    done = run("access", "relay", "--config", str(tmp_path / "relay.yaml"))
    assert done.returncode == 1 and "oidc.isuer: unknown field" in done.stderr


def test_help_explains() -> None:
    for args in (
        ("access", "relay", "--help"),
        ("access", "login", "--help"),
        ("access", "relay", "init-ca", "--help"),
    ):
        done = run(*args)
        assert done.returncode == 0
    assert "KUBESHIELD_RELAY" in run("access", "login", "--help").stdout
    assert "--client-ca-file" in run("access", "relay", "--help").stdout
