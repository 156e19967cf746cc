"""The repository scan: Kubernetes-aware checks, generic rules, gitleaks rule files, bad input, baseline,
SARIF, and that no output ever holds a whole secret."""

from __future__ import annotations

import base64
import json
import os
import secrets
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubeshield.posture.errors import InvalidRuleFile
from kubeshield.posture.findings import redact, to_json, to_sarif
from kubeshield.posture.scan import ScanOptions, load_baseline, load_rules, scan, write_baseline
from kubeshield.posture.scan.rules import entropy


def token(n: int = 24, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def write(root: Path, rel: str, text: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def ids(report) -> set[tuple[str, str, int | None]]:
    return {(f.id, Path(str(f.file)).name, f.line) for f in report.findings}


def assert_never_printed(report, *values: str) -> None:
    out = to_json(report) + to_sarif(report, tool="t", version="0")
    for value in values:
        assert value not in out


def _armor(kind: str, body: str) -> str:
    """A PEM private-key block around a random ``body``: the shape the scanner must find. The armour is
    assembled here, not written out, so the source itself holds no private-key block for scanners."""
    label = f"{kind} PRIVATE" + " KEY"
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


CERT_B64 = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode()


def test_secret_manifest_in_the_clear(tmp_path: Path) -> None:
    password = token()
    api_key = token(32)
    write(
        tmp_path,
        "k8s/secret.yaml",
        f"""\
apiVersion: v1
kind: ConfigMap
metadata: {{name: cfg}}
data: {{a: b}}
---
apiVersion: v1
kind: Secret
metadata:
  name: db
  namespace: shop
type: Opaque
data:
  password: {base64.b64encode(password.encode()).decode()}
  empty: ""
  ca.crt: {CERT_B64}
stringData:
  api-key: {api_key}
  sealed: ENC[AES256_GCM,data:abc,iv:def,tag:ghi,type:str]
""",
    )
    report = scan([tmp_path])
    assert ids(report) == {("KS-SCAN-SECRET", "secret.yaml", 13), ("KS-SCAN-SECRET", "secret.yaml", 17)}
    titles = sorted(f.title for f in report.findings)
    assert titles == [
        "Secret shop/db holds data.password in the clear (base64 is not encryption)",
        "Secret shop/db holds stringData.api-key in the clear",
    ]
    assert all(f.excerpt.endswith("*" * 4) for f in report.findings)
    assert_never_printed(report, password, api_key, base64.b64encode(password.encode()).decode())


def test_json_manifests_and_lists(tmp_path: Path) -> None:
    value = token()
    write(
        tmp_path,
        "out.json",
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "List",
                "items": [
                    {
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "metadata": {"name": "s"},
                        "stringData": {"token": value},
                    }
                ],
            },
            indent=1,
        ),
    )
    report = scan([tmp_path])
    assert [(f.id, f.title) for f in report.findings] == [
        ("KS-SCAN-SECRET", "Secret s holds stringData.token in the clear")
    ]


def test_helm_templates_and_rendered_output(tmp_path: Path) -> None:
    literal = token()
    write(tmp_path, "chart/Chart.yaml", "apiVersion: v2\nname: app\nversion: 0.1.0\n")
    write(
        tmp_path,
        "chart/templates/secret.yaml",
        f"""\
{{{{- if .Values.enabled }}}}
apiVersion: v1
kind: Secret
metadata:
  name: {{{{ include "app.fullname" . }}}}
  labels: {{{{- include "app.labels" . | nindent 4 }}}}
stringData:
  from-values: {{{{ .Values.password | quote }}}}
  hard-coded: {literal}
{{{{- end }}}}
""",
    )
    rendered = token()
    write(
        tmp_path,
        "rendered/all.yaml",
        f"""\
---
# Source: app/templates/secret.yaml
apiVersion: v1
kind: Secret
metadata:
  name: app
data:
  password: {base64.b64encode(rendered.encode()).decode()}
""",
    )
    report = scan([tmp_path])
    assert ids(report) == {("KS-SCAN-SECRET", "secret.yaml", 9), ("KS-SCAN-SECRET", "all.yaml", 8)}
    assert_never_printed(report, literal, rendered)


