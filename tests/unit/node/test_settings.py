"""The node: section of the config file: defaults, camelCase, unknown fields and bad values named."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeshield.errors import ConfigError
from kubeshield.node.ratelimit import RateLimiter
from kubeshield.node.settings import load_node_config, node_config_from_mapping


def test_a_full_config(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(
        """
keys: {backend: local, local: {keyring: /k}}
node:
  sealingKeys: /var/lib/ks/node.json
  audience: ks
  release: {listen: "127.0.0.1:9443", tokenReviewCacheTtl: 5s, tls: {cert: /c, key: /k, clientCA: /ca}}
  client: {url: "https://r:8443", caFile: /ca, timeout: 3s}
  csi: {mode: local, hmacKeyFile: /h}
  stores:
    bao: {type: openbao, address: "http://127.0.0.1:8200", authMount: k8s}
    aws: {type: aws, region: eu-west-1, endpointUrl: "http://127.0.0.1:5000"}
  injector: {image: "img:1", namespace: ks, releaseUrl: "https://r:8443"}
"""
    )
    config = load_node_config(path)
    node = config.node
    assert config.settings.keys.local.keyring == Path("/k")
    assert node.audience == "ks" and node.release.token_review_cache_ttl == 5.0
    assert node.release.tls is not None and node.release.tls.client_ca == Path("/ca")
    assert node.client is not None and node.client.timeout == 3.0 and node.csi.mode == "local"
    assert node.stores["bao"].auth_mount == "k8s" and node.stores["aws"].region == "eu-west-1"
    assert node.injector.image == "img:1"
    defaults = node_config_from_mapping({})
    assert defaults.node.audience == "kubeshield" and defaults.node.release.require_pod_bound is True


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"node": {"audiance": "x"}}, "node.audiance: unknown field"),
        ({"node": {"release": {"tokenReviewCacheTtl": "10m"}}}, "0s..5m"),
        ({"node": {"release": {"listen": "nope"}}}, "node.release.listen"),
        ({"node": {"release": {"requirePodBound": "yes"}}}, "true or false"),
        ({"node": {"release": {"token": "x"}}}, "secrets are never read"),
        ({"node": {"client": {"url": "ftp://x"}}}, "node.client.url"),
        ({"node": {"client": {"url": "https://x", "cert": "/c"}}}, "cert and key go together"),
        ({"node": {"csi": {"mode": "remote"}}}, "release, local"),
        ({"node": {"stores": {"bao": {"type": "openbao"}}}}, "address: required"),
        ({"node": {"stores": {"Bad": {"type": "aws"}}}}, "DNS labels"),
        ({"node": {"stores": {"a": {"type": "aws", "address": "http://x"}}}}, "openbao stores only"),
        ({"node": {"injector": {"tokenExpirationSeconds": 60}}}, "600..86400"),
        ({"kms": {"sockett": "/x"}}, "kms.sockett: unknown field"),
    ],
)
def test_errors_name_the_field(doc, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        node_config_from_mapping(doc)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_node_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("node: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML at line"):
        load_node_config(bad)


def test_rate_limiter_buckets() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2, burst=3, clock=lambda: now[0], max_keys=2)
    assert [limiter.allow("a")[0] for _ in range(4)] == [True, True, True, False]
    ok, wait = limiter.allow("a")
    assert not ok and wait == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.allow("a")[0] and not limiter.allow("a")[0]
    assert limiter.allow("b")[0] and limiter.allow("c")[0]  # "a" is dropped (LRU): only ever more generous
    with pytest.raises(ValueError):
        RateLimiter(rate=0, burst=1)


def _sections(host: str) -> list[tuple[dict, str]]:
    return [
        ({"client": {"url": f"http://{host}:8443"}}, "node.client.url"),
        (
            {"stores": {"bao": {"type": "openbao", "address": f"http://{host}:8200"}}},
            "node.stores.bao.address",
        ),
        ({"injector": {"releaseUrl": f"http://{host}:8443"}}, "node.injector.releaseUrl"),
    ]


@pytest.mark.parametrize(("section", "field"), _sections("release.example"))
def test_plain_http_is_refused_off_loopback_where_tokens_travel(section, field):
    with pytest.raises(ConfigError, match=f"{field}: http:// is allowed for loopback addresses only"):
        node_config_from_mapping({"node": section})


@pytest.mark.parametrize(("section", "field"), _sections("127.0.0.1"))
def test_plain_http_stays_allowed_on_loopback(section, field):
    node_config_from_mapping({"node": section})  # tests and a node-local agent


def test_a_node_section_is_part_of_kubeshield_yaml_for_every_command(tmp_path):
    """kms serve and seal read the same file as node: a node: section is not an unknown field."""
    from kubeshield.config import load_config

    path = tmp_path / "kubeshield.yaml"
    path.write_text("kms: {socket: /tmp/k.sock}\nnode: {audience: kubeshield, csi: {mode: local}}\n")
    assert load_config(path).node.csi.mode == "local"
