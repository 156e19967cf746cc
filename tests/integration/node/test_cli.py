"""``kubeshield node ...`` as users run it: keys, seal (three ways), unseal (audited), exit codes, env flags,
and the three servers started as processes from a config file, answering, and stopping on SIGTERM."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kubeshield.cli import main
from kubeshield.node.client import ReleaseClient
from kubeshield.node.sealed import parse_sealed
from tests.integration.node.conftest import NodeWorld, write_config
from tests.integration.node.driver import Driver

KUBESHIELD = str(Path(sys.executable).parent / "kubeshield")


def run(capsys, *args: str, stdin: bytes | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        import io

        assert monkeypatch is not None
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def fresh(node_world: NodeWorld, tmp_path: Path) -> Path:
    doc = json.loads(json.dumps(node_world.config_doc))
    doc["node"]["sealingKeys"] = str(tmp_path / "sealing.json")
    return write_config(tmp_path / "node.yaml", doc)


def test_keys_lifecycle(capsys, fresh: Path) -> None:
    assert run(capsys, "node", "keys", "list", "--config", str(fresh))[0] == 1  # no file yet
    code, out, _ = run(capsys, "node", "keys", "init", "--config", str(fresh))
    assert code == 0 and "version 1" in out
    code, _out, err = run(capsys, "node", "keys", "init", "--config", str(fresh))
    assert code == 1 and "would no longer" in err
    assert run(capsys, "node", "keys", "rotate", "--config", str(fresh))[0] == 0
    code, out, _ = run(capsys, "node", "keys", "list", "--config", str(fresh), "-o", "json")
    assert [(r["version"], r["state"]) for r in json.loads(out)] == [(1, "active"), (2, "primary")]
    code, out, _ = run(capsys, "node", "keys", "public-key", "--config", str(fresh), "--version", "1")
    assert json.loads(out)["keyVersion"] == 1


def test_seal_three_ways_and_unseal(capsys, monkeypatch, node_world: NodeWorld, tmp_path: Path) -> None:
    config = str(node_world.config_path)
    value = tmp_path / "value"
    value.write_bytes(b"hunter2\n")
    code, out, _ = run(
        capsys,
        "node",
        "seal",
        "--config",
        config,
        "--namespace",
        "ns-a",
        "--service-account",
        "app",
        "--from-file",
        str(value),
    )
    assert code == 0 and node_world.keys.open(parse_sealed(out.strip())) == b"hunter2\n"
    pub = tmp_path / "pub.json"
    pub.write_text(run(capsys, "node", "keys", "public-key", "--config", config)[1])
    monkeypatch.setenv("KUBESHIELD_NAMESPACE", "ns-a")  # every flag also from the environment
    code, out, _ = run(
        capsys,
        "node",
        "seal",
        "--public-key",
        str(pub),
        "--service-account",
        "app",
        "--selector",
        "app=web",
        stdin=b"offline",
        monkeypatch=monkeypatch,
    )
    sealed = parse_sealed(out.strip())
    assert code == 0 and sealed.mode == 2 and sealed.binding.selector == {"app": "web"}
    assert node_world.keys.open(sealed) == b"offline"
    code, out, _ = run(
        capsys,
        "node",
        "seal",
        "--public-key",
        node_world.release_url,
        "--ca-file",
        str(node_world.ca.path),
        "--service-account",
        "app",
        "--from-file",
        str(value),
    )
    assert code == 0 and node_world.keys.open(parse_sealed(out.strip())) == b"hunter2\n"
    token = tmp_path / "token"
    token.write_text(node_world.api.add_token("bob", ("devs",)))
    code, out, _ = run(
        capsys,
        "node",
        "seal",
        "--url",
        node_world.release_url,
        "--ca-file",
        str(node_world.ca.path),
        "--token-file",
        str(token),
        "--service-account",
        "app",
        "--from-file",
        str(value),
    )
    assert code == 0 and node_world.keys.open(parse_sealed(out.strip())) == b"hunter2\n"
    monkeypatch.delenv("KUBESHIELD_NAMESPACE")

    sealed_file = tmp_path / "s.txt"
    sealed_file.write_text(out)
    code, out, err = run(
        capsys, "node", "unseal", "--config", config, "-f", str(sealed_file), "--reason", "INC-1"
    )
    assert code == 0 and out == "hunter2\n"
    audit = json.loads(
        next(line for line in err.splitlines() if line.startswith("audit ")).removeprefix("audit ")
    )
    assert audit["outcome"] == "opened" and audit["reason"] == "INC-1" and audit["identity"] == "ns-a:app"
    assert "uid" in audit["actor"] and "hunter2" not in err


@pytest.mark.parametrize(
    "args",
    [
        ["node", "seal", "--namespace", "a", "--service-account", "b"],  # no way to seal
        ["node", "seal", "--url", "https://x", "--namespace", "a", "--service-account", "b"],  # no token file
        ["node", "fetch", "--url", "https://x", "--token-file", "t", "--sealed-dir", "d", "--out-dir", "o"],
        ["node", "unseal", "--config", "x"],  # no --reason
    ],
)
def test_usage_errors_exit_2(capsys, args: list[str]) -> None:
    assert run(capsys, *args)[0] == 2


def _start(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [KUBESHIELD, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    end = time.monotonic() + 60
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if line.startswith("ready "):
                return proc, line.split(" ", 1)[1].strip()
        if proc.poll() is not None:
            raise AssertionError(
                f"{args[1]} exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
            )
    proc.kill()
    raise AssertionError(f"{args[1]} did not report ready")


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


def test_the_servers_run_from_the_cli(node_world: NodeWorld, tmp_path: Path) -> None:
    doc = json.loads(json.dumps(node_world.config_doc))
    cert = node_world.ca.issue("cli-servers", ips=("127.0.0.1",), server=True)
    free = __import__("tests.support.openbao", fromlist=["free_port"]).free_port
    doc["node"]["release"]["listen"] = f"127.0.0.1:{free()}"
    doc["node"]["injector"] = {
        "listen": f"127.0.0.1:{free()}",
        "tls": {"cert": str(cert.cert), "key": str(cert.key)},
        "releaseUrl": node_world.release_url,
        "releaseCaFile": str(node_world.ca.path),
    }
    config = write_config(tmp_path / "node.yaml", doc)
    kubeconfig = node_world.api.kubeconfig(tmp_path / "release.kubeconfig", user="kubeshield-release")
    release, url = _start("node", "release-server", "--config", str(config), "--kubeconfig", str(kubeconfig))
    sockets = tmp_path / "providers"
    sockets.mkdir()
    doc["node"]["client"] = {"url": url.removeprefix("url="), "caFile": str(node_world.ca.path)}
    write_config(config, doc)
    provider, _ = _start(
        "node", "csi-provider", "--config", str(config), "--socket", str(sockets / "kubeshield.sock")
    )
    injector, inj_url = _start("node", "injector", "--config", str(config))
    try:
        pod = node_world.pod("ns-a", "app")
        sealed = node_world.seal(b"via-cli", "ns-a", "app")
        client = ReleaseClient(url.removeprefix("url="), ca_file=node_world.ca.path)
        assert client.release(node_world.token(pod), [("a", sealed)]).values == {"a": b"via-cli"}
        client.close()
        node_world.spc("ns-a", "cli", {"objects": yaml.safe_dump([{"objectName": "a", "sealed": sealed}])})
        target = tmp_path / "target"
        target.mkdir()
        Driver(node_world.admin, [sockets]).mount(pod, "cli", target)
        assert (target / "a").read_bytes() == b"via-cli"
        import http.client
        import ssl

        host, port = inj_url.removeprefix("url=https://").split(":")
        conn = http.client.HTTPSConnection(
            host, int(port), context=ssl.create_default_context(cafile=str(node_world.ca.path))
        )
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        errs = [_stop(p) for p in (provider, injector, release)]
    assert not (sockets / "kubeshield.sock").exists()  # the provider removed its own socket
    assert "via-cli" not in "".join(errs)
