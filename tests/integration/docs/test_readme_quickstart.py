"""README.md's quick start, run as written, for two control-plane "nodes" on one machine (issue 16 item 10).

What the README names as its stand-ins, and nothing else, replaces a real control plane: each node's
directories live under a root of its own (tests/support/docs.py moves them), a real TLS etcd on 127.0.0.1
is the cluster's (its CA and client certificate put where kubeadm puts them), each node's health port
is a free one, and:

* systemd: there is none here, so ``systemctl enable --now kubeshield-kms.service`` starts the unit
  the guide installed by its own ``ExecStart=`` line (parsed from the unit file), after making its
  ``RuntimeDirectory=`` as systemd would;
* kube-apiserver: there is no binary here, so an apiserver-emulating KMS client reads each node's
  generated EncryptionConfiguration, dials the endpoint in it and writes and reads Secrets in etcd.

The cluster had Secrets before (plaintext, as an apiserver without encryption stored them); each
"apiserver" then writes more through its own node's plugin; the guide's rewrite and audit run; and at
the end every Secret is read back through BOTH nodes' plugins. Then the README's configuration reference
(with its emergency keyring) is served as written.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kubeshield.config import load_config
from kubeshield.config.encryption import load_encryption_config, socket_path_from_endpoint
from kubeshield.envelope.objects import decode_object, encode_secret
from kubeshield.errors import KubeshieldError
from kubeshield.etcd.client import EtcdClient
from kubeshield.keys.keyring import KeyringFile
from kubeshield.kms.client import KMSv2Client
from tests.integration.docs._unit import parse_unit
from tests.support.apiserver import EmulatedAPIServer
from tests.support.docs import Block, Cluster, doc_blocks, shell_commands
from tests.support.etcd import EtcdServer, TLSFiles, free_port, short_socket_dir
from tests.support.kms_process import KUBESHIELD

REPO = Path(__file__).resolve().parents[3]
README = doc_blocks(REPO / "README.md")
NODES = ["node-a", "node-b"]
UNIT = "kubeshield-kms.service"
PKI = {  # what kubeadm leaves on a control-plane node for the apiserver's etcd client
    "ca": "/etc/kubernetes/pki/etcd/ca.crt",
    "client_cert": "/etc/kubernetes/pki/apiserver-etcd-client.crt",
    "client_key": "/etc/kubernetes/pki/apiserver-etcd-client.key",
}
BEFORE, WRITTEN = 12, 8  # Secrets stored before encryption; Secrets each apiserver writes after


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    base = tmp_path_factory.mktemp("etcd-readme")
    server = EtcdServer(base / "data", tls=TLSFiles(base / "pki")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nodes() -> Iterator[Path]:
    """A short base directory: each node's plugin socket lives under it (sun_path is 107 bytes)."""
    base = short_socket_dir()
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _done(command: str, stdout: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(command, 0, stdout, "")


class Services:
    """The unit the guide installed, on each node, run as systemd would run it."""

    def __init__(self, cluster: Cluster, logs: Path) -> None:
        self.cluster = cluster
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def systemctl(self, node: str, command: str) -> subprocess.CompletedProcess[str]:
        argv = shlex.split(command)
        unit_file = self.cluster.path(node, f"/etc/systemd/system/{UNIT}")
        if argv[1:] == ["daemon-reload"]:
            parse_unit(unit_file)  # what systemd would load
            return _done(command)
        if argv[1:] == ["enable", "--now", UNIT]:
            self.start(node)
            return _done(command)
        raise AssertionError(f"the guide runs a systemctl command this test does not stand in for: {command}")

    def socket(self, node: str) -> Path:
        settings = load_config(self.cluster.path(node, "/etc/kubeshield/kubeshield.yaml"))
        return Path(settings.kms.socket)

    def start(self, node: str) -> None:
        unit = parse_unit(self.cluster.path(node, f"/etc/systemd/system/{UNIT}"))
        runtime = unit.runtime_directories
        for name, mode in runtime:  # systemd makes them (and sets their mode) at every start
            directory = self.cluster.path(node, f"/var/run/{name}")
            directory.mkdir(mode=mode, parents=True, exist_ok=True)
            directory.chmod(mode)
        # the unit makes the socket's directory (/var/run is /run on a systemd host)
        assert self.socket(node).parent in [self.cluster.path(node, f"/var/run/{n}") for n, _ in runtime]
        argv = unit.exec_start
        assert argv[0] == "/usr/local/bin/kubeshield", argv  # where step 1 links it
        line = self.cluster.rewrite(node, shlex.join([KUBESHIELD, *argv[1:]]))
        with (self.logs / f"{node}.log").open("ab") as log:
            self.procs[node] = subprocess.Popen(
                shlex.split(line),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.cluster.env(unit.environment),
            )
        self._wait_healthy(node)

    def _wait_healthy(self, node: str) -> None:
        socket, proc = self.socket(node), self.procs[node]
        deadline = time.monotonic() + 120  # interpreter start and Argon2id on a loaded machine
        last: object = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"{node}: kms serve exited {proc.returncode}: {self.log(node)[-3000:]}")
            if socket.exists():
                with KMSv2Client(str(socket), timeout=5) as client:
                    try:
                        client.status()
                        return
                    except KubeshieldError as exc:
                        last = exc
            time.sleep(0.05)
        raise AssertionError(f"{node}: not healthy after 120 s ({last!r}): {self.log(node)[-3000:]}")

    def log(self, node: str) -> str:
        return (self.logs / f"{node}.log").read_text(errors="replace")

    def stop(self, node: str) -> int:
        proc = self.procs.pop(node)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(30)
        return proc.returncode

    def stop_all(self) -> None:
        for node in list(self.procs):
            self.stop(node)


