"""Every store, both directions, against the real sops 3.11 binary (age key).

* kubeshield encrypts -> ``sops -d`` prints exactly what ``sops -d`` prints for sops' own encryption;
* sops encrypts -> ``kubeshield sops decrypt`` prints exactly what ``sops -d`` prints;
* a tampered file (a value moved, a clear value edited, the MAC edited) is refused by both with exit 51.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.integration.sops.corpus import CASES

pytestmark = pytest.mark.usefixtures("sops")


@pytest.mark.parametrize("name", sorted(CASES))
def test_kubeshield_encrypts_sops_decrypts_the_same(name, tmp_path: Path, sops, ks, age_key) -> None:
    _fmt, text = CASES[name]
    plain = tmp_path / name
    plain.write_text(text)
    ours = tmp_path / f"ours.{name}"
    assert ks(["sops", "encrypt", "--age", age_key.recipient, "--output", str(ours), str(plain)]) == 0
    theirs = sops.ok("encrypt", "--age", age_key.recipient, str(plain))
    theirs_file = tmp_path / f"theirs.{name}"
    theirs_file.write_bytes(theirs)
    expected = sops.ok("decrypt", str(theirs_file))
    assert sops.ok("decrypt", str(ours)) == expected
    assert b"ENC[AES256_GCM" in ours.read_bytes()


@pytest.mark.parametrize("name", sorted(CASES))
def test_sops_encrypts_kubeshield_decrypts_the_same(name, tmp_path: Path, sops, ks, age_key) -> None:
    _fmt, text = CASES[name]
    plain = tmp_path / name
    plain.write_text(text)
    enc = tmp_path / f"enc.{name}"
    enc.write_bytes(sops.ok("encrypt", "--age", age_key.recipient, str(plain)))
    out = tmp_path / "out"
    assert ks(["sops", "decrypt", "--output", str(out), str(enc)]) == 0
    assert out.read_bytes() == sops.ok("decrypt", str(enc))


def test_binary_store_both_ways(tmp_path: Path, sops, ks, age_key) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(5000) + b"\n\x00tail")
    ours = tmp_path / "ours.bin"
    assert ks(["sops", "encrypt", "--age", age_key.recipient, "--output", str(ours), str(blob)]) == 0
    assert (
        sops.ok("decrypt", "--input-type", "binary", "--output-type", "binary", str(ours))
        == blob.read_bytes()
    )
    theirs = tmp_path / "theirs.bin"
    theirs.write_bytes(sops.ok("encrypt", "--age", age_key.recipient, str(blob)))
    out = tmp_path / "out.bin"
    assert ks(["sops", "decrypt", "--output", str(out), str(theirs)]) == 0
    assert out.read_bytes() == blob.read_bytes()


def test_output_type_conversion_matches_sops(tmp_path: Path, sops, ks, age_key) -> None:
    plain = tmp_path / "rich.yaml"
    plain.write_text(CASES["secret.yaml"][1])
    enc = tmp_path / "enc.yaml"
    enc.write_bytes(sops.ok("encrypt", "--age", age_key.recipient, str(plain)))
    for fmt in ("json", "yaml"):
        out = tmp_path / f"out.{fmt}"
        assert ks(["sops", "decrypt", "--output-type", fmt, "--output", str(out), str(enc)]) == 0
        assert out.read_bytes() == sops.ok("decrypt", "--output-type", fmt, str(enc))


def test_extract_matches_sops(tmp_path: Path, sops, ks, age_key) -> None:
    plain = tmp_path / "rich.yaml"
    plain.write_text(CASES["rich.yaml"][1])
    enc = tmp_path / "enc.yaml"
    enc.write_bytes(sops.ok("encrypt", "--age", age_key.recipient, str(plain)))
    for path in ('["plain"]', '["nested"]', '["list"]', '["nested"]["deeper"]["y"][1]'):
        out = tmp_path / "out"
        assert ks(["sops", "decrypt", "--extract", path, "--output", str(out), str(enc)]) == 0
        assert out.read_bytes() == sops.ok("decrypt", "--extract", path, str(enc)), path


def _swap_list_values(text: str) -> str:
    """Swap the first two ENC values of a list: same AAD, so only the MAC can notice."""
    lines = text.splitlines(keepends=True)
    idx = [i for i, line in enumerate(lines) if re.match(r"\s+- ENC\[", line)]
    a, b = idx[0], idx[1]
    lines[a], lines[b] = lines[b], lines[a]
    return "".join(lines)


def _edit_clear_value(text: str) -> str:
    return text.replace("namespace: prod", "namespace: evil", 1)


def _edit_mac(text: str) -> str:
    match = re.search(r"mac: ENC\[AES256_GCM,data:(.)", text)
    assert match is not None
    ch = match.group(1)
    return text[: match.start(1)] + ("A" if ch != "A" else "B") + text[match.end(1) :]


@pytest.mark.parametrize(
    ("name", "tamper"),
    [
        ("rich.yaml", _swap_list_values),
        ("secret.yaml", _edit_clear_value),
        ("secret.yaml", _edit_mac),
    ],
    ids=["value-moved", "clear-value-edited", "mac-edited"],
)
@pytest.mark.parametrize("writer", ["kubeshield", "sops"])
def test_tampering_is_refused_by_both(name, tamper, writer, tmp_path: Path, sops, ks, age_key) -> None:
    plain = tmp_path / name
    text = CASES[name][1]
    if tamper is _swap_list_values:
        text = "list:\n  - first\n  - second\n"
    plain.write_text(text)
    enc = tmp_path / f"enc.{name}"
    rule = ["--encrypted-regex", "^(data|stringData)$"] if name == "secret.yaml" else []
    if writer == "kubeshield":
        assert (
            ks(["sops", "encrypt", "--age", age_key.recipient, *rule, "--output", str(enc), str(plain)]) == 0
        )
    else:
        enc.write_bytes(sops.ok("encrypt", "--age", age_key.recipient, *rule, str(plain)))
    tampered = tamper(enc.read_text())
    assert tampered != enc.read_text()
    enc.write_text(tampered)
    result = sops.run("decrypt", str(enc))
    assert result.returncode == 51, result.stderr.decode()
    out = tmp_path / "out"
    assert ks(["sops", "decrypt", "--output", str(out), str(enc)]) == 51
    assert not out.exists()
    # --ignore-mac is the documented way past the check, for both
    assert sops.run("decrypt", "--ignore-mac", str(enc)).returncode == 0
    assert ks(["sops", "decrypt", "--ignore-mac", "--output", str(out), str(enc)]) == 0


def test_characters_go_yaml_escapes_print_as_sops_prints(tmp_path: Path, sops, ks, age_key) -> None:
    """Regression: go-yaml treats NEL and characters past U+FFFF as unprintable (double quotes with
    escapes) and indents after a raw line separator inside single quotes."""
    source = tmp_path / "chars.json"
    source.write_text(
        '{"nel": "x\\u0085y", "ls": "p\\u2028q", "emoji": "smile \\ud83d\\ude00", "nbsp": "\\u00a0x",'
        ' "ctl": "tab\\tx\\u0001", "list": ["a\\u2029b"]}'
    )
    enc = tmp_path / "chars.enc.json"
    enc.write_bytes(sops.ok("encrypt", "--age", age_key.recipient, str(source)))
    out = tmp_path / "out.yaml"
    assert ks(["sops", "decrypt", "--output-type", "yaml", "--output", str(out), str(enc)]) == 0
    assert out.read_bytes() == sops.ok("decrypt", "--output-type", "yaml", str(enc))
