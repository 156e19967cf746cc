"""The backup CronJob after a rotation (issue 16 item 6): the keyring is set up for uid 65532 as
deploy/backup-cronjob.yaml says, `keys rotate` runs as root, and the CronJob's own command, run as
uid 65532, still backs up every version (it failed before: rotate reset the file to root:root 0600)."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyrage
import pytest
import yaml

from kubeshield.keys import backup as backups
from kubeshield.keys.keyring import KeyringFile

REPO = Path(__file__).resolve().parents[3]
UID = 65532


@pytest.fixture
def node() -> Iterator[Path]:
    """A node root that uid 65532 can reach (pytest's tmp_path sits under a 0700 directory)."""
    base = Path(tempfile.mkdtemp(prefix="kubeshield-cronjob-"))
    base.chmod(0o711)
    try:
        yield base
    finally:
        shutil.rmtree(base)


def _cronjob() -> tuple[str, dict[str, str], dict[str, int]]:
    """The container's shell command, its env, and the pod's uid/gid/fsGroup, from the manifest."""
    docs = list(yaml.safe_load_all((REPO / "deploy" / "backup-cronjob.yaml").read_text()))
    job = next(d for d in docs if d["kind"] == "CronJob")
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["/bin/sh", "-ec"]
    env = {e["name"]: e["value"] for e in container["env"]}
    return container["args"][0], env, pod["securityContext"]


def _as_job(
    node: Path, command: str, env: dict[str, str], groups: list[int]
) -> subprocess.CompletedProcess[str]:
    """Run the job's `kubeshield ...` command as uid 65532 (imports first: the interpreter is under /root)."""
    argv = shlex.split(command.replace("$(date -u +%Y%m%dT%H%M%SZ)", "20260101T000000Z"))
    assert argv[0] == "kubeshield"
    argv = [a.replace("/var/lib/", f"{node}/var/lib/").replace("/etc/", f"{node}/etc/")
            .replace("/backup/", f"{node}/backup/") for a in argv[1:]]  # fmt: skip
    script = (
        "import os, sys\n"
        "from kubeshield.cli import main\n"
        "import kubeshield.keys.backup, kubeshield.keys.keyring, kubeshield.keys.passphrase, pyrage\n"
        f"os.setgroups({groups!r}); os.setgid({UID}); os.setuid({UID})\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    job_env = {k: v for k, v in os.environ.items() if not k.startswith("KUBESHIELD_")}
    job_env |= {k: v.replace("/etc/", f"{node}/etc/") for k, v in env.items()}
    job_env["PYTHONPATH"] = str(REPO / "src")
    return subprocess.run(
        [sys.executable, "-c", script, *argv],
        capture_output=True,
        text=True,
        env=job_env,
        timeout=120,
        check=False,
    )


def test_the_backup_job_still_reads_the_keyring_after_a_root_rotation(node: Path) -> None:
    command, env, security = _cronjob()
    assert security["runAsUser"] == UID and security["fsGroup"] == UID
    keyring_dir, keyring = node / "var/lib/kubeshield", node / "var/lib/kubeshield/keyring"
    passphrase = node / "etc/kubeshield-passphrase/passphrase"
    recipients = node / "etc/kubeshield-backup/recipients.txt"
    for d in (passphrase.parent, recipients.parent, node / "backup"):
        d.mkdir(parents=True, mode=0o755)
    os.chown(node / "backup", UID, UID)
    passphrase.write_text("cronjob passphrase\n")
    os.chown(passphrase, 0, UID)  # a Secret volume with defaultMode 0400 under fsGroup: 0440 root:65532
    passphrase.chmod(0o440)
    identity = pyrage.x25519.Identity.generate()
    recipients.write_text(f"# ops\n{identity.to_public()}\n")

    KeyringFile(keyring).create(passphrase=b"cronjob passphrase")  # keys init as root: dir 0700, file 0600
    os.chown(keyring, UID, UID)  # the manifest's set-up, once
    os.chown(keyring_dir, 0, UID)
    keyring_dir.chmod(0o750)
    rotated = KeyringFile(keyring).rotate(passphrase=b"cronjob passphrase")  # as root, later
    st = os.stat(keyring)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (UID, UID, 0o600)

    result = _as_job(node, command, env, groups=[UID])
    assert result.returncode == 0, result.stderr
    (made,) = (node / "backup").glob("kubeshield-keyring-*.age")
    assert os.stat(made).st_uid == UID and stat.S_IMODE(os.stat(made).st_mode) == 0o600
    contents = backups.decrypt_backup(made.read_bytes(), identities=[str(identity)])
    assert [v.key_id for v in contents.versions] == [v.key_id for v in rotated.info.versions]
