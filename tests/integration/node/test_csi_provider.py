"""The CSI provider on its real unix socket, driven like the Secrets Store CSI driver (driver.py): local key
mode, rotation and object versions, bad SecretProviderClasses, the 4 MiB limit, tokens, socket permissions."""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import tempfile
from pathlib import Path

import grpc
import pytest
import yaml

from kubeshield.node.csi.server import CsiProviderServer
from kubeshield.node.kube_link import config_map_reader, pod_lookup
from kubeshield.node.sealed import MAX_PLAINTEXT
from kubeshield.node.wiring import build_csi_provider
from tests.integration.node.conftest import NodeWorld
from tests.integration.node.driver import Driver, details


def _objects(*items: dict) -> dict[str, str]:
    return {"objects": yaml.safe_dump(list(items))}


@pytest.fixture
def local_provider(node_world: NodeWorld, tmp_path: Path):
    """mode: local, the provider holds the key and asks the stand-in itself."""
    node = node_world.config.node
    config = dataclasses.replace(
        node_world.config,
        node=dataclasses.replace(
            node, csi=dataclasses.replace(node.csi, mode="local", hmac_key_file=tmp_path / "h.key")
        ),
    )
    from kubeshield.kube import KubeClient

    kube = KubeClient.from_kubeconfig(
        node_world.api.kubeconfig(tmp_path / "p.kubeconfig", user="csi-provider")
    )
    sockets = tmp_path / "sock"
    sockets.mkdir()

    def start() -> CsiProviderServer:
        provider = build_csi_provider(
            config,
            reviewer=kube,
            pods=pod_lookup(kube),
            keys=node_world.keys,
            config_maps=config_map_reader(kube),
        )
        return CsiProviderServer(provider, sockets / "kubeshield.sock")

    servers = [start()]
    try:
        yield Driver(node_world.admin, [sockets]), servers, start
    finally:
        servers[-1].stop(0)  # the session's sealing keys were lent, not given: they stay open
        kube.close()


def test_local_mode_rotation_and_object_versions(
    node_world: NodeWorld, local_provider, tmp_path: Path
) -> None:
    driver, servers, start = local_provider
    pod = node_world.pod("ns-a", "app")
    one = node_world.seal(b"same", "ns-a", "app")
    two = node_world.seal(b"same", "ns-a", "app")
    node_world.spc(
        "ns-a", "rot", _objects({"objectName": "a", "sealed": one}, {"objectName": "b", "sealed": two})
    )
    target = tmp_path / "t"
    target.mkdir()
    first = driver.mount(pod, "rot", target)
    assert (target / "a").read_bytes() == (target / "b").read_bytes() == b"same"
    assert first["a"] != first["b"]  # equal content does not show in the versions
    assert "same" not in "".join(first.values())
    assert driver.mount(pod, "rot", target) == first  # a remount of unchanged values keeps the versions
    data_dir = os.readlink(target / "..data")
    # rotation: the operator re-seals "a"; the next remount (requiresRepublish) brings the new value
    node_world.spc(
        "ns-a",
        "rot",
        _objects(
            {"objectName": "a", "sealed": node_world.seal(b"new", "ns-a", "app")},
            {"objectName": "b", "sealed": two},
        ),
    )
    second = driver.mount(pod, "rot", target)
    assert second["a"] != first["a"] and second["b"] == first["b"]
    assert (target / "a").read_bytes() == b"new" and os.readlink(target / "..data") != data_dir
    # versions survive a provider restart (the HMAC key is kept in its 0600 file)
    servers[-1].stop()
    servers.append(start())
    assert driver.mount(pod, "rot", target) == second
    assert stat.S_IMODE(os.stat(tmp_path / "h.key").st_mode) == 0o600


def test_bad_input_is_refused_and_the_provider_keeps_serving(
    node_world: NodeWorld, local_provider, tmp_path
) -> None:
    driver, _servers, _start = local_provider
    pod = node_world.pod("ns-a", "app")
    good = node_world.seal(b"v", "ns-a", "app")
    cases = {
        "unknown-field": (_objects({"objectName": "a", "sealed": good, "colour": "red"}), "unknown field"),
        "dotdot": (
            _objects({"objectName": "a", "sealed": good, "fileName": "x/../../etc"}),
            "must not contain '..'",
        ),
        "reserved": (
            _objects({"objectName": "a", "sealed": good, "fileName": "..data"}),
            "must not start with '..'",
        ),
        "mode": (_objects({"objectName": "a", "sealed": good, "mode": "0999"}), "0..0777"),
        "param": (
            {**_objects({"objectName": "a", "sealed": good}), "vaultAddress": "https://x"},
            "unknown SecretProviderClass",
        ),
        "tampered": (
            _objects({"objectName": "a", "sealed": good[:-2] + ("AA" if good[-2:] != "AA" else "BB")}),
            "does not open",
        ),
        "other-identity": (
            _objects({"objectName": "a", "sealed": node_world.seal(b"v", "ns-b", "app")}),
            "sealed for ns-b:app",
        ),
        "not-sealed": (_objects({"objectName": "a", "sealed": "hello"}), "not a kubeshield sealed value"),
    }
    codes = {}
    for name, (params, message) in cases.items():
        node_world.spc("ns-a", f"bad-{name}", params)
        target = tmp_path / name
        target.mkdir()
        with pytest.raises(grpc.RpcError) as err:
            driver.mount(pod, f"bad-{name}", target)
        assert message in details(err.value), (name, details(err.value))
        codes[name] = err.value.code()
        assert list(target.iterdir()) == []
    assert codes["other-identity"] == grpc.StatusCode.PERMISSION_DENIED
    assert {c for n, c in codes.items() if n != "other-identity"} == {grpc.StatusCode.INVALID_ARGUMENT}
    node_world.spc("ns-a", "good", _objects({"objectName": "a", "sealed": good}))
    target = tmp_path / "good"
    target.mkdir()
    driver.mount(pod, "good", target)
    assert (target / "a").read_bytes() == b"v"