def _apiserver(cluster: Cluster, node: str) -> tuple[EmulatedAPIServer, KMSv2Client]:
    """kube-apiserver on ``node`` as the README configures it: the generated config, the endpoint in it."""
    config = load_encryption_config(cluster.path(node, "/etc/kubernetes/enc/enc.yaml"))
    (rule,) = config.rules
    assert list(rule.resources) == ["secrets"]
    kms, identity = rule.providers
    assert (kms.kind, kms.api_version, identity.kind) == ("kms", "v2", "identity")
    socket = socket_path_from_endpoint(kms.endpoint)
    assert Path(socket) == cluster.path(node, "/var/run/kubeshield/kms.sock")
    client = KMSv2Client(socket, timeout=5)
    api = EmulatedAPIServer(client, provider_name=kms.name)
    api.probe()
    return api, client


def _secret(name: str) -> tuple[str, bytes]:
    return f"/registry/secrets/default/{name}", encode_secret(
        name=name, namespace="default", data={"password": f"pw-{name}".encode()}
    )


def _check_apiserver_fragment(block: Block) -> None:
    """The flags name the file step 6 writes, and the apiserver's container sees it and the socket."""
    assert block.body.startswith("# fragment"), "the apiserver snippet is marked as a fragment"
    pod = yaml.safe_load(block.body)
    (container,) = pod["spec"]["containers"]
    assert container["name"] == "kube-apiserver"
    flags = dict(a.split("=", 1) for a in container["command"] if a.startswith("--"))
    assert flags == {
        "--encryption-provider-config": "/etc/kubernetes/enc/enc.yaml",
        "--encryption-provider-config-automatic-reload": "true",
    }
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == volumes  # the same path inside, so the paths in enc.yaml hold there
    assert set(mounts.values()) == {"/etc/kubernetes/enc", "/var/run/kubeshield"}


