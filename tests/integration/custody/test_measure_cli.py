"""``custody measure --pid``: the printed rule, pasted under ``rules:``, admits that program only."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kubeshield.custody.policy import parse_policy

from ._support import CUSTODY_CLI, REPO, env, start_custody, write_keyring
from .test_caller_checks import NOBODY, SCRIPT, SYSTEM_PYTHON, _as, _reaped, _result, _run_caller

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="measures and runs processes of other uids")


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ks-measure-", dir="/tmp"))
    path.chmod(0o755)
    shutil.copy(SCRIPT, path / "caller.py")
    (path / "caller.py").chmod(0o644)
    (path / "out").mkdir()
    (path / "out").chmod(0o1777)
    write_keyring(path / "keyring")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _measure(pid: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CUSTODY_CLI, "measure", "--pid", str(pid), *extra],
        capture_output=True, text=True, cwd=str(REPO), env=env(), timeout=60,
    )  # fmt: skip


def _sleeper(*, uid: int = 0, gid: int = 0) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [SYSTEM_PYTHON, "-c", "import time; time.sleep(120)"], preexec_fn=_as(uid, gid) if uid else None
    )


def test_the_printed_rule_admits_that_program_and_refuses_another_uid(workdir: Path) -> None:
    with _reaped(_sleeper()) as target:
        printed = _measure(target.pid)
        as_json = _measure(target.pid, "-o", "json")
    assert printed.returncode == 0 and as_json.returncode == 0, printed.stderr + as_json.stderr
    facts = json.loads(as_json.stdout)
    real = os.path.realpath(SYSTEM_PYTHON)
    assert (facts["pid"], facts["uid"], facts["gid"], facts["exe"]) == (target.pid, 0, 0, real)
    assert facts["exeSha256"] == hashlib.sha256(Path(real).read_bytes()).hexdigest()
    assert facts["cgroup"] == Path(f"/proc/{os.getpid()}/cgroup").read_text().strip()  # inherited from us
    assert yaml.safe_load(printed.stdout) == [facts["rule"]]
    assert any("interpreter" in note for note in facts["notes"])

    policy = workdir / "policy.yaml"
    policy.write_text("version: 1\nrules:\n" + printed.stdout)  # pasted under rules:, as printed
    assert parse_policy(policy.read_text()).rules[0].exe_sha256 == facts["exeSha256"]
    custody = start_custody(
        keyring=workdir / "keyring", socket=workdir / "custody.sock", policy=policy,
        extra=["--socket-mode", "0666"],
    )  # fmt: skip
    try:
        with _reaped(_run_caller(workdir, "plain")):  # the same interpreter, uid and cgroup
            assert _result(workdir) == "greeting=OK answer=OK"
        with _reaped(_run_caller(workdir, "plain", uid=NOBODY.pw_uid, gid=NOBODY.pw_gid)):
            assert _result(workdir) == "greeting=PERMISSION_DENIED answer=closed"
    finally:
        custody.stop()


def test_another_uid_is_measured_with_its_own_ids(workdir: Path) -> None:
    with _reaped(_sleeper(uid=NOBODY.pw_uid, gid=NOBODY.pw_gid)) as target:
        facts = json.loads(_measure(target.pid, "-o", "json", "--name", "nobody-tool").stdout)
    assert facts["rule"]["name"] == "nobody-tool"
    assert (facts["rule"]["uid"], facts["rule"]["gid"]) == (NOBODY.pw_uid, NOBODY.pw_gid)
    assert facts["exeSha256"] is not None  # we are root: another uid's executable is readable


def test_a_process_that_does_not_exist_is_one_line(workdir: Path) -> None:
    result = _measure(4_000_000)
    assert result.returncode == 1 and result.stderr.strip().startswith("Error: cannot measure process")
    assert "Traceback" not in result.stderr
