# ruff: noqa: F811  (pytest fixtures imported from tests.support are re-bound as arguments)
"""The login relay end to end: the real OpenID provider (npm oidc-provider), the device flow and the
auth-code flow completed the way a person does, the relay over https, the real agent holding the key,
and real kubectl whose client certificate the Kubernetes API stand-in accepts (its client CA trusts
the relay's CA, as kube-apiserver's --client-ca-file would)."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeshield.access.agent import AgentSettings
from kubeshield.access.credential import ClusterEndpoint
from kubeshield.access.login import LoginResult, login
from kubeshield.access.oidc import LoginError, tls_context
from tests.support.access_agent import agent_on_thread
from tests.support.access_relay import DevicePerson, RunningRelay, TestKeyHolder, start_relay
from tests.support.kubeapi._pki import Credential
from tests.support.kubeapi._server import KubeAPI
from tests.support.kubeapi.fixtures import Kubectl, kubectl  # noqa: F401
from tests.support.oidc_provider import OidcProvider, complete_browser_login, oidc_provider  # noqa: F401

KUBESHIELD = str(Path(sys.executable).parent / "kubeshield")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPI]:
    server = KubeAPI(tmp_path_factory.mktemp("kubeapi-relay")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def relay(tmp_path: Path, oidc_provider: OidcProvider, api: KubeAPI) -> Iterator[RunningRelay]:
    endpoint = ClusterEndpoint(name="standin", server=api.url, ca_pem=api.ca_path.read_bytes())
    running = start_relay(tmp_path / "relay", provider=oidc_provider, clusters=[endpoint])
    api.trust_client_ca(running.ca_pem)
    try:
        yield running
    finally:
        running.stop()


def whoami(kubectl: Kubectl, kubeconfig: Path) -> dict[str, Any]:
    out = kubectl.run("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout
    info = json.loads(out)["status"]["userInfo"]
    assert isinstance(info, dict)
    return info


def cert_kubeconfig(api: KubeAPI, tmp_path: Path, cert_pem: bytes, key_pem: bytes) -> Path:
    (tmp_path / "client.crt").write_bytes(cert_pem)
    (tmp_path / "client.key").write_bytes(key_pem)
    (tmp_path / "client.key").chmod(0o600)
    return api.kubeconfig(
        tmp_path / "kubeconfig", credential=Credential(tmp_path / "client.crt", tmp_path / "client.key")
    )


def device_login(
    relay: RunningRelay, provider: OidcProvider, holder: Any, *, login_as: str = "alice"
) -> LoginResult:
    person = DevicePerson(provider, login=login_as)
    result = login(
        relay_url=relay.url,
        holder=holder,
        flow="device",
        relay_context=tls_context(ca_file=relay.tls_ca),
        show=person.show,
    )
    person.join()
    assert any("enter the code" in line for line in person.lines)
    return result


def test_device_flow_ends_in_a_certificate_the_apiserver_accepts(
    relay: RunningRelay,
    oidc_provider: OidcProvider,
    api: KubeAPI,
    kubectl: Kubectl,
    tmp_path: Path,
) -> None:
    holder = TestKeyHolder()
    result = device_login(relay, oidc_provider, holder)
    assert result.user == "alice@example.test" and result.groups == ("dev", "ops")
    (installed,) = holder.installed
    assert installed["subject"] == "alice@example.test"
    assert [c.name for c in installed["clusters"]] == ["standin"]
    kubeconfig = cert_kubeconfig(api, tmp_path, installed["cert"], holder.key_pem(installed["handle"]))
    info = whoami(kubectl, kubeconfig)
    assert info["username"] == "alice@example.test"
    assert set(info["groups"]) == {"dev", "ops", "system:authenticated"}


def test_auth_code_flow_with_pkce_ends_in_a_certificate_the_apiserver_accepts(
    relay: RunningRelay,
    oidc_provider: OidcProvider,
    api: KubeAPI,
    kubectl: Kubectl,
    tmp_path: Path,
) -> None:
    holder = TestKeyHolder()
    opened: list[str] = []
    browser: list[threading.Thread] = []
    callback: list[int] = []

    def open_url(url: str) -> None:  # the person's browser on this machine
        opened.append(url)
        thread = threading.Thread(
            target=lambda: callback.append(complete_browser_login(url, login="bob").status_code), daemon=True
        )
        thread.start()
        browser.append(thread)

    result = login(
        relay_url=relay.url,
        holder=holder,
        flow="auth-code",
        relay_context=tls_context(ca_file=relay.tls_ca),
        show=lambda line: None,
        open_url=open_url,
        browser_timeout=60,
    )
    browser[0].join(60)
    assert callback == [200]
    (url,) = opened
    assert "code_challenge_method=S256" in url and "nonce=" in url and "state=" in url
    assert "redirect_uri=http%3A%2F%2F127.0.0.1%3A" in url
    assert result.user == "bob@example.test" and result.groups == ()
    (installed,) = holder.installed
    kubeconfig = cert_kubeconfig(api, tmp_path, installed["cert"], holder.key_pem(installed["handle"]))
    assert whoami(kubectl, kubeconfig)["username"] == "bob@example.test"


def test_login_into_the_real_agent_then_kubectl_through_exec_credential(
    relay: RunningRelay,
    oidc_provider: OidcProvider,
    api: KubeAPI,
    kubectl: Kubectl,
    tmp_path: Path,
) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="ks-relay-", dir="/tmp"))  # a unix socket path must stay short
    try:
        with agent_on_thread(AgentSettings(socket_path=runtime / "agent.sock")) as (_agent, client):
            result = device_login(relay, oidc_provider, client)
            assert [c.name for c in result.clusters] == ["standin"]
            (context,) = client.contexts()
            assert context["context"] == "standin" and context["subject"] == "alice@example.test"
            assert context["kind"] == "client-certificate"
            kubeconfig = {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "standin",
                        "cluster": {"server": api.url, "certificate-authority": str(api.ca_path)},
                    }
                ],
                "users": [
                    {
                        "name": "me",
                        "user": {
                            "exec": {
                                "apiVersion": "client.authentication.k8s.io/v1",
                                "command": KUBESHIELD,
                                "args": ["access", "exec-credential", "--context", "standin"],
                                "env": [
                                    {"name": "KUBESHIELD_AGENT_SOCKET", "value": str(runtime / "agent.sock")}
                                ],
                                "interactiveMode": "Never",
                            }
                        },
                    }
                ],
                "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "me"}}],
                "current-context": "standin",
            }
            path = tmp_path / "exec.kubeconfig"
            path.write_text(yaml.safe_dump(kubeconfig))
            info = whoami(kubectl, path)
            assert info["username"] == "alice@example.test"
            assert {"dev", "ops"} <= set(info["groups"])
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def test_login_refuses_a_plain_http_relay(oidc_provider: OidcProvider) -> None:
    with pytest.raises(LoginError, match="must be https"):
        login(relay_url="http://127.0.0.1:1", holder=TestKeyHolder(), relay_context=tls_context(), show=print)


def test_login_refuses_a_relay_with_an_untrusted_certificate(relay: RunningRelay) -> None:
    with pytest.raises(LoginError, match="TLS certificate is not trusted"):
        login(relay_url=relay.url, holder=TestKeyHolder(), relay_context=tls_context(), show=print)


def test_no_agent_fails_before_the_person_is_asked_to_log_in(
    relay: RunningRelay, oidc_provider: OidcProvider, tmp_path: Path
) -> None:
    from kubeshield.access.agent_client import AgentClient, AgentUnavailable

    person = DevicePerson(oidc_provider)
    with pytest.raises(AgentUnavailable):
        login(
            relay_url=relay.url,
            holder=AgentClient(tmp_path / "no-agent.sock"),
            relay_context=tls_context(ca_file=relay.tls_ca),
            show=person.show,
        )
    assert person.lines == []


def test_a_relay_without_clusters_is_refused_before_the_flow(
    tmp_path: Path, oidc_provider: OidcProvider
) -> None:
    empty = start_relay(tmp_path / "empty", provider=oidc_provider, clusters=())
    person = DevicePerson(oidc_provider)
    try:
        with pytest.raises(LoginError, match="serves no cluster"):
            login(
                relay_url=empty.url,
                holder=TestKeyHolder(),
                relay_context=tls_context(ca_file=empty.tls_ca),
                show=person.show,
            )
    finally:
        empty.stop()
    assert person.lines == []
