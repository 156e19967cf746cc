"""Faults with real processes: 3 ``kms serve --listen`` replicas (keyrings synced through a real etcd) behind
one ``kms relay``, under continuous Encrypt/Decrypt load: kill a replica, rotate the key, restart it.

The replicas start with empty keyring paths and adopt the cluster keyring the operator published once
(``keys init`` + ``keys sync --from local``); nothing copies a keyring file to them. The rotation goes
through etcd (``keys rotate --etcd-endpoints``), and the killed replica comes back with an empty keyring
path again (a pod rescheduled with a fresh emptyDir).

Prints the figures: wrong plaintexts, failed Decrypts, key-version convergence time, failover time.
Only correctness is asserted (zero wrong plaintexts, zero failed Decrypts while a replica is healthy,
convergence happens); the times are printed, never asserted.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from kubeshield.cli import cli
from kubeshield.kms.client import KMSv2Client
from tests.support.etcd import EtcdServer, short_socket_dir
from tests.support.service import (
    Certs,
    Proc,
    free_port,
    make_certs,
    replica_args,
    upstream_client,
    wait_until,
)

PASS = b"fault-test passphrase"
# deadline of every call and scrape: generous, so a failure means an error, not a slow machine (the suite
# runs on 2 loaded cores); latencies are printed, never asserted
PATIENCE = 30.0
pytestmark = pytest.mark.slow


@dataclass
class Load:
    socket: str
    wrong: int = 0
    encrypts: int = 0
    encrypt_failures: int = 0
    decrypts: int = 0
    decrypt_failures: list[tuple[float, str]] = field(default_factory=list)
    max_decrypt_latency: float = 0.0
    latencies: list[tuple[float, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    kept: list[tuple[bytes, bytes, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def worker(self) -> None:
        with KMSv2Client(self.socket, timeout=PATIENCE) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                seed = os.urandom(32)
                try:
                    reply = client.encrypt(seed)
                except Exception:
                    with self.lock:
                        self.encrypt_failures += 1
                    time.sleep(0.05)
                    continue
                with self.lock:
                    self.encrypts += 1
                    if len(self.kept) < 200:
                        self.kept.append((seed, reply.ciphertext, reply.key_id))
                    old = self.kept[n % len(self.kept)]
                for expect, ciphertext, key_id in ((seed, reply.ciphertext, reply.key_id), old):
                    start = time.monotonic()
                    try:
                        plain = client.decrypt(ciphertext, key_id=key_id)
                    except Exception as exc:
                        with self.lock:
                            self.decrypt_failures.append((start, type(exc).__name__))
                        continue
                    took = time.monotonic() - start
                    with self.lock:
                        self.decrypts += 1
                        self.latencies.append((start, took))
                        self.max_decrypt_latency = max(self.max_decrypt_latency, took)
                        if plain != expect:
                            self.wrong += 1


@dataclass
class Cluster:
    certs: Certs
    keyrings: list[Path]
    passfile: Path
    ports: list[int]
    replicas: list[Proc]
    relay: Proc
    relay_health: int
    socket: str
    etcd: EtcdServer


def _replica_proc(c: Cluster | None, i: int, *, tmp: Path, certs: Certs, keyring: Path, passfile: Path,
                  port: int, etcd: str, health_port: int) -> Proc:  # fmt: skip
    args = replica_args(keyring=keyring, port=port, certs=certs, passphrase_file=passfile, etcd=etcd,
                        health_port=health_port)  # fmt: skip
    return Proc(args, tmp / f"replica{i}.log")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    certs = make_certs(tmp_path / "pki")
    etcd = EtcdServer(tmp_path / "etcd").start()
    passfile = tmp_path / "passphrase"
    passfile.write_bytes(PASS)
    passfile.chmod(0o600)
    keyrings = []
    for i in range(3):
        (tmp_path / f"r{i}").mkdir()
        keyrings.append(tmp_path / f"r{i}" / "keyring")  # empty: adopted from etcd at start
    cluster = tmp_path / "cluster-keyring"
    for args in (["keys", "init", "--keyring", str(cluster), "--passphrase-file", str(passfile)],
                 ["keys", "sync", "--from", "local", "--keyring", str(cluster), "--passphrase-file",
                  str(passfile), "--etcd-endpoints", etcd.endpoint]):  # fmt: skip
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
    ports: list[int] = []
    while len(ports) < 7:  # 3 listen + 3 health + relay health, all distinct
        if (candidate := free_port()) not in ports:
            ports.append(candidate)
    ports, health_ports, relay_health = ports[:3], ports[3:6], ports[6]
    replicas = [
        _replica_proc(
            None,
            i,
            tmp=tmp_path,
            certs=certs,
            keyring=keyrings[i],
            passfile=passfile,
            port=ports[i],
            etcd=etcd.endpoint,
            health_port=health_ports[i],
        ).start()
        for i in range(3)
    ]
    sock = str(short_socket_dir() / "relay.sock")
    relay = Proc(
        ["kms", "relay", "--socket", sock, "--upstream", ",".join(f"https://127.0.0.1:{p}" for p in ports),
         "--tls-cert", str(certs.relay.cert), "--tls-key", str(certs.relay.key), "--ca", str(certs.ca.path),
         "--check-interval", "0.25", "--health-addr", f"127.0.0.1:{relay_health}"],
        tmp_path / "relay.log",
    ).start()  # fmt: skip
    c = Cluster(certs, keyrings, passfile, ports, replicas, relay, relay_health, sock, etcd)
    try:
        wait_until(lambda: _relay_key(c) is not None, bound=60)
        yield c
    finally:
        for p in [relay, *replicas]:
            p.stop()
        etcd.stop()
        for p in [relay, *c.replicas]:
            assert "fault-test passphrase" not in p.output()


def _relay_key(c: Cluster) -> str | None:
    try:
        with KMSv2Client(c.socket, timeout=PATIENCE) as client:
            return client.status().key_id
    except Exception:
        return None


def _replica_key(c: Cluster, i: int) -> str | None:
    client = upstream_client(f"127.0.0.1:{c.ports[i]}", c.certs)
    try:
        return client.status(timeout=PATIENCE).key_id
    except Exception:
        return None
    finally:
        client.close()


def _relay_sees_down(c: Cluster, i: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{c.relay_health}/metrics", timeout=PATIENCE) as r:
            text = r.read().decode()
    except OSError:  # not an answer either way: the caller polls again
        return False
    return f'kubeshield_relay_upstream_healthy{{upstream="127.0.0.1:{c.ports[i]}"}} 0.0' in text


def test_kill_rotate_restart_under_load(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    load = Load(c.socket)
    workers = [threading.Thread(target=load.worker, daemon=True) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        time.sleep(1.5)
        first_key = _relay_key(c)
        assert first_key is not None

        killed_at = time.monotonic()
        c.replicas[0].kill()
        detect = wait_until(lambda: _relay_sees_down(c, 0), bound=20)
        time.sleep(1.0)

        rotated_at = time.monotonic()
        result = CliRunner().invoke(cli, ["keys", "rotate", "--etcd-endpoints", c.etcd.endpoint,
                                          "--passphrase-file", str(c.passfile)])  # fmt: skip
        assert result.exit_code == 0, result.output
        new_key = result.output.split("primary key_id: ")[1].split()[0]
        replicas_converged = wait_until(lambda: all(_replica_key(c, i) == new_key for i in (1, 2)), bound=30)
        relay_converged = wait_until(lambda: _relay_key(c) == new_key, bound=30)
        total_rotation = time.monotonic() - rotated_at
        time.sleep(1.0)

        c.keyrings[0].unlink()  # rescheduled with a fresh emptyDir: it adopts the rotated keyring
        c.replicas[0] = Proc(c.replicas[0].args, tmp_path / "replica0-restarted.log").start()
        restart = wait_until(lambda: _replica_key(c, 0) == new_key, bound=60)
        rejoin = wait_until(lambda: not _relay_sees_down(c, 0), bound=30)
        time.sleep(1.5)
    finally:
        load.stop.set()
        for w in workers:
            w.join(30)

    window = [t for start, t in load.latencies if killed_at <= start <= killed_at + 3.0]
    figures = {
        "encrypts": load.encrypts,
        "decrypts": load.decrypts,
        "wrong plaintexts": load.wrong,
        "failed decrypts": len(load.decrypt_failures),
        "failed encrypts": load.encrypt_failures,
        "relay marks killed replica down (s)": round(detect, 3),
        "max decrypt latency in the 3 s after the kill (s)": round(max(window, default=0.0), 4),
        "max decrypt latency overall (s)": round(load.max_decrypt_latency, 4),
        "rotation -> every live replica serves new key (s)": round(replicas_converged, 3),
        "rotation -> relay reports new key (s)": round(total_rotation, 3),
        "relay wait after replicas converged (s)": round(relay_converged, 3),
        "restarted replica serves new key after start (s)": round(restart, 3),
        "relay sees restarted replica healthy (s)": round(rejoin, 3),
    }
    print("\nservice-mode fault figures:")
    for name, value in figures.items():
        print(f"  {name:52s} {value}")
    assert load.wrong == 0
    assert load.decrypt_failures == [], load.decrypt_failures[:5]
    assert load.decrypts > 0 and load.encrypts > 0
    assert new_key != first_key
