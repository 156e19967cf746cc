"""``kubeshield keys init --config`` for pkcs11, transit and awskms, against the real servers (issue 15 #6).

Each test runs the CLI's ``main`` in this process (the SoftHSM2 tokens of the session are visible only
to processes started after them; the quick-start test runs the real console script end to end).
"""

# ruff: noqa: F811  (pytest fixtures imported from tests.support.openbao are re-bound as arguments)

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import boto3
import pkcs11
import pytest
from pkcs11 import Attribute, ObjectClass

from kubeshield.cli import main
from kubeshield.keys.pkcs11 import Pkcs11KeyBackend
from tests.support.moto import MotoServer
from tests.support.openbao import BaoServer, openbao, write_secret_file  # noqa: F401
from tests.support.softhsm import SoftHsm, unique_label


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


# -- pkcs11 -----------------------------------------------------------------------------------------------


def _pkcs11_config(tmp_path: Path, softhsm: SoftHsm, label: str, *, token: str = "ks-main") -> Path:
    pin = write_secret_file(tmp_path / "pin", softhsm.tokens[token].pin.decode())
    config = tmp_path / "kubeshield.yaml"
    config.write_text(
        "keys:\n  backend: pkcs11\n"
        f"  pkcs11: {{module: {softhsm.module}, token: {token}, pinFile: {pin}, keyLabel: {label}}}\n"
    )
    return config


def test_pkcs11_init_generates_a_sensitive_never_extractable_kek_in_the_token(
    softhsm: SoftHsm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    label = unique_label()
    config = _pkcs11_config(tmp_path, softhsm, label)
    code, out, err = _run(capsys, "keys", "init", "--config", str(config))
    assert code == 0, err
    assert "Created KEK: PKCS#11 token 'ks-main'" in out and f"key label '{label}'" in out
    key_id = re.search(r"primary key_id: (\S+)", out)
    assert key_id is not None and key_id.group(1).startswith("pkcs11:") and f":{label}:v1-" in key_id.group(1)
    assert "ok  encrypt and decrypt in the token" in out
    assert softhsm.tokens["ks-main"].pin.decode() not in out + err

    token = pkcs11.lib(softhsm.module).get_token(token_label="ks-main")
    with token.open(user_pin=softhsm.tokens["ks-main"].pin.decode()) as session:
        keys = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}))
        assert len(keys) == 1
        attrs = keys[0].get_attributes(
            [Attribute.SENSITIVE, Attribute.EXTRACTABLE, Attribute.TOKEN, Attribute.VALUE_LEN, Attribute.WRAP]
        )
    assert attrs[Attribute.SENSITIVE] is True and attrs[Attribute.EXTRACTABLE] is False
    assert (
        attrs[Attribute.TOKEN] is True and attrs[Attribute.VALUE_LEN] == 32 and attrs[Attribute.WRAP] is False
    )

    # the plugin can use it as it is
    backend = Pkcs11KeyBackend(
        module=softhsm.module, token="ks-main", pin=softhsm.tokens["ks-main"].pin, key_label=label
    )
    try:
        assert backend.key_id() == key_id.group(1)
    finally:
        backend.close()


