"""exec-credential: ExecCredential shapes, KUBERNETES_EXEC_INFO, and the interactive handling; and the
secret-free kubeconfig (kubeconfig_out)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import yaml

from kubeshield.access.agent_client import AgentError, AgentUnavailable
from kubeshield.access.exec_credential import (
    ExecCredentialUnavailable,
    ExecInfo,
    exec_credential_document,
    fetch_exec_credential,
    parse_exec_info,
    remedy,
    stale_proxy_kubeconfig,
)
from kubeshield.access.kubeconfig_out import render_kubeconfig
from kubeshield.access.local_ca import LocalCA
from kubeshield.errors import ConfigError


def test_exec_info_absent_is_v1_and_not_interactive() -> None:
    assert parse_exec_info({}) == ExecInfo("client.authentication.k8s.io/v1", False)


@pytest.mark.parametrize(
    "version", ["client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1"]
)
@pytest.mark.parametrize("interactive", [True, False])
def test_exec_info_is_read_as_client_go_sends_it(version: str, interactive: bool) -> None:
    raw = json.dumps({"kind": "ExecCredential", "apiVersion": version, "spec": {"interactive": interactive}})
    assert parse_exec_info({"KUBERNETES_EXEC_INFO": raw}) == ExecInfo(version, interactive)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [("{", "not JSON"), ("[]", "not an ExecCredential"), ('{"apiVersion": "v9"}', "not supported")],
)
def test_a_malformed_exec_info_is_named(raw: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        parse_exec_info({"KUBERNETES_EXEC_INFO": raw})


def test_token_and_certificate_shapes() -> None:
    info = ExecInfo("client.authentication.k8s.io/v1beta1")
    doc = exec_credential_document({"token": "t", "expirationTimestamp": "2030-01-01T00:00:00Z"}, info=info)
    assert doc == {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "kind": "ExecCredential",
        "status": {"token": "t", "expirationTimestamp": "2030-01-01T00:00:00Z"},
    }
    cert = exec_credential_document(
        {"clientCertificateData": "C", "clientKeyData": "K", "expirationTimestamp": None, "other": 1},
        info=ExecInfo(),
    )
    assert cert["status"] == {"clientCertificateData": "C", "clientKeyData": "K"}
    with pytest.raises(ValueError):
        exec_credential_document({"clientCertificateData": "C"}, info=ExecInfo())


class _Agent:
    """Stands for AgentClient.exec_credential: answers from a list, counts calls."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self) -> dict[str, Any]:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)


def _counting(prompts: list[int]) -> Any:
    def prompt() -> bool:
        prompts.append(1)
        return True

    return prompt


def _fetch(agent: _Agent, *, interactive: bool, tty: bool, prompt: Any) -> dict[str, Any]:
    return fetch_exec_credential(
        context="prod",
        get=agent,
        info=ExecInfo(interactive=interactive),
        stdin_is_tty=tty,
        prompt=prompt,
        remedy_line=remedy("prod", store_exists=True),
    )


@pytest.mark.parametrize(("interactive", "tty"), [(False, True), (True, False), (False, False)])
def test_not_interactive_fails_with_one_line_naming_the_command(interactive: bool, tty: bool) -> None:
    prompts: list[int] = []
    agent = _Agent(AgentError("the agent is locked: no credential for context 'prod'", kind="locked"))
    with pytest.raises(ExecCredentialUnavailable) as caught:
        _fetch(agent, interactive=interactive, tty=tty, prompt=_counting(prompts))
    message = str(caught.value)
    assert "\n" not in message and "kubeshield access unlock" in message and "locked" in message
    assert prompts == [] and agent.calls == 1


def test_interactive_prompts_once_then_answers() -> None:
    prompts: list[int] = []
    agent = _Agent(AgentError("expired", kind="expired"), {"token": "fresh"})
    doc = _fetch(agent, interactive=True, tty=True, prompt=_counting(prompts))
    assert doc["status"] == {"token": "fresh"} and prompts == [1] and agent.calls == 2


