"""deploy/systemd/kubeshield-kms.service: systemd itself loads it cleanly, it is hardened, and it runs what
the static pod runs, with the files the README's configuration names.

No systemd manager runs here (PID 1 is not systemd), but `systemd-analyze` works offline: ``verify`` loads
the unit against an image root that holds the distribution's own units and an executable at the unit's
ExecStart path, and ``security --offline`` scores its sandbox. That the service *starts* and serves is
tests/integration/docs/test_readme_quickstart.py (from the unit's ExecStart line).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kubeshield.config import settings_from_mapping
from tests.integration.docs._unit import Unit, parse_unit
from tests.support.docs import doc_blocks

REPO = Path(__file__).resolve().parents[3]
UNIT_FILE = REPO / "deploy" / "systemd" / "kubeshield-kms.service"
STATIC_POD = REPO / "deploy" / "static-pod" / "kubeshield-kms.yaml"
EXPOSURE_LIMIT = 2.0  # systemd-analyze security's 0-10 scale; below 2.0 is "OK"


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is not installed: apt-get install -y systemd", pytrace=False)
    return found


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A root directory as a node has it: the distribution's units and the kubeshield the unit runs."""
    root = tmp_path_factory.mktemp("systemd-root")
    units = next(
        (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()), None
    )
    if units is None:
        pytest.fail("no systemd units on this machine: apt-get install -y systemd", pytrace=False)
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    binary = root / "usr/local/bin/kubeshield"  # README step 1 links it there
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    yield root


def _verify(root: Path, text: str) -> subprocess.CompletedProcess[str]:
    (root / "etc/systemd/system/kubeshield-kms.service").write_text(text)
    return subprocess.run(
        [
            _systemd_analyze(), "verify", "--man=no", "--generators=no", f"--root={root}",
            "/etc/systemd/system/kubeshield-kms.service",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_systemd_loads_the_unit_without_a_warning(image_root: Path) -> None:
    result = _verify(image_root, UNIT_FILE.read_text())
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_a_unit_systemd_would_ignore_lines_of_is_caught(image_root: Path) -> None:
    broken = UNIT_FILE.read_text().replace("ProtectSystem=strict", "ProtectSystem=strct")
    result = _verify(image_root, broken.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    assert "Failed to parse protect system value" in result.stderr
    assert "Unknown key 'NoNewPrivilege'" in result.stderr


def _exposure(path: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    threshold = f"--threshold={int(EXPOSURE_LIMIT * 10)}"  # the 0-100 scale
    result = subprocess.run(
        [_systemd_analyze(), "security", "--offline=yes", threshold, str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout + result.stderr)
    assert match is not None, result.stdout + result.stderr
    return float(match[1]), result


def test_the_unit_is_hardened(tmp_path: Path) -> None:
    exposure, result = _exposure(UNIT_FILE)
    assert exposure <= EXPOSURE_LIMIT and result.returncode == 0, result.stdout[-3000:]
    unit = parse_unit(UNIT_FILE)
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RuntimeDirectory": "kubeshield",
        "RuntimeDirectoryMode": "0700",
        "RuntimeDirectoryPreserve": "yes",
        "UMask": "0077",
        "Type": "exec",
    }.items():
        assert unit.value("Service", key) == value, key
    assert unit.values("Service", "CapabilityBoundingSet") == []  # set empty: no capability at all
    assert not [k for _, k, _ in unit.entries if k in ("ReadWritePaths", "StateDirectory")]  # reads only
    # the same unit without its sandbox scores far worse: the score measures what the settings do
    bare = tmp_path / "kubeshield-kms.service"
    bare.write_text(f"[Service]\nType=exec\nExecStart={' '.join(unit.exec_start)}\n")
    assert _exposure(bare)[0] > 8.0


def _quickstart_settings() -> object:
    block = doc_blocks(REPO / "README.md")["quickstart-config"]
    return settings_from_mapping(yaml.safe_load(block.body))


def _argv(unit: Unit) -> list[str]:
    """ExecStart as the static pod writes it: ``--flag=value`` words."""
    out: list[str] = []
    words = unit.exec_start[1:]
    i = 0
    while i < len(words):
        word = words[i]
        if (
            word.startswith("--")
            and "=" not in word
            and i + 1 < len(words)
            and not words[i + 1].startswith("-")
        ):
            out.append(f"{word}={words[i + 1]}")
            i += 2
        else:
            out.append(word)
            i += 1
    return out


def test_the_static_pod_runs_what_the_unit_runs_with_the_readme_files() -> None:
    unit = parse_unit(UNIT_FILE)
    (pod,) = [d for d in yaml.safe_load_all(STATIC_POD.read_text()) if d]
    (container,) = pod["spec"]["containers"]
    assert container["command"][0] == "kubeshield" and unit.exec_start[0] == "/usr/local/bin/kubeshield"
    assert [*container["command"][1:], *container["args"]] == _argv(unit)
    config = Path(next(a for a in _argv(unit) if a.startswith("--config=")).split("=", 1)[1])
    assert config == Path("/etc/kubeshield/kubeshield.yaml")  # the file README step 2 writes
    settings = _quickstart_settings()
    keys, kms = settings.keys, settings.kms  # type: ignore[attr-defined]
    needed = {
        config.parent: True,
        Path(keys.local.keyring).parent: True,
        Path(keys.local.passphrase_file).parent: True,
        Path(kms.socket).parent: False,  # the only one the plugin writes (its socket)
    }
    host = {v["name"]: v["hostPath"]["path"] for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: (host[m["name"]], m.get("readOnly", False)) for m in container["volumeMounts"]}
    for directory, read_only in needed.items():
        assert mounts.get(str(directory)) == (str(directory), read_only), directory
    # the socket directory is the unit's RuntimeDirectory (/var/run is /run)
    assert [f"/var/run/{name}" for name, _ in unit.runtime_directories] == [str(Path(kms.socket).parent)]
    port = int(kms.health_addr.rsplit(":", 1)[1])
    assert (
        container["livenessProbe"]["httpGet"]["port"]
        == container["readinessProbe"]["httpGet"]["port"]
        == port
    )
