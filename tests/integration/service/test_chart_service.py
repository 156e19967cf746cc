"""The Helm chart's replicas and the rendered relay static pod, run as real processes with the exact
arguments the checked-in renders give (only the container mount roots, addresses and ports are rebased
onto this machine), against a real TLS etcd that is stopped and started again by PID.

1. The operator publishes the cluster keyring once with the documented commands (``keys init``, then
   ``keys sync --from local``); the three replicas start with *empty* keyring paths (the chart's
   emptyDir) and adopt it from etcd. Nothing pre-copies a keyring file.
2. etcd is stopped for longer than the old staleness limit: Status, Encrypt and Decrypt through the relay
   keep working and every replica stays ready (issue 16 item 7).
3. etcd is back: ``keys rotate --etcd-endpoints`` rotates through the compare-and-swap and the relay
   reports the new key once every replica serves it.
4. Two replicas are rotated locally during another outage: when etcd returns exactly one of them has
   diverged, is unready and out of the relay's agreement; ``keys sync --from etcd`` (with --allow-drop,
   after it refused and named the version) resolves it.

Only correctness is asserted; the waits are bounded conditions, never timings.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kubeshield.cli import cli
from kubeshield.keys.keyring import KeyringFile
from kubeshield.kms.client import KMSv2Client
from tests.support.etcd import EtcdServer, TLSFiles, short_socket_dir
from tests.support.service import Proc, free_port, make_certs, wait_until

ROOT = Path(__file__).resolve().parents[3]
RENDERED = ROOT / "deploy" / "helm" / "kubeshield-rendered.yaml"
RELAY_POD = ROOT / "deploy" / "static-pod" / "kubeshield-relay.yaml"
PASS = b"chart-test passphrase, never logged"
pytestmark = pytest.mark.slow
# deadline of every call and probe: generous, so a failure means an error or a refusal, not a slow machine
# (the suite runs on 2 loaded cores); nothing here asserts how long anything took
PATIENCE = 30.0


def chart_replica_args() -> list[list[str]]:
    """``command[1:] + args`` of every replica Deployment in the rendered chart, in order."""
    docs = [d for d in yaml.safe_load_all(RENDERED.read_text()) if d]
    out = []
    for doc in docs:
        if doc["kind"] == "Deployment":
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            out.append([*container["command"][1:], *container["args"]])
    return out


def relay_pod_args() -> list[str]:
    (pod,) = [d for d in yaml.safe_load_all(RELAY_POD.read_text()) if d]
    (container,) = pod["spec"]["containers"]
    return [*container["command"][1:], *container["args"]]


def rebase(args: list[str], *, paths: dict[str, Path], values: dict[str, str]) -> list[str]:
    """Replace a flag's value (``values``) or a mount-root prefix of a path value (``paths``); every
    flag the chart gives stays, and a flag named in ``values`` must be there."""
    out, seen = [], set()
    for arg in args:
        flag, sep, value = arg.partition("=")
        if sep and flag in values:
            seen.add(flag)
            arg = f"{flag}={values[flag]}"
        elif sep:
            for root, local in paths.items():
                if value.startswith(root + "/"):
                    arg = f"{flag}={local}{value[len(root) :]}"
        out.append(arg)
    assert seen == set(values), f"the rendered chart no longer gives {set(values) - seen}"
    return out


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=PATIENCE) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:  # no HTTP answer: say why, for the assertion message
        return 0, f"{type(exc).__name__}: {exc}"


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


@dataclass
class Load:
    """Status, Encrypt and Decrypt through the relay in a loop; every failure is recorded."""

    socket: str
    failures: list[tuple[str, str]] = field(default_factory=list)
    calls: int = 0
    wrong: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with KMSv2Client(self.socket, timeout=PATIENCE) as client:
            while not self.stop.is_set():
                for name in ("status", "encrypt"):
                    try:
                        if name == "status":
                            client.status()
                        else:
                            seed = os.urandom(32)
                            reply = client.encrypt(seed)
                            name = "decrypt"
                            if client.decrypt(reply.ciphertext, key_id=reply.key_id) != seed:
                                self.wrong += 1
                        self.calls += 1
                    except Exception as exc:
                        self.failures.append((name, type(exc).__name__))
                time.sleep(0.02)


@dataclass
class Fleet:
    tmp: Path
    etcd: EtcdServer
    etcd_tls: TLSFiles
    replicas: list[Proc]
    keyrings: list[Path]
    health: list[int]
    relay: Proc
    relay_health: int
    socket: str

    def etcd_flags(self) -> list[str]:
        t = self.etcd_tls
        return ["--etcd-endpoints", self.etcd.endpoint, "--cacert", str(t.ca), "--cert", str(t.client_cert),
                "--key", str(t.client_key)]  # fmt: skip

    def relay_key(self) -> str | None:
        try:
            with KMSv2Client(self.socket, timeout=PATIENCE) as client:
                return client.status().key_id
        except Exception:
            return None

    def ready(self, i: int) -> tuple[int, str]:
        return _get(self.health[i], "/readyz")

    def keys(self) -> list[str]:
        return [KeyringFile(k).read_info().primary.key_id for k in self.keyrings]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    certs = make_certs(tmp_path / "pki")
    relay_cert = certs.ca.issue("relay-chart", dns=("relay.kubeshield.internal",))  # values: allow
    etcd_tls = TLSFiles(tmp_path / "etcd-tls")
    etcd = EtcdServer(tmp_path / "etcd", tls=etcd_tls).start()
    # what the chart mounts: the tls, etcd and passphrase Secrets (0400), an empty keyring dir per replica
    tls_dir, etcd_dir, pass_dir = tmp_path / "tls", tmp_path / "etcd-client", tmp_path / "passphrase"
    for directory, files in (
        (tls_dir, {"tls.crt": certs.server.cert, "tls.key": certs.server.key, "ca.crt": certs.ca.path}),
        (etcd_dir, {"ca.crt": etcd_tls.ca, "tls.crt": etcd_tls.client_cert, "tls.key": etcd_tls.client_key}),
    ):
        directory.mkdir()
        for name, src in files.items():
            shutil.copy(src, directory / name)
            (directory / name).chmod(0o400)
    pass_dir.mkdir()
    (pass_dir / "passphrase").write_bytes(PASS)
    (pass_dir / "passphrase").chmod(0o400)
    relay_dir = tmp_path / "relay-tls"
    relay_dir.mkdir()
    for name, src in {"tls.crt": relay_cert.cert, "tls.key": relay_cert.key, "ca.crt": certs.ca.path}.items():
        shutil.copy(src, relay_dir / name)

    # the operator, once: create the cluster keyring and publish it (docs/service-mode.md)
    cluster = tmp_path / "operator" / "cluster-keyring"
    etcd_flags = ["--etcd-endpoints", etcd.endpoint, "--cacert", str(etcd_tls.ca), "--cert",
                  str(etcd_tls.client_cert), "--key", str(etcd_tls.client_key)]  # fmt: skip
    code, out = _cli(
        "keys", "init", "--keyring", str(cluster), "--passphrase-file", str(pass_dir / "passphrase")
    )
    assert code == 0, out
    code, out = _cli("keys", "sync", "--from", "local", "--keyring", str(cluster), "--passphrase-file",
                     str(pass_dir / "passphrase"), *etcd_flags)  # fmt: skip
    assert code == 0 and "published" in out, out

    rendered = chart_replica_args()
    assert len(rendered) == 3
    replicas, keyrings, health = [], [], []
    for i, args in enumerate(rendered):
        data = tmp_path / f"replica{i}"
        data.mkdir()  # the emptyDir: nothing in it
        port, hport = free_port(), free_port()
        health.append(hport)
        keyrings.append(data / "sync" / "keyring")
        argv = rebase(
            args,
            paths={"/var/lib/kubeshield": data, "/etc/kubeshield/tls": tls_dir,
                   "/etc/kubeshield/etcd": etcd_dir, "/etc/kubeshield/passphrase": pass_dir},
            values={"--listen": f"tcp://127.0.0.1:{port}", "--health-addr": f"127.0.0.1:{hport}",
                    "--etcd-endpoints": etcd.endpoint},
        )  # fmt: skip
        replicas.append((argv, port, data))
    procs = [Proc(argv, tmp_path / f"replica{i}.log").start() for i, (argv, _p, _d) in enumerate(replicas)]
    sock = str(short_socket_dir() / "kms.sock")
    relay_health = free_port()
    relay_argv = rebase(
        relay_pod_args(),
        paths={"/etc/kubeshield/relay": relay_dir},
        values={"--socket": sock, "--health-addr": f"127.0.0.1:{relay_health}",
                "--upstream": ",".join(f"https://127.0.0.1:{p}" for _a, p, _d in replicas)},
    )  # fmt: skip
    relay = Proc(relay_argv, tmp_path / "relay.log").start()
    f = Fleet(tmp_path, etcd, etcd_tls, procs, keyrings, health, relay, relay_health, sock)
    try:
        wait_until(lambda: f.relay_key() is not None, bound=90)  # one replica is enough for this
        # and every replica is ready: the test checks each one's /readyz (a replica that is still
        # starting refuses the connection, and on a loaded machine that takes a while)
        wait_until(lambda: all(f.ready(i)[0] == 200 for i in range(3)), bound=90)
        yield f
    finally:
        for p in [relay, *f.replicas]:
            p.stop()
        etcd.stop()
        for p in [relay, *f.replicas]:
            assert PASS.decode() not in p.output()


def _metric(port: int, name: str) -> float | None:
    _c, text = _get(port, "/metrics")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_chart_replicas_adopt_the_keyring_survive_an_outage_rotate_and_resolve_divergence(
    fleet: Fleet,
) -> None:
    f = fleet
    cluster = KeyringFile(f.tmp / "operator" / "cluster-keyring")
    first = cluster.read_info().primary.key_id
    # 1. every replica adopted the published keyring into its empty path (0600 in a 0700 dir)
    wait_until(lambda: all(k.exists() for k in f.keyrings), bound=30)
    for k in f.keyrings:
        assert k.read_bytes() == cluster.path.read_bytes()
        assert k.stat().st_mode & 0o777 == 0o600 and k.parent.stat().st_mode & 0o777 == 0o700
    assert f.relay_key() == first
    assert all("adopted the cluster keyring" in p.output() for p in f.replicas)

    load = Load(f.socket)
    worker = threading.Thread(target=load.run, daemon=True)
    worker.start()
    try:
        # 2. etcd down for longer than the old staleness limit (5 sync intervals = 5 s at the chart's 1 s)
        f.etcd.stop()
        outage_end = time.monotonic() + 7.0
        while time.monotonic() < outage_end:
            assert all(f.ready(i)[0] == 200 for i in range(3)), [f.ready(i) for i in range(3)]
            time.sleep(0.5)
        assert all(_metric(h, "kubeshield_keyring_sync_ok") == 0.0 for h in f.health)  # visible, not fatal
        assert f.relay_key() == first
        f.etcd.start()
        wait_until(lambda: all(_metric(h, "kubeshield_keyring_sync_ok") == 1.0 for h in f.health), bound=30)

        # 3. rotate through etcd (the compare-and-swap), as documented
        code, out = _cli("keys", "rotate", "--passphrase-file", str(f.tmp / "passphrase" / "passphrase"),
                         *f.etcd_flags())  # fmt: skip
        assert code == 0, out
        second = out.split("primary key_id: ")[1].split()[0]
        wait_until(lambda: f.relay_key() == second, bound=30)
        assert f.keys() == [second] * 3
        time.sleep(1.0)  # some load on the new key
    finally:
        load.stop.set()
        worker.join(30)
    assert load.failures == [], load.failures[:10]
    assert load.wrong == 0 and load.calls > 0
    assert all("keyring sync restored" in p.output() for p in f.replicas)

    # 4. an outage during which two replicas are rotated on their own keyring files
    f.etcd.stop()
    for i in (0, 2):
        code, out = _cli("keys", "rotate", "--keyring", str(f.keyrings[i]), "--passphrase-file",
                         str(f.tmp / "passphrase" / "passphrase"))  # fmt: skip
        assert code == 0, out
    f.etcd.start()

    def diverged() -> list[int]:
        return [i for i in range(3) if f.ready(i)[0] == 503 and "diverged" in f.ready(i)[1]]

    wait_until(lambda: len(diverged()) == 1, bound=30)
    (loser,) = diverged()
    winner = 2 - loser
    winner_key = KeyringFile(f.keyrings[winner]).read_info().primary.key_id
    loser_key = KeyringFile(f.keyrings[loser]).read_info().primary.key_id
    wait_until(lambda: f.relay_key() == winner_key, bound=30)  # the loser is out of the agreement
    assert _metric(f.health[loser], "kubeshield_keyring_sync_diverged") == 1.0
    with KMSv2Client(f.socket, timeout=PATIENCE) as client:
        assert client.encrypt(os.urandom(32)).key_id == winner_key

    resolve = ["keys", "sync", "--from", "etcd", "--keyring", str(f.keyrings[loser]), "--passphrase-file",
               str(f.tmp / "passphrase" / "passphrase"), *f.etcd_flags()]  # fmt: skip
    code, out = _cli(*resolve)
    assert code == 1 and loser_key in out and "--allow-drop" in out, out  # names what it would drop
    code, out = _cli(*resolve, "--allow-drop")
    assert code == 0 and f"dropped:    {loser_key}" in out, out
    wait_until(lambda: f.ready(loser)[0] == 200, bound=30)
    assert f.keys() == [winner_key] * 3 and f.relay_key() == winner_key
    records = [json.loads(line) for line in f.replicas[loser].output().splitlines() if line.startswith("{")]
    assert any(r["msg"] == "keyring diverged from etcd" or r["fields"].get("diverged") for r in records)
