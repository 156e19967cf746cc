"""Shared bits of the etcd integration tests."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench.seed_etcd import seed_etcd
from kubeshield.cli import main
from kubeshield.etcd.client import EtcdClient

#: one entry per stored format the apiserver can produce, plus a rotated key_id and a second aes key
MIX = (
    "identity",
    "aesgcm:key1",
    "aesgcm:key2",
    "aescbc:key1",
    "secretbox:key1",
    "kms-v2:kms-provider@1",
    "kms-v2:kms-provider@2",
    "kms-v2-type0:kms-provider@1",
    "kms-v1:v1prov",
)
EXPECTED_FORMAT = {
    "identity": "plaintext",
    "aesgcm:key1": "aesgcm",
    "aesgcm:key2": "aesgcm",
    "aescbc:key1": "aescbc",
    "secretbox:key1": "secretbox",
    "kms-v2:kms-provider@1": "kms-v2",
    "kms-v2:kms-provider@2": "kms-v2",
    "kms-v2-type0:kms-provider@1": "kms-v2",
    "kms-v1:v1prov": "kms-v1",
}


def seed_mix(etcd: EtcdClient, config: Any, prefix: str, n: int = len(MIX) * 3) -> int:
    return seed_etcd(etcd, n, mix=MIX, config=config, prefix=prefix)


def live_args(command: str, server: Any, prefix: str) -> tuple[str, ...]:
    """``etcd <command> --endpoints <server> --prefix <prefix>``: the start of every live-etcd CLI call."""
    return ("etcd", command, "--endpoints", server.endpoint, "--prefix", prefix)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code, out, _ = run_cli(capsys, *argv)
    return code, json.loads(out)
