"""docs/backup.md § 0 and docs/rotation.md steps 1 and 6, run as written for three control-plane
"nodes" on one machine, against real plugins (`kms serve`) and a real TLS etcd (issue 16 items 1, 2).

The issue's failure: `keys init` on each node gave each plugin its own keyring (60 of 60 Secrets
unreadable on the other node). Here one keyring is created on node-a and distributed encrypted; every
node then serves the same keyring id and versions digest, reads what the others wrote, and follows a
rotation and a retirement (refused while etcd still holds values under the old version).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeshield.errors import WrongPassphrase
from kubeshield.etcd.client import EtcdClient
from kubeshield.keys.keyring import KeyringFile
from kubeshield.kms.client import KMSv2Client
from tests.support.apiserver import EmulatedAPIServer
from tests.support.docs import Cluster, doc_blocks
from tests.support.etcd import EtcdServer, TLSFiles

REPO = Path(__file__).resolve().parents[3]
BACKUP = doc_blocks(REPO / "docs" / "backup.md")
ROTATION = doc_blocks(REPO / "docs" / "rotation.md")
NODES = ["node-a", "node-b", "node-c"]
SECRETS = 30


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    base = tmp_path_factory.mktemp("etcd-docs")
    server = EtcdServer(base / "data", tls=TLSFiles(base / "pki")).start()
    try:
        yield server
    finally:
        server.stop()


class Plugins:
    """One `kubeshield kms serve --config` per node, as its static pod would run it."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def socket(self, node: str) -> str:
        return str(self.cluster.path(node, "/var/run/kubeshield/kms.sock"))

    def start(self) -> None:
        for node in self.cluster.names:
            Path(self.socket(node)).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            config = self.cluster.path(node, "/etc/kubeshield/kubeshield.yaml")
            self.procs[node] = subprocess.Popen(
                ["kubeshield", "kms", "serve", "--config", str(config), "--health-addr", "127.0.0.1:0"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=self.cluster.env(),
            )
        deadline = time.monotonic() + 60
        for node, proc in self.procs.items():
            while not Path(self.socket(node)).exists():
                if proc.poll() is not None:
                    raise AssertionError(f"{node}: kms serve exited: {proc.communicate()[1]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{node}: no socket after 60 s")
                time.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def _listed(cluster: Cluster, node: str) -> dict[str, object]:
    result = cluster.run(node, "kubeshield keys list --config /etc/kubeshield/kubeshield.yaml -o json")
    assert result.returncode == 0, result.stderr
    doc: dict[str, object] = json.loads(result.stdout)
    return doc


def _check_every_node(cluster: Cluster) -> dict[str, object]:
    """Run the guide's check block on every node with node-a's values; return node-a's listing."""
    expected = _listed(cluster, "node-a")
    env = {"KEYRING_ID": str(expected["keyringId"]), "VERSIONS_DIGEST": str(expected["versionsDigest"])}
    done = cluster.run_block(BACKUP["cluster-check"], env=dict.fromkeys(cluster.names, env))
    assert {node for node, _, _ in done} == set(cluster.names)
    for node in cluster.names:
        listed = _listed(cluster, node)
        assert (listed["keyringId"], listed["versionsDigest"]) == (env["KEYRING_ID"], env["VERSIONS_DIGEST"])
    return expected


def _wait_for_key_id(socket: str, key_id: str) -> None:
    with KMSv2Client(socket, timeout=5) as client:
        deadline = time.monotonic() + 30
        while client.status().key_id != key_id:
            if time.monotonic() > deadline:
                raise AssertionError(f"{socket}: still not serving {key_id} after 30 s")
            time.sleep(0.05)


def _wait_for_digest(socket: str, digest: str) -> None:
    """A plugin re-reads its keyring within 5 s of a change (the guide says so); wait for that."""
    with KMSv2Client(socket, timeout=5) as client:
        deadline = time.monotonic() + 30
        while client.status() and client.versions_digest != digest:
            if time.monotonic() > deadline:
                raise AssertionError(f"{socket}: still not serving versions {digest} after 30 s")
            time.sleep(0.05)


def _write_secrets(socket: str, etcd: EtcdClient, names: list[str]) -> dict[str, bytes]:
    with KMSv2Client(socket, timeout=5) as client:
        api = EmulatedAPIServer(client)
        api.probe()
        stored = {}
        for name in names:
            key = f"/registry/secrets/default/{name}"
            stored[key] = api.store(key, b"k8s\x00secret " + name.encode())
            etcd.put(key.encode(), stored[key])
    return stored


def _read_all(socket: str, stored: dict[str, bytes]) -> int:
    with KMSv2Client(socket, timeout=5) as client:
        api = EmulatedAPIServer(client)
        api.probe()
        api.etcd.update(stored)
        return sum(api.read(key)[0].startswith(b"k8s\x00secret ") for key in stored)


def test_the_cluster_keyring_guide(tmp_path: Path, tls_etcd: EtcdServer) -> None:
    cluster = Cluster(tmp_path / "nodes", NODES)
    cluster.run_block(BACKUP["cluster-prepare"])
    cluster.write_file(BACKUP["cluster-config"])
    ops = cluster.run("node-a", f"kubeshield keys age-keygen --out {tmp_path / 'ops.agekey'}")
    assert ops.returncode == 0, ops.stderr
    cluster.add_recipient("ops", ops.stdout.strip())

    # --- distribute (backup.md § 0) ---
    cluster.run_block(BACKUP["cluster-distribute"])
    keyrings = {n: cluster.path(n, "/var/lib/kubeshield/keyring") for n in NODES}
    passphrases = {n: cluster.path(n, "/etc/kubeshield/passphrase").read_bytes().strip() for n in NODES}
    assert len(set(passphrases.values())) == 3  # each node seals with its own passphrase
    infos = {n: KeyringFile(p).read_info() for n, p in keyrings.items()}
    assert len({(i.keyring_id, i.versions_digest) for i in infos.values()}) == 1
    for node, path in keyrings.items():
        assert infos[node].kdf == "argon2id" and stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert KeyringFile(path).load(passphrases[node]).keys
        if node != "node-a":
            with pytest.raises(WrongPassphrase):
                KeyringFile(path).load(passphrases["node-a"])
    assert not list((tmp_path / "nodes").rglob("*.age"))  # the copies in transit were removed

    plugins = Plugins(cluster)
    plugins.start()
    try:
        _check_every_node(cluster)
        tls = tls_etcd.tls
        assert tls is not None
        etcd = EtcdClient(
            [tls_etcd.endpoint], cacert=str(tls.ca), cert=str(tls.client_cert), key=str(tls.client_key)
        )
        with etcd:
            before = _write_secrets(plugins.socket("node-a"), etcd, [f"a{i}" for i in range(SECRETS)])
            assert _read_all(plugins.socket("node-b"), before) == SECRETS
            assert _read_all(plugins.socket("node-c"), before) == SECRETS

            # --- rotate, back up, distribute (rotation.md step 1) ---
            v1 = infos["node-a"].primary.key_id
            cluster.run_block(ROTATION["rotate"])
            v2 = KeyringFile(keyrings["node-a"]).read_info().primary.key_id
            assert v2 != v1
            for node in NODES:
                _wait_for_key_id(plugins.socket(node), v2)
            _check_every_node(cluster)
            after = _write_secrets(plugins.socket("node-c"), etcd, [f"c{i}" for i in range(SECRETS)])
            assert _read_all(plugins.socket("node-a"), {**before, **after}) == 2 * SECRETS

            # --- retire (rotation.md step 6): refused while etcd holds values under v1 ---
            enc = cluster.path("node-a", "/etc/kubernetes/enc/enc.yaml")
            enc.parent.mkdir(parents=True)
            made = cluster.run(
                "node-a", "kubeshield kms encryption-config --socket /var/run/kubeshield/kms.sock"
                " > /etc/kubernetes/enc/enc.yaml",
            )  # fmt: skip
            assert made.returncode == 0, made.stderr
            subs = {
                "https://10.0.0.1:2379": tls_etcd.endpoint,
                "ca.crt": str(tls.ca),
                "client.crt": str(tls.client_cert),
                "client.key": str(tls.client_key),
            }
            runs = cluster.run_block(ROTATION["retire"], substitutions=subs, check=False)
            node, command, refused = runs[-1]
            assert "keys retire" in command and refused.returncode == 1
            assert f"refusing to retire {v1}: {SECRETS} stored value(s)" in refused.stderr
            assert "/registry/secrets/default/a0" in refused.stderr
            assert [v.key_id for v in KeyringFile(keyrings["node-a"]).read_info().versions] == [v1, v2]

            rewrite = cluster.run(
                "node-a",
                f"kubeshield etcd rewrite --endpoints {tls_etcd.endpoint} --cacert {tls.ca} --cert "
                f"{tls.client_cert} --key {tls.client_key} --encryption-config /etc/kubernetes/enc/enc.yaml "
                "--to kubeshield --yes",
            )
            assert rewrite.returncode == 0, rewrite.stdout + rewrite.stderr
            for earlier in cluster.path("node-a", "/root").glob("before-retire-*.age"):
                earlier.unlink()  # the first run's backup (same second as the second run, maybe)
            done = cluster.run_block(ROTATION["retire"], substitutions=subs)
            assert f"none needs {v1}" in done[-1][2].stdout
            assert [v.key_id for v in KeyringFile(keyrings["node-a"]).read_info().versions] == [v2]

            # the other nodes still hold v1: a backup without it is refused until named
            backup = cluster.run(
                "node-a", "kubeshield keys backup --config /etc/kubeshield/kubeshield.yaml"
                " --out /root/cluster-keyring.age --recipient age1...node-b --recipient age1...node-c",
            )  # fmt: skip
            assert backup.returncode == 0, backup.stderr
            for node in ("node-b", "node-c"):
                assert (
                    cluster.run(
                        "node-a", f"scp /root/cluster-keyring.age {node}:/root/cluster-keyring.age"
                    ).returncode
                    == 0
                )
                restore = (
                    "kubeshield keys restore --config /etc/kubeshield/kubeshield.yaml"
                    " --in /root/cluster-keyring.age --identity-file /etc/kubeshield/node.agekey --force"
                )
                refused = cluster.run(node, restore)
                assert (
                    refused.returncode == 1
                    and f"would drop version(s) 1 ({v1}, decrypt-only)" in refused.stderr
                )
                assert cluster.run(node, restore + " --allow-drop 1").returncode == 0
            digest = str(_listed(cluster, "node-a")["versionsDigest"])
            for node in NODES:
                _wait_for_digest(plugins.socket(node), digest)
            listed = _check_every_node(cluster)
            assert [v["keyId"] for v in listed["versions"]] == [v2]  # type: ignore[attr-defined]
            current = {k: etcd.get(k.encode()).value for k in {**before, **after}}  # type: ignore[union-attr]
            assert _read_all(plugins.socket("node-b"), current) == 2 * SECRETS
    finally:
        plugins.stop()