def test_kustomize_generators(tmp_path: Path) -> None:
    literal = token()
    write(
        tmp_path,
        "base/kustomization.yaml",
        f"""\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
secretGenerator:
- name: app
  literals:
  - username=admin
  - password={literal}
  files:
  - tls.key=certs/server.key
  envs:
  - app.env
  - missing.env
""",
    )
    write(
        tmp_path,
        "base/certs/server.key",
        _armor("EC", token(64)),
    )
    write(tmp_path, "base/app.env", f"DB_PASSWORD={token()}\n")
    report = scan([tmp_path])
    found = {(f.id, f.rule, Path(str(f.file)).name, f.line) for f in report.findings}
    assert ("KS-SCAN-KUSTOMIZE", "kustomize-secret-literal", "kustomization.yaml", 6) in found
    assert ("KS-SCAN-KUSTOMIZE", "kustomize-secret-literal", "kustomization.yaml", 7) in found
    assert ("KS-SCAN-KUSTOMIZE", "kustomize-secret-file", "server.key", None) in found
    assert ("KS-SCAN-KUSTOMIZE", "kustomize-secret-file", "app.env", None) in found
    assert not any("missing.env" in (f.file or "") for f in report.findings)
    assert_never_printed(report, literal)


def test_kubeconfig_credentials(tmp_path: Path) -> None:
    key = base64.b64encode(_armor("EC", token(60)).encode()).decode()
    bearer = token(40)
    write(
        tmp_path,
        "home/.kube/config",
        f"""\
apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "https://10.0.0.1:6443"}}}}]
users:
- name: admin
  user:
    client-certificate-data: {base64.b64encode(b"cert").decode()}
    client-key-data: {key}
- name: robot
  user:
    token: {bearer}
- name: sso
  user:
    exec: {{command: kubeshield, args: [access, exec-credential]}}
""",
    )
    report = scan([tmp_path])
    assert {(f.id, f.severity, f.line) for f in report.findings} == {
        ("KS-SCAN-KUBECONFIG", "critical", 8),
        ("KS-SCAN-KUBECONFIG", "critical", 11),
    }
    assert_never_printed(report, key, bearer)


def test_sops_files(tmp_path: Path) -> None:
    enc = "ENC[AES256_GCM,data:Zm9v,iv:YmFy,tag:YmF6,type:str]"
    write(
        tmp_path,
        "good.enc.yaml",
        f"password: {enc}\nsops:\n  mac: {enc}\n  lastmodified: '2026-01-01T00:00:00Z'\n  version: 3.11.0\n",
    )
    write(
        tmp_path,
        "nomac.enc.yaml",
        f"password: {enc}\nsops:\n  lastmodified: '2026-01-01T00:00:00Z'\n  version: 3.11.0\n",
    )
    write(tmp_path, "plainmac.enc.yaml", f"password: {enc}\nsops:\n  mac: 0123ABCD\n  version: 3.11.0\n")
    leaked = token()
    write(tmp_path, "decrypted.enc.yaml", f"password: {leaked}\nsops:\n  mac: {enc}\n  version: 3.11.0\n")
    report = scan([tmp_path])
    got = {(f.id, Path(str(f.file)).name) for f in report.findings}
    assert ("KS-SCAN-SOPS-MAC", "nomac.enc.yaml") in got
    assert ("KS-SCAN-SOPS-MAC", "plainmac.enc.yaml") in got
    assert ("KS-SCAN-SOPS-PLAINTEXT", "decrypted.enc.yaml") in got
    assert not any(name == "good.enc.yaml" for _, name in got)
    assert_never_printed(report, leaked)


def _sealed(ns: str, *, scope: str | None = None) -> str:
    annotations = f"\n  annotations: {{sealedsecrets.bitnami.com/{scope}: 'true'}}" if scope else ""
    return (
        f"apiVersion: bitnami.com/v1alpha1\nkind: SealedSecret\nmetadata:\n  name: db\n  namespace: "
        f"{ns}{annotations}\n"
        f"spec:\n  encryptedData:\n    password: {base64.b64encode(os.urandom(300)).decode()}\n"
        f"  template:\n    metadata: {{name: db, namespace: {ns}}}\n"
    )


def test_sealed_secrets_in_the_wrong_overlay(tmp_path: Path) -> None:
    write(
        tmp_path,
        "overlays/staging/kustomization.yaml",
        "namespace: staging\nresources: [sealed.yaml, wide.yaml]\n",
    )
    write(tmp_path, "overlays/staging/sealed.yaml", _sealed("production"))
    write(tmp_path, "overlays/staging/wide.yaml", _sealed("production", scope="cluster-wide"))
    write(tmp_path, "overlays/production/kustomization.yaml", "namespace: production\n")
    write(tmp_path, "overlays/production/secrets/sealed.yaml", _sealed("production"))
    report = scan([tmp_path])
    assert [(f.id, f.file, f.line) for f in report.findings] == [
        ("KS-SCAN-SEALED-NS", str(tmp_path / "overlays/staging/sealed.yaml"), 5)
    ]
    assert report.findings[0].title == (
        "SealedSecret production/db was sealed for namespace 'production' but its overlay deploys to "
        "'staging'"
    )