def test_the_readme_quick_start(nodes: Path, tmp_path: Path, tls_etcd: EtcdServer) -> None:
    tls = tls_etcd.tls
    assert tls is not None
    cluster = Cluster(nodes, NODES, cwd=REPO)
    for node in NODES:
        for attr, path in PKI.items():
            target = cluster.path(node, path)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(getattr(tls, attr), target)
    ports = {node: {"127.0.0.1:8081": f"127.0.0.1:{free_port()}"} for node in NODES}
    etcd_subs = {"https://127.0.0.1:2379": tls_etcd.endpoint}
    ops = tmp_path / "ops-1.agekey"  # the operator's offline identity, on their own machine
    made = cluster.run("node-a", f"kubeshield keys age-keygen --out {ops}")
    assert made.returncode == 0, made.stderr
    cluster.add_recipient("ops", made.stdout.strip())

    etcd = EtcdClient(
        [tls_etcd.endpoint], cacert=str(tls.ca), cert=str(tls.client_cert), key=str(tls.client_key)
    )
    expected: dict[str, bytes] = {}
    services = Services(cluster, tmp_path)
    passphrases: set[bytes] = set()
    with etcd:
        for i in range(BEFORE):  # the cluster before encryption: Secrets stored as plaintext
            key, value = _secret(f"before-{i}")
            etcd.put(key.encode(), value)
            expected[key] = value
        try:
            # --- 2: directories, passphrases, the configuration ---
            cluster.run_block(README["quickstart-prepare"])
            for node in NODES:
                for path in (
                    "/etc/kubeshield",
                    "/var/lib/kubeshield",
                    "/var/run/kubeshield",
                    "/etc/kubernetes/enc",
                ):
                    assert stat.S_IMODE(cluster.path(node, path).stat().st_mode) == 0o700, (node, path)
                passphrase = cluster.path(node, "/etc/kubeshield/passphrase")
                assert stat.S_IMODE(passphrase.stat().st_mode) == 0o600
                passphrases.add(passphrase.read_bytes())
            assert len(passphrases) == len(NODES) and all(
                len(p.strip()) == 44 for p in passphrases
            )  # 32 bytes
            cluster.write_file(README["quickstart-config"], node_substitutions=ports)

            # --- 3: one keyring, made on node-a, restored on node-b ---
            cluster.run_block(README["quickstart-keyring"])
            infos = {
                n: KeyringFile(cluster.path(n, "/var/lib/kubeshield/keyring")).read_info() for n in NODES
            }
            assert len({(i.keyring_id, i.versions_digest) for i in infos.values()}) == 1
            assert all(i.kdf == "argon2id" for i in infos.values())
            assert not cluster.path("node-b", "/root/cluster-keyring.age").exists()
            # the file left on node-a is a backup the operator's identity opens
            check = cluster.run(
                "node-a",
                f"kubeshield keys restore --in /root/cluster-keyring.age --identity-file {ops} "
                f"--keyring {tmp_path / 'ops-check.keyring'}",
            )
            assert check.returncode == 0, check.stderr
            assert (
                KeyringFile(tmp_path / "ops-check.keyring").read_info().keyring_id
                == infos["node-a"].keyring_id
            )

            # --- 4: the unit, started from its own ExecStart ---
            cluster.run_block(README["quickstart-serve"], instead={r"systemctl\b": services.systemctl})
            assert set(services.procs) == set(NODES)
            assert (cluster.path("node-a", f"/etc/systemd/system/{UNIT}")).read_bytes() == (
                REPO / "deploy" / "systemd" / UNIT
            ).read_bytes()

            # --- 5: every node serves node-a's keyring ---
            listed = cluster.run(
                "node-a", "kubeshield keys list --config /etc/kubeshield/kubeshield.yaml -o json"
            )
            keyring_id = json.loads(listed.stdout)["keyringId"]
            done = cluster.run_block(
                README["quickstart-check"],
                node_substitutions=ports,
                env={node: {"KEYRING_ID": keyring_id} for node in NODES},
            )
            assert {node for node, _, _ in done} == set(NODES)
            assert all(r.stdout == "ok\n" for _, c, r in done if c.startswith("curl"))
            status = next(c for c in shell_commands(README["quickstart-check"].body) if "kms status" in c)
            wrong = cluster.run("node-b", status, env={"KEYRING_ID": "not-" + keyring_id})
            assert wrong.returncode == 1 and "mismatch: --expect-keyring-id" in wrong.stderr

            # --- 6: the EncryptionConfiguration and the apiserver ---
            cluster.run_block(README["quickstart-encryption-config"])
            _check_apiserver_fragment(README["quickstart-apiserver"])
            apiservers = {node: _apiserver(cluster, node) for node in NODES}
            for node, (api, _) in apiservers.items():
                for i in range(WRITTEN):
                    key, plaintext = _secret(f"{node}-{i}")
                    etcd.put(key.encode(), api.store(key, plaintext))
                    expected[key] = plaintext

            # --- 7: rewrite and prove it; the audit fails first (plaintext is left), then passes ---
            block = README["quickstart-rewrite"]
            audit = shell_commands(block.body)[-1]
            assert audit.startswith("kubeshield etcd audit")
            before = cluster.run("node-a", audit, substitutions=etcd_subs)
            assert before.returncode == 1, before.stdout + before.stderr
            assert f"plaintext: {BEFORE}  stale: {BEFORE}  errors: 0" in before.stdout
            runs = cluster.run_block(block, substitutions=etcd_subs)
            plan, applied, proof = (r for _, _, r in runs)
            total = BEFORE + WRITTEN * len(NODES)
            assert f"rewrite to kubeshield: {total - BEFORE} skipped, {BEFORE} would-rewrite" in plan.stderr
            assert f"rewrite to kubeshield: {BEFORE} rewritten, {total - BEFORE} skipped" in applied.stderr
            assert f"{total} keys" in proof.stdout and "plaintext: 0  stale: 0  errors: 0" in proof.stdout

            stored = {key: etcd.get(key.encode()).value for key in expected}  # type: ignore[union-attr]
            assert all(v.startswith(b"k8s:enc:kms:v2:kubeshield:") for v in stored.values())
            for node, (api, client) in apiservers.items():  # every Secret, through each node's plugin
                api.restart()
                api.probe()
                api.etcd.update(stored)
                for key, plaintext in expected.items():
                    assert api.read(key)[0] == plaintext, (node, key)
                assert api.decrypt_calls >= 1
                client.close()
            assert decode_object(expected["/registry/secrets/default/before-0"]).kind == "Secret"

            _serve_the_configuration_reference(cluster, services, ops, ports, stored)
        finally:
            services.stop_all()
    for node in NODES:  # JSON log lines, none of them an error, no passphrase in them
        log = services.log(node)
        records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        assert records and not [r for r in records if r["level"] in ("error", "critical")], log[-3000:]
        assert f"serving KMS v2 on {services.socket(node)}" in log
        for secret in passphrases:
            assert secret.strip().decode() not in log


def _serve_the_configuration_reference(
    cluster: Cluster,
    services: Services,
    ops: Path,
    ports: dict[str, dict[str, str]],
    stored: dict[str, bytes],
) -> None:
    """README "Configuration file": its example, with the emergency keyring it names, serves as written."""
    assert services.stop("node-a") == 0  # SIGTERM: a clean stop
    node_a = Cluster(cluster.base, ["node-a"], recipients=cluster.recipients, cwd=cluster.cwd)
    node_a.run_block(README["config-emergency"], substitutions={"ops-1.agekey": str(ops)})
    emergency = cluster.path("node-a", "/var/lib/kubeshield/emergency-keyring")
    info = KeyringFile(emergency).read_info()
    assert info.protected and stat.S_IMODE(emergency.stat().st_mode) == 0o600
    assert stat.S_IMODE(cluster.path("node-a", "/etc/kubeshield/emergency-pass").stat().st_mode) == 0o600
    reference = README["config-reference"]
    assert reference.target == "/etc/kubeshield/kubeshield.yaml"
    node_a.write_file(reference, node_substitutions=ports)
    services.start("node-a")
    api, client = _apiserver(cluster, "node-a")
    with client:
        api.etcd.update(stored)
        assert all(api.read(key)[0] for key in stored)
