"""Loading kubeshield.yaml: the DESIGN.md shape, defaults, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeshield.config import (
    KeysSettings,
    KmsSettings,
    Settings,
    format_duration,
    load_config,
    parse_duration,
    settings_from_mapping,
)
from kubeshield.errors import ConfigError

DESIGN_EXAMPLE = """
kms:
  socket: /var/run/kubeshield/kms.sock
  v1Socket: /var/run/kubeshield/kms-v1.sock      # optional
  healthAddr: 127.0.0.1:8081
  listen: tcp://0.0.0.0:9443                      # service mode only
  tls: {cert: /etc/kubeshield/tls.crt, key: /etc/kubeshield/tls.key, clientCA: /etc/kubeshield/ca.crt}
keys:
  backend: local            # local | pkcs11 | transit | awskms | tpm | custody
  local:   {keyring: /var/lib/kubeshield/keyring, passphraseFile: /etc/kubeshield/passphrase}
  pkcs11:  {module: /usr/lib/softhsm/libsofthsm2.so, token: kubeshield, pinFile: /etc/kubeshield/pin, keyLabel: kubeshield-kek}
  transit: {address: https://openbao:8200, mount: transit, key: kubeshield, caFile: /etc/kubeshield/bao-ca.crt,
            auth: {method: token, tokenFile: /etc/kubeshield/bao-token}}
  awskms:  {keyId: "arn:aws:kms:...", region: eu-west-1, endpointUrl: null}
  tpm:     {tcti: "device:/dev/tpmrm0", keyring: /var/lib/kubeshield/keyring.tpm, pcrs: [7]}
  custody: {socket: /var/run/kubeshield/custody.sock}
  hierarchy: {enabled: auto, maxAge: 24h, maxUses: 100000}   # auto = on for remote backends
  emergency: {keyring: /var/lib/kubeshield/emergency-keyring, passphraseFile: /etc/kubeshield/emergency-pass}