def test_generic_rules(tmp_path: Path) -> None:
    aws = "AKIA" + token(16, string.ascii_uppercase + "234567")
    gh = "ghp_" + token(36)
    write(
        tmp_path,
        "src/app.py",
        f"""\
import os
AWS_KEY = "{aws}"
EXAMPLE = "AKIAIOSFODNN7EXAMPLE"
client = Github("{gh}")
db = "postgres://app:{token(16)}@db.internal:5432/app"
placeholder = "postgres://app:${{DB_PASSWORD}}@db:5432/app"
password = "aaaaaaaaaaaaaaaa"
api_key = "{token(24)}"  # gitleaks:allow
""",
    )
    report = scan([tmp_path])
    assert {(f.rule, f.line) for f in report.findings} == {
        ("aws-access-key-id", 2),
        ("github-token", 4),
        ("password-in-url", 5),
    }
    assert_never_printed(report, aws, gh)


def test_private_keys_and_entropy(tmp_path: Path) -> None:
    body = base64.b64encode(os.urandom(120)).decode()
    write(
        tmp_path,
        "id_ed25519",
        _armor("OPENSSH", body),
    )
    report = scan([tmp_path])
    assert [(f.rule, f.severity, f.line) for f in report.findings] == [("private-key", "critical", 1)]
    assert_never_printed(report, body)
    assert entropy(b"aaaa") == 0.0 and abs(entropy(b"ab") - 1.0) < 1e-9


def test_bad_input_is_reported_and_the_run_goes_on(tmp_path: Path) -> None:
    write(tmp_path, "bin/blob.bin", b"\x00\x01" + b"AKIA" + b"A" * 16 + b"\x00" * 10)
    write(tmp_path, "big.txt", "x" * 2048)
    write(tmp_path, "broken.yaml", "kind: Secret\n  bad: [indent\nstringData: {a: " + token() + "}\n")
    write(tmp_path, "ok.py", f'token = "{"ghp_" + token(36)}"\n')
    report = scan([tmp_path, tmp_path / "does-not-exist"], ScanOptions(max_file_size=1024))
    assert [f.rule for f in report.findings] == ["github-token"]
    assert any(s.endswith("blob.bin: binary") for s in report.skipped)
    assert any("big.txt: 2048 bytes, over --max-file-size 1024" in s for s in report.skipped)
    assert report.errors == [f"{tmp_path / 'does-not-exist'}: no such file or directory"]