def test_pkcs11_init_refuses_an_existing_key_unless_told(
    softhsm: SoftHsm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    label = unique_label()
    config = _pkcs11_config(tmp_path, softhsm, label)
    assert _run(capsys, "keys", "init", "--config", str(config))[0] == 0
    code, out, err = _run(capsys, "keys", "init", "--config", str(config))
    assert code == 1
    assert f"already holds a key labelled '{label}'" in err and "--exist-ok" in err
    code, out, err = _run(capsys, "keys", "init", "--config", str(config), "--exist-ok")
    assert code == 0, err
    assert "Checked existing KEK" in out and "1 version(s)" in out  # nothing was added or replaced
    code, _, err = _run(capsys, "keys", "init", "--config", str(config), "--force")
    assert code == 2 and "never replaces or deletes keys in the pkcs11 backend" in err


def test_pkcs11_init_with_a_wrong_pin_creates_nothing(
    softhsm: SoftHsm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    label = unique_label()
    config = _pkcs11_config(tmp_path, softhsm, label, token="ks-pin")
    (tmp_path / "pin").write_text("not-the-pin\n")
    code, _, err = _run(capsys, "keys", "init", "--config", str(config))
    assert code == 1 and "BackendAuthError" in err and "not-the-pin" not in err


# -- transit ----------------------------------------------------------------------------------------------


def _transit_config(
    tmp_path: Path, server: BaoServer, key: str, token: str, *, mount: str = "transit"
) -> Path:
    token_file = write_secret_file(tmp_path / f"token-{secrets.token_hex(3)}", token)
    config = tmp_path / f"kubeshield-{secrets.token_hex(3)}.yaml"
    config.write_text(
        "keys:\n  backend: transit\n"
        f"  transit: {{address: '{server.address}', mount: {mount}, key: {key}, "
        f"auth: {{method: token, tokenFile: {token_file}}}}}\n"
    )
    return config


def test_transit_init_creates_a_missing_key_when_the_token_may(
    openbao: BaoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = "k-" + secrets.token_hex(5)
    config = _transit_config(tmp_path, openbao, key, openbao.root_token)
    code, out, err = _run(capsys, "keys", "init", "--config", str(config))
    assert code == 0, err
    assert f"Created KEK: transit key transit/{key}" in out
    info = openbao.api("GET", f"transit/keys/{key}")["data"]
    assert info["type"] == "aes256-gcm96"
    assert f"primary key_id: transit:transit/{key}:v1-{info['keys']['1']}" in out
    assert "ok  rotate" in out
    code, out, err = _run(capsys, "keys", "init", "--config", str(config))  # again: checked, unchanged
    assert code == 0 and "Checked existing KEK" in out
    assert openbao.api("GET", f"transit/keys/{key}")["data"]["latest_version"] == 1
    assert openbao.root_token not in out + err


def test_transit_init_with_the_plugins_token_names_the_bao_command(
    openbao: BaoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = "k-" + secrets.token_hex(5)
    rules = (
        f'path "transit/encrypt/{key}" {{ capabilities = ["update"] }}\n'
        f'path "transit/decrypt/{key}" {{ capabilities = ["update"] }}\n'
        f'path "transit/keys/{key}" {{ capabilities = ["read"] }}\n'
    )
    openbao.api("PUT", f"sys/policies/acl/p-{key}", {"policy": rules})
    token = openbao.create_token(policies=[f"p-{key}"])
    config = _transit_config(tmp_path, openbao, key, token)
    code, _, err = _run(capsys, "keys", "init", "--config", str(config))
    assert code == 1
    assert f"may not create it; as an operator, run: bao write transit/keys/{key} type=aes256-gcm96" in err
    openbao.create_key(key)  # the operator runs it
    code, out, err = _run(capsys, "keys", "init", "--config", str(config))
    assert code == 0, err
    assert "Checked existing KEK" in out
    assert "ok  encrypt and decrypt with this token" in out
    assert "ok  read the key" in out and "NO  rotate (`kubeshield keys rotate`): deny" in out
    assert token not in out + err


def test_transit_init_names_the_missing_mount(
    openbao: BaoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _transit_config(tmp_path, openbao, "kubeshield", openbao.root_token, mount="nomount")
    code, _, err = _run(capsys, "keys", "init", "--config", str(config))
    assert code == 1 and "bao secrets enable -path=nomount transit" in err


def test_transit_init_refuses_plain_http_to_another_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = write_secret_file(tmp_path / "token", "s.whatever")
    config = tmp_path / "kubeshield.yaml"
    config.write_text(
        "keys:\n  backend: transit\n"
        f"  transit: {{address: 'http://openbao:8200', auth: {{method: token, tokenFile: {token}}}}}\n"
    )
    code, _, err = _run(capsys, "keys", "init", "--config", str(config))
    assert code == 1 and "keys.transit.address: http:// is allowed for loopback addresses only" in err


# -- awskms -----------------------------------------------------------------------------------------------


def _aws_config(tmp_path: Path, server: MotoServer, key_id: str) -> Path:
    config = tmp_path / f"kubeshield-{secrets.token_hex(3)}.yaml"
    config.write_text(
        "keys:\n  backend: awskms\n"
        f"  awskms: {{keyId: '{key_id}', region: us-east-1, endpointUrl: '{server.endpoint}'}}\n"
    )
    return config


def test_awskms_init_creates_the_key_behind_an_alias(
    moto_server: MotoServer, aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alias = "alias/ks-" + secrets.token_hex(4)
    config = _aws_config(tmp_path, moto_server, alias)
    code, out, err = _run(capsys, "keys", "init", "--config", str(config))
    assert code == 0, err
    client: Any = boto3.client("kms", region_name="us-east-1", endpoint_url=moto_server.endpoint)
    meta = client.describe_key(KeyId=alias)["KeyMetadata"]
    assert meta["KeySpec"] == "SYMMETRIC_DEFAULT" and meta["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert f"Created KEK: AWS KMS key {meta['Arn']} (alias {alias})" in out
    assert f"primary key_id: awskms:{meta['Arn']}:1" in out
    assert "ok  encrypt and decrypt with these credentials" in out
    code, out, err = _run(capsys, "keys", "init", "--config", str(config))
    assert code == 0 and "Checked existing KEK" in out
    assert len([a for a in client.list_aliases()["Aliases"] if a["AliasName"] == alias]) == 1


def test_awskms_init_of_a_missing_key_id_says_how_to_create_one(
    moto_server: MotoServer, aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"
    code, _, err = _run(capsys, "keys", "init", "--config", str(_aws_config(tmp_path, moto_server, missing)))
    assert code == 1
    assert "aws kms create-key --region us-east-1 --key-spec SYMMETRIC_DEFAULT" in err
    assert "set keys.awskms.keyId to its ARN" in err
