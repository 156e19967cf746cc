"""docs/node.md says what the code does: its config loads, its commands use real flags, its examples parse."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from click.testing import CliRunner

from kubeshield.cli import cli
from kubeshield.node.csi.params import parse_mount
from kubeshield.node.identity import Binding, Identity
from kubeshield.node.injector.mutate import InjectorConfig, mutate
from kubeshield.node.sealed import derive_public_key, seal_to_public
from kubeshield.node.settings import node_config_from_mapping

DOC = (Path(__file__).resolve().parents[3] / "docs" / "node.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", DOC, re.S)


def _sealed(ns: str, sa: str) -> str:
    return seal_to_public(
        b"x", binding=Binding(Identity(ns, sa)), public_key=derive_public_key(bytes(32)), key_version=1
    )


def test_the_config_block_loads() -> None:
    block = re.search(r"<!-- test: config -->\n```yaml\n(.*?)```", DOC, re.S)
    assert block is not None
    config = node_config_from_mapping(yaml.safe_load(block.group(1)))
    assert config.node.client is not None and config.node.audience == "kubeshield"


def test_every_node_command_uses_real_flags() -> None:
    commands = 0
    for lang, body in BLOCKS:
        if lang != "sh":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].split("<", 1)[0].split(">", 1)[0].strip()
            if not line.startswith("kubeshield node"):
                continue
            words = line.split()
            sub = [w for w in words[1:4] if not w.startswith("-")]
            help_text = CliRunner().invoke(cli, [*sub, "--help"]).output
            assert "Usage:" in help_text, line
            for flag in [w.split("=")[0] for w in words if w.startswith("--")]:
                assert f"{flag} " in help_text, f"{flag} is not a flag of kubeshield {' '.join(sub)}"
            commands += 1
    assert commands >= 8


def test_the_secret_provider_class_example_parses() -> None:
    (spc,) = [yaml.safe_load(b) for lang, b in BLOCKS if lang == "yaml" and "SecretProviderClass" in b]
    params = dict(spc["spec"]["parameters"])
    params["objects"] = params["objects"].replace("kubeshield:node:v1:...", _sealed("shop", "web"))
    parsed = parse_mount(json.dumps(params), "{}", "420")
    assert [o.kind for o in parsed.objects] == ["sealed", "sealed", "openbao", "aws"]
    assert parsed.objects[1].ref == {"configMap": "sealed-values", "key": "tls-key"}
    assert parsed.objects[2].ref["role"] == "web" and parsed.objects[3].ref["roleArn"].endswith("shop-web")


def test_the_injector_example_injects() -> None:
    (pod_part,) = [yaml.safe_load(b) for lang, b in BLOCKS if lang == "yaml" and "kubeshield.io/inject" in b]
    annotations = pod_part["metadata"]["annotations"]
    annotations["kubeshield.io/secret-db-password"] = _sealed("shop", "web")
    pod = {
        "metadata": pod_part["metadata"],
        "spec": {**pod_part["spec"], "containers": [{"name": "c", "image": "x"}]},
    }
    result = mutate(pod, namespace="shop", config=InjectorConfig(image="i", release_url="https://r"))
    assert any(op["path"] == "/spec/initContainers" for op in result.patch)