def test_gitleaks_rule_file(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        "cfg/.gitleaks.toml",
        r"""
title = "team rules"
[extend]
useDefault = true
disabledRules = ["jwt"]

[[rules]]
id = "internal-token"
description = "Internal service token"
regex = '''(?i)\b(itk_[a-z0-9]{20})\b'''
secretGroup = 1
keywords = ["itk_"]
  [[rules.allowlists]]
  regexTarget = "line"
  regexes = ['''test-fixture''']

[[rules]]
id = "deploy-key-file"
description = "Deploy key file"
path = '''(?:^|/)deploy\.key$'''

[[allowlists]]
paths = ['''(?:^|/)vendor/''']
""",
    )
    a, b = (
        "itk_" + token(20, string.ascii_lowercase + string.digits),
        "itk_" + token(20, string.ascii_lowercase + string.digits),
    )
    write(tmp_path, "repo/svc.go", f'const tok = "{a}"\nconst fixture = "{b}" // test-fixture\n')
    write(tmp_path, "repo/vendor/lib.go", f'const tok = "{"itk_" + token(20, string.ascii_lowercase)}"\n')
    write(tmp_path, "repo/deploy.key", "anything\n")
    write(
        tmp_path,
        "repo/jwt.txt",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlc2lnbmF0dXJl\n",
    )
    write(tmp_path, "repo/gh.txt", "ghp_" + token(36) + "\n")
    report = scan([tmp_path / "repo"], ScanOptions(config=config))
    assert {(f.rule, Path(str(f.file)).name, f.line) for f in report.findings} == {
        ("internal-token", "svc.go", 1),
        ("deploy-key-file", "deploy.key", None),
        ("github-token", "gh.txt", 1),  # from useDefault
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[[rules]]\nid = 'x'\nregex = '''(?=lookahead)'''\n", "rules[0] (id 'x').regex: invalid RE2 regex"),
        ("[[rules]]\nid = 'x'\nregex = '''a(b'''\n", "invalid RE2 regex"),
        ("[[rules]]\nregex = 'a'\n", "a rule needs an id"),
        ("[[rules]]\nid = 'y'\n", "a rule needs a regex or a path"),
        ("[[rules]]\nid = 'z'\nregex = 'a'\nsecretGroup = 2\n", "the regex has only 0 groups"),
        ("rules = 3\n", "rules must be an array"),
        ("[[rules]\n", "not valid TOML"),
        (
            "[[rules]]\nid = 'w'\nregex = 'a'\n[[rules.allowlists]]\nregexTarget = 'file'\n",
            "regexTarget: must be secret, match or line",
        ),
    ],
)
def test_bad_rule_files_name_the_rule(tmp_path: Path, body: str, message: str) -> None:
    path = write(tmp_path, "rules.toml", body)
    with pytest.raises(InvalidRuleFile) as info:
        load_rules(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_baseline_accepts_known_findings(tmp_path: Path) -> None:
    write(tmp_path, "repo/a.py", f'x = "{"ghp_" + token(36)}"\n')
    report = scan([tmp_path / "repo"])
    baseline = tmp_path / "baseline.json"
    write_baseline(baseline, report)
    accepted = load_baseline(baseline)
    assert {f.fingerprint for f in report.findings} == accepted
    assert "ghp_" not in baseline.read_text()
    write(
        tmp_path,
        "repo/a.py",
        f'\n\nx = "{report.findings[0].excerpt[:0]}"\n' + (tmp_path / "repo/a.py").read_text(),
    )
    again = scan([tmp_path / "repo"])
    assert {f.fingerprint for f in again.findings} <= accepted  # moving a line keeps its fingerprint
    write(tmp_path, "bad.json", "{}")
    from kubeshield.errors import ConfigError

    with pytest.raises(ConfigError, match=r"bad\.json"):
        load_baseline(tmp_path / "bad.json")


def test_sarif_shape(tmp_path: Path) -> None:
    write(tmp_path, "repo/a.py", f'x = "{"ghp_" + token(36)}"\n')
    report = scan([tmp_path / "repo"])
    sarif = json.loads(to_sarif(report, tool="kubeshield", version="0.1.0"))
    assert sarif["version"] == "2.1.0"
    run = sarif["runs"][0]
    assert run["tool"]["driver"]["name"] == "kubeshield"
    (result,) = run["results"]
    assert result["ruleId"] == "KS-SCAN-CREDENTIAL" and result["level"] == "error"
    assert result["locations"][0]["physicalLocation"]["region"] == {"startLine": 1}
    assert result["partialFingerprints"]["kubeshield/v1"] == report.findings[0].fingerprint
    assert {r["id"] for r in run["tool"]["driver"]["rules"]} == {"KS-SCAN-CREDENTIAL"}


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=200))
def test_redaction_never_shows_most_of_a_secret(secret: str) -> None:
    shown = redact(secret)
    kept = min(4, len(secret) // 4)
    assert shown[:kept] == secret[:kept] and set(shown[kept:]) == {"*"} and len(shown) - kept >= 4
    assert secret not in shown or set(secret[kept:]) <= {"*"}


def test_references_and_names_are_not_credentials(tmp_path: Path) -> None:
    write(
        tmp_path,
        "conf.yaml",
        """\
auth: {method: token, tokenFile: /etc/kubeshield/bao-token}
volumes:
- secret: {secretName: kubeshield-etcd-client, defaultMode: 0400}
passphraseSecret: kubeshield-keyring-passphrase
directories.tokendir = /var/lib/softhsm/tokens
""",
    )
    write(
        tmp_path,
        "code.py",
        'TOKEN_METADATA = "kubeshield-attestation-token"\ntoken = page.continue_token\n'
        "SECRET_KEY = SETTINGS_SECRET_KEY_NAME\n",
    )
    assert scan([tmp_path]).findings == []
    value = token(24)
    write(tmp_path, "real.env", f"API_TOKEN={value}\n")
    assert [(f.rule, Path(str(f.file)).name) for f in scan([tmp_path]).findings] == [
        ("generic-credential", "real.env")
    ]
