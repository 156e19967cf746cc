"""docs/backup.md § 2 (back up a keyring, restore it two ways, the refusal it documents), run as written.

§ 0 (one keyring for the cluster) and the rotation steps run in tests/integration/keys/
test_cluster_keyring_docs.py; this test reuses § 0's preparation blocks for its three nodes. The people
allowed to restore are stand-ins too: each has a directory of their own where ``kubeshield keys
age-keygen`` runs, as it would on their offline machine. The backup is then restored on node-b into what
its configuration names and on node-c into an explicit keyring with a new passphrase; both decrypt what
node-a's keyring wrapped, and a restore that would drop a newer version is refused with the guide's text.
"""

from __future__ import annotations

import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

from kubeshield.keys.keyring import KeyringFile
from kubeshield.keys.local import LocalKeyBackend
from tests.support.docs import Cluster, doc_blocks, fenced_blocks

REPO = Path(__file__).resolve().parents[3]
BACKUP = doc_blocks(REPO / "docs" / "backup.md")
NODES = ["node-a", "node-b", "node-c"]


def test_backup_and_both_restores_as_written(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "nodes", NODES)
    cluster.run_block(BACKUP["cluster-prepare"])
    cluster.write_file(BACKUP["cluster-config"])
    made = cluster.run("node-a", "kubeshield keys init --config /etc/kubeshield/kubeshield.yaml")
    assert made.returncode == 0, made.stderr

    restorers = tmp_path / "restorers"  # ops-1's and ops-2's own machines

    def keygen(node: str, command: str) -> subprocess.CompletedProcess[str]:
        """`keys age-keygen --out ops-1.agekey`, run by each restorer on their machine (once: the block
        has no node marker there, so it comes once per node)."""
        out = shlex.split(command)[-1]
        result = subprocess.CompletedProcess(command, 0, "", "")
        for person in ("ops-1", "ops-2"):
            if person in cluster.recipients:
                continue
            home = restorers / person
            home.mkdir(parents=True, exist_ok=True)
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", command.replace(out, out.replace("ops-1", person))],
                cwd=home, env=cluster.env(), capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            if result.returncode != 0:
                return result
            cluster.add_recipient(person, result.stdout.strip())
        return result

    runs = cluster.run_block(BACKUP["backup"], instead={r"kubeshield keys age-keygen\b": keygen})
    assert [c for n, c, _ in runs if n == "node-a" and "keys backup" in c]  # the backup ran on node-a
    (backup,) = cluster.path("node-a", "/root").glob("keyring-*.age")
    assert re.fullmatch(r"keyring-\d{8}\.age", backup.name)
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    for node in ("node-b", "node-c"):  # "with the backup brought to the node"
        shutil.copy(backup, cluster.path(node, f"/root/{backup.name}"))
    original = KeyringFile(cluster.path("node-a", "/var/lib/kubeshield/keyring")).read_info()

    for block, person in (("restore-config", "ops-1"), ("restore-keyring", "ops-1")):
        cluster.run_block(
            BACKUP[block],
            substitutions={
                "keyring-20260101.age": backup.name,
                "ops-1.agekey": str(restorers / person / "ops-1.agekey"),
            },
        )
    seal = {"node-b": "/etc/kubeshield/passphrase", "node-c": "/etc/kubeshield/new-passphrase"}
    wrapped = LocalKeyBackend(
        path=cluster.path("node-a", "/var/lib/kubeshield/keyring"),
        passphrase=cluster.path("node-a", "/etc/kubeshield/passphrase").read_bytes().strip(),
    ).wrap(b"a seed of thirty-two bytes......", aad=b"/registry/secrets/default/x")
    for node, passphrase_file in seal.items():
        keyring = cluster.path(node, "/var/lib/kubeshield/keyring")
        info = KeyringFile(keyring).read_info()
        assert (info.keyring_id, info.versions_digest) == (original.keyring_id, original.versions_digest)
        assert stat.S_IMODE(keyring.stat().st_mode) == 0o600
        passphrase = cluster.path(node, passphrase_file)
        assert stat.S_IMODE(passphrase.stat().st_mode) == 0o600
        backend = LocalKeyBackend(path=keyring, passphrase=passphrase.read_bytes().strip())
        assert (
            backend.unwrap(wrapped, aad=b"/registry/secrets/default/x") == b"a seed of thirty-two bytes......"
        )

    # the refusal the guide shows: node-b rotated since, and the backup lacks its version 2
    rotated = cluster.run("node-b", "kubeshield keys rotate --config /etc/kubeshield/kubeshield.yaml")
    assert rotated.returncode == 0, rotated.stderr
    v2 = KeyringFile(cluster.path("node-b", "/var/lib/kubeshield/keyring")).read_info().primary.key_id
    forced = shlex.join(
        [
            "kubeshield", "keys", "restore", "--in", f"/root/{backup.name}",
            "--identity-file", str(restorers / "ops-2" / "ops-2.agekey"),
            "--config", "/etc/kubeshield/kubeshield.yaml", "--force",
        ]
    )  # fmt: skip
    refused = cluster.run("node-b", forced)
    assert refused.returncode == 1
    message = " ".join(refused.stderr.split())
    assert (
        f"restoring this backup would drop version(s) 2 ({v2}, primary) of the current keyring; whatever "
        "is stored under them would become unreadable. Back up the current keyring first; to drop them "
        "anyway, pass --allow-drop 2"
    ) in message
    (documented,) = [
        b.body
        for b in fenced_blocks(REPO / "docs" / "backup.md")
        if b.body.startswith("restoring this backup")
    ]
    assert " ".join(documented.split()).replace("local:v2:4be0...", v2) in message
    assert KeyringFile(cluster.path("node-b", "/var/lib/kubeshield/keyring")).read_info().primary.key_id == v2