def test_interactive_prompts_only_once_even_when_it_did_not_help() -> None:
    prompts: list[int] = []
    agent = _Agent(AgentError("gone", kind="not-found"), AgentError("still gone", kind="not-found"))
    with pytest.raises(ExecCredentialUnavailable, match="still gone"):
        _fetch(agent, interactive=True, tty=True, prompt=_counting(prompts))
    assert prompts == [1] and agent.calls == 2


def test_other_agent_errors_are_not_prompted_for() -> None:
    agent = _Agent(AgentError("bad", kind="protocol"))
    with pytest.raises(AgentError):
        _fetch(agent, interactive=True, tty=True, prompt=lambda: pytest.fail("prompted"))
    down = _Agent(AgentUnavailable("no agent socket at /x: start one with `kubeshield access agent`"))
    with pytest.raises(ExecCredentialUnavailable, match="kubeshield access agent"):
        _fetch(down, interactive=True, tty=True, prompt=lambda: pytest.fail("prompted"))


def test_remedies_name_a_command() -> None:
    assert "kubeshield access unlock" in remedy("p", store_exists=True)
    assert "kubeshield access import" in remedy("p", store_exists=False)
    assert "--relay https://r" in remedy("p", store_exists=False, relay_hint="https://r")


def test_the_printed_kubeconfig_holds_no_secret_and_points_at_the_proxy() -> None:
    ca = LocalCA()
    text = render_kubeconfig(
        context="prod",
        proxy_url="https://127.0.0.1:41234",
        ca_pem=ca.cert_pem,
        command="/usr/bin/kubeshield",
        namespace="shop",
    )
    doc = yaml.safe_load(text)
    cluster = doc["clusters"][0]["cluster"]
    assert cluster["server"] == "https://127.0.0.1:41234"
    assert base64.b64decode(cluster["certificate-authority-data"]) == ca.cert_pem
    user = doc["users"][0]["user"]
    assert set(user) == {"exec"}
    exec_ = user["exec"]
    assert (
        exec_["apiVersion"] == "client.authentication.k8s.io/v1" and exec_["interactiveMode"] == "IfAvailable"
    )
    assert exec_["command"] == "/usr/bin/kubeshield" and exec_["provideClusterInfo"] is True
    assert exec_["args"] == [
        "access",
        "exec-credential",
        "--context",
        "prod",
        "--proxy",
        "--listen",
        "127.0.0.1:41234",
    ]
    assert doc["contexts"][0]["context"] == {"cluster": "prod", "user": "prod", "namespace": "shop"}
    for field in (
        "token",
        "client-key",
        "client-key-data",
        "client-certificate-data",
        "password",
        "tokenFile",
    ):
        assert field not in text
    assert (
        "PRIVATE KEY" not in text
        and "PRIVATE KEY" not in base64.b64decode(cluster["certificate-authority-data"]).decode()
    )


def test_an_http_proxy_url_is_refused() -> None:
    with pytest.raises(ValueError, match="https"):
        render_kubeconfig(context="p", proxy_url="http://127.0.0.1:1", ca_pem=b"", command="k")


def test_the_cluster_ca_from_exec_info_tells_a_stale_proxy_kubeconfig() -> None:
    old, new = LocalCA(), LocalCA()
    raw = json.dumps(
        {
            "apiVersion": "client.authentication.k8s.io/v1",
            "kind": "ExecCredential",
            "spec": {
                "interactive": False,
                "cluster": {
                    "server": "https://127.0.0.1:1",
                    "certificate-authority-data": base64.b64encode(old.cert_pem).decode(),
                },
            },
        }
    )
    info = parse_exec_info({"KUBERNETES_EXEC_INFO": raw})
    assert info.cluster_ca == old.cert_pem
    assert stale_proxy_kubeconfig(info, agent_ca_pem=old.cert_pem, context="p") is None
    stale = stale_proxy_kubeconfig(info, agent_ca_pem=new.cert_pem, context="p")
    assert stale is not None and "kubeshield access kubeconfig --context p" in stale
    assert stale_proxy_kubeconfig(ExecInfo(), agent_ca_pem=new.cert_pem, context="p") is None
    bad = raw.replace(base64.b64encode(old.cert_pem).decode(), "***")
    with pytest.raises(ConfigError, match="not base64"):
        parse_exec_info({"KUBERNETES_EXEC_INFO": bad})