def test_the_4_mib_limit(node_world: NodeWorld, local_provider, tmp_path: Path) -> None:
    driver, _servers, _start = local_provider
    pod = node_world.pod("ns-a", "app")
    big = [node_world.seal(os.urandom(MAX_PLAINTEXT), "ns-a", "app") for _ in range(4)]
    node_world.spc(
        "ns-a", "big", _objects(*({"objectName": f"o{i}", "sealed": s} for i, s in enumerate(big)))
    )
    target = tmp_path / "big"
    target.mkdir()
    with pytest.raises(grpc.RpcError) as err:
        driver.mount(pod, "big", target)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over the driver's 4194304-byte message limit" in details(err.value)
    node_world.spc(
        "ns-a", "three", _objects(*({"objectName": f"o{i}", "sealed": s} for i, s in enumerate(big[:3])))
    )
    assert len(driver.mount(pod, "three", target)) == 3  # 3 MiB fits the driver's default limit


def test_tokens_in_secrets_and_a_missing_token_request(
    node_world: NodeWorld, local_provider, tmp_path
) -> None:
    driver, _servers, _start = local_provider
    pod = node_world.pod("ns-a", "app")
    node_world.spc(
        "ns-a", "tok", _objects({"objectName": "a", "sealed": node_world.seal(b"v", "ns-a", "app")})
    )
    in_secrets = Driver(node_world.admin, driver._dirs, tokens_in_secrets=True)
    target = tmp_path / "s"
    target.mkdir()
    in_secrets.mount(pod, "tok", target)
    assert (target / "a").read_bytes() == b"v"
    no_tokens = Driver(node_world.admin, driver._dirs, token_audiences=())
    with pytest.raises(grpc.RpcError) as err:
        no_tokens.mount(pod, "tok", tmp_path)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "tokenRequests" in details(err.value)
    wrong_audience = Driver(node_world.admin, driver._dirs, token_audiences=("vault",))
    with pytest.raises(grpc.RpcError) as err:
        wrong_audience.mount(pod, "tok", tmp_path)
    assert "no ServiceAccount token for audience 'kubeshield'" in details(err.value)


def test_the_socket_is_0600_and_another_uid_cannot_connect(node_world: NodeWorld) -> None:
    directory = Path(tempfile.mkdtemp(prefix="ks-csi-"))
    directory.chmod(0o755)  # so only the socket's own mode decides
    provider = build_csi_provider(node_world.config)
    server = CsiProviderServer(provider, directory / "kubeshield.sock")
    try:
        sock = directory / "kubeshield.sock"
        assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600
        probe = (
            "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print('connected')"
        )
        done = subprocess.run(
            ["su", "-s", "/bin/sh", "nobody", "-c", f'/usr/bin/python3 -c "{probe}" {sock}'],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode != 0 and "PermissionError" in done.stderr and "connected" not in done.stdout
        with pytest.raises(Exception, match="another process is listening"):
            CsiProviderServer(build_csi_provider(node_world.config), sock)
    finally:
        server.stop()
        os.rmdir(directory)


def test_sealed_texts_from_a_configmap_of_the_pods_namespace(
    node_world: NodeWorld, local_provider, tmp_path
) -> None:
    driver, _servers, _start = local_provider
    name = f"sealed-{os.urandom(4).hex()}"
    node_world.admin.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name},
            "data": {"db": node_world.seal(b"from-configmap", "ns-a", "app")},
        },
        namespace="ns-a",
    )
    node_world.spc(
        "ns-a", "cm", _objects({"objectName": "db", "sealedFrom": {"configMap": name, "key": "db"}})
    )
    target = tmp_path / "cm"
    target.mkdir()
    driver.mount(node_world.pod("ns-a", "app"), "cm", target)
    assert (target / "db").read_bytes() == b"from-configmap"
    # the ConfigMap is looked up in the mounting pod's namespace, never another one
    node_world.spc(
        "ns-b", "cm", _objects({"objectName": "db", "sealedFrom": {"configMap": name, "key": "db"}})
    )
    with pytest.raises(grpc.RpcError) as err:
        driver.mount(node_world.pod("ns-b", "app"), "cm", tmp_path)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and f"ns-b/{name}" in details(err.value)
    node_world.spc(
        "ns-a", "cm-key", _objects({"objectName": "db", "sealedFrom": {"configMap": name, "key": "x"}})
    )
    with pytest.raises(grpc.RpcError) as err:
        driver.mount(node_world.pod("ns-a", "app"), "cm-key", tmp_path)
    assert "no key 'x'" in details(err.value)