"""  # noqa: E501 (copied verbatim from DESIGN.md)


def _load(tmp_path: Path, text: str) -> Settings:
    (tmp_path / "kubeshield.yaml").write_text(text)
    return load_config(tmp_path / "kubeshield.yaml")


def test_the_design_example_loads(tmp_path: Path) -> None:
    s = _load(tmp_path, DESIGN_EXAMPLE)
    assert s.kms.v1_socket == Path("/var/run/kubeshield/kms-v1.sock")
    assert s.kms.tls is not None and s.kms.tls.client_ca == Path("/etc/kubeshield/ca.crt")
    assert s.keys.local.passphrase_file == Path("/etc/kubeshield/passphrase")
    assert s.keys.pkcs11 is not None and s.keys.pkcs11.key_label == "kubeshield-kek"
    assert s.keys.transit is not None and s.keys.transit.auth.token_file == Path("/etc/kubeshield/bao-token")
    assert s.keys.awskms is not None and s.keys.awskms.endpoint_url is None
    assert s.keys.tpm is not None and s.keys.tpm.pcrs == (7,)
    assert s.keys.hierarchy.max_age == 86400.0 and s.keys.hierarchy.enabled == "auto"
    assert s.keys.emergency is not None


@pytest.mark.parametrize("text", ["", "# nothing\n", "{}\n"])
def test_empty_file_gives_defaults(tmp_path: Path, text: str) -> None:
    s = _load(tmp_path, text)
    assert s == Settings()
    assert s.kms.socket == Path("/var/run/kubeshield/kms.sock")
    assert s.kms.health_addr == "127.0.0.1:8081"
    assert s.keys.backend == "local"


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        KmsSettings().socket = Path("/x")  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"keys": {"local": {"passphraseFlie": "/x"}}}, "keys.local.passphraseFlie: unknown field"),
        ({"kms": {"socket": "/s", "helthAddr": "x"}}, "kms.helthAddr: unknown field"),
        ({"bogus": 1}, "bogus: unknown field"),
        ({"kms": {"healthAddr": 8081}}, "kms.healthAddr: expected a string, got int"),
        ({"kms": {"healthAddr": "localhost"}}, "kms.healthAddr: expected HOST:PORT"),
        ({"kms": {"healthAddr": "127.0.0.1:70000"}}, "kms.healthAddr: expected HOST:PORT"),
        ({"kms": {"socket": 5}}, "kms.socket: expected a file path"),
        ({"kms": "nope"}, "kms: expected a mapping, got string"),
        ({"kms": {"listen": "tcp://0.0.0.0:9443"}}, "kms.tls: required when kms.listen is set"),
        (
            {"kms": {"listen": "http://x:1", "tls": {"cert": "/c", "key": "/k"}}},
            "kms.listen: expected tcp://",
        ),
        ({"kms": {"tls": {"cert": "/c"}}}, "kms.tls.key: required"),
        ({"keys": {"backend": "vault"}}, "keys.backend: must be one of local, pkcs11"),
        ({"keys": {"backend": "pkcs11"}}, "keys.pkcs11: required when keys.backend is pkcs11"),
        ({"keys": {"pkcs11": {"module": "/m"}}}, "keys.pkcs11.token: required"),
        ({"keys": {"hierarchy": {"maxAge": "24x"}}}, "keys.hierarchy.maxAge: invalid duration '24x'"),
        ({"keys": {"hierarchy": {"maxAge": 86400}}}, "keys.hierarchy.maxAge: expected a duration"),
        ({"keys": {"hierarchy": {"maxAge": "0"}}}, "keys.hierarchy.maxAge: must be greater than 0"),
        ({"keys": {"hierarchy": {"maxUses": True}}}, "keys.hierarchy.maxUses: expected an integer, got bool"),
        (
            {"keys": {"hierarchy": {"enabled": "maybe"}}},
            "keys.hierarchy.enabled: must be one of auto, on, off",
        ),
        ({"keys": {"tpm": {"pcrs": [7, "x"]}}}, r"keys.tpm.pcrs\[1\]: expected an integer"),
        ({"keys": {"tpm": {"pcrs": [24]}}}, r"keys.tpm.pcrs\[0\]: PCR index must be in 0..23"),
        ({"keys": {"tpm": {"pcrs": 7}}}, "keys.tpm.pcrs: expected a list"),
        ({"keys": {"local": {"keyring": None}}}, "keys.local.keyring: must not be null"),
        ({"keys": {"local": {"keyring": ""}}}, "keys.local.keyring: must be a non-empty file path"),
        (
            {
                "keys": {
                    "transit": {"address": "https://bao:8200", "auth": {"method": "approle", "roleId": "r"}}
                }
            },
            "keys.transit.auth.secretIdFile: required when auth.method is approle",
        ),
        ({"keys": {"transit": {"address": "bao:8200", "auth": {"tokenFile": "/t"}}}}, "keys.transit.address"),
    ],
)
def test_errors_name_the_field(data: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_mapping(data)


@pytest.mark.parametrize("secret", ["passphrase", "pin", "token", "password", "secretId"])
def test_secrets_in_the_file_are_refused_with_a_hint(secret: str) -> None:
    with pytest.raises(ConfigError, match=f"keys.local.{secret}: unknown field .*secrets are never read"):
        settings_from_mapping({"keys": {"local": {secret: "hunter2"}}})


def test_yes_no_hierarchy_switches() -> None:
    assert settings_from_mapping({"keys": {"hierarchy": {"enabled": True}}}).keys.hierarchy.enabled == "on"
    assert settings_from_mapping({"keys": {"hierarchy": {"enabled": False}}}).keys.hierarchy.enabled == "off"


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"kubeshield.yaml: invalid YAML at line 3"):
        _load(tmp_path, "kms:\n  socket: /x\n  healthAddr: a: b\n")


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.yaml: config file not found"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match=r"kubeshield.yaml: keys.backend"):
        _load(tmp_path, "keys: {backend: nope}\n")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "bin.yaml")


def test_defaults_of_nested_sections() -> None:
    keys = settings_from_mapping({"keys": {"backend": "tpm"}}).keys
    assert keys == KeysSettings(backend="tpm")  # tpm's section is optional: its defaults apply


# --- durations ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("3s", 3.0),
        ("250ms", 0.25),
        ("1m30s", 90.0),
        ("24h", 86400.0),
        ("1.5h", 5400.0),
        ("2us", 2e-6),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "3", "-3s", "3 s", "s", "3d", "1h-1m", "1e3s", "x" * 100])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@given(st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False))
def test_format_then_parse_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=1e-9, abs=1e-9)


@given(st.text(max_size=20))
def test_parse_duration_only_raises_value_error(text: str) -> None:
    try:
        assert parse_duration(text) >= 0
    except ValueError:
        pass


_yaml_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=12) | st.floats(allow_nan=False)
_keys = st.sampled_from(
    [
        "kms",
        "keys",
        "socket",
        "healthAddr",
        "backend",
        "local",
        "keyring",
        "tls",
        "cert",
        "key",
        "pcrs",
        "hierarchy",
        "maxAge",
        "tpm",
        "listen",
        "bogus",
        "enabled",
        "transit",
        "auth",
        "method",
    ]
)
_yaml_values = st.recursive(
    _yaml_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(_keys, _yaml_values, max_size=4))
def test_any_document_gives_settings_or_config_error(data: dict[str, object]) -> None:
    try:
        settings = settings_from_mapping(data)
    except ConfigError as exc:
        assert str(exc)
    else:
        assert isinstance(settings, Settings)


def test_health_addr_none_turns_the_endpoint_off_and_empty_says_to_use_it() -> None:
    assert settings_from_mapping({"kms": {"healthAddr": "none"}}).kms.health_addr == "none"
    with pytest.raises(ConfigError, match=r"kms\.healthAddr: must not be empty"):
        settings_from_mapping({"kms": {"healthAddr": ""}})
