"""The Go text/template + Sprig subset of spec.template.data: outputs checked against Go's semantics."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubeshield.seal.errors import TemplateError
from kubeshield.seal.template import render

VALUES = {"user": b"admin", "pass": b"s3cr3t&x", "my-key": b"dash", "bin": b"\x00\xff\xfe", "empty": b""}


def r(template: str, values: dict[str, bytes] | None = None) -> bytes:
    return render(template, VALUES if values is None else values, where="spec.template.data.x")


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("plain text", b"plain text"),
        ("{{ .user }}:{{ .pass }}", b"admin:s3cr3t&x"),
        ('{{ index . "my-key" }}', b"dash"),
        ("{{ .bin }}", b"\x00\xff\xfe"),
        ("{{ .bin | b64enc }}", base64.b64encode(b"\x00\xff\xfe")),
        ('{{ printf "%s:%s" .user .pass | b64enc }}', base64.b64encode(b"admin:s3cr3t&x")),
        ("{{ .user | upper }}", b"ADMIN"),
        ("{{ .user | quote }}", b'"admin"'),
        ("{{ .user | squote }}", b"'admin'"),
        ('{{ .pass | replace "&" "%26" }}', b"s3cr3t%26x"),
        ('{{ trimPrefix "ad" .user }}', b"min"),
        ("{{ .pass | urlquery }}", b"s3cr3t%26x"),
        ("{{ .user | sha256sum }}", hashlib.sha256(b"admin").hexdigest().encode()),
        ('{{ .empty | default "fallback" }}', b"fallback"),
        ('{{ .user | default "fallback" }}', b"admin"),
        ("{{ if .empty }}yes{{ else }}no{{ end }}", b"no"),
        ('{{ if eq .user "admin" }}A{{ else if eq .user "x" }}X{{ else }}?{{ end }}', b"A"),
        ("a  {{- .user -}}  b", b"aadminb"),
        ("{{/* a comment */}}x", b"x"),
        ("{{ len .bin }}", b"3"),
        ('{{ printf "%05d|%-4s|%q" 42 "ab" .user }}', b'00042|ab  |"admin"'),
        ("{{ .user | b64enc | b64dec }}", b"admin"),
        ('{{ "line\\n" }}', b"line\n"),
        ("{{ `raw\\n` }}", b"raw\\n"),
        ('{{ (printf "%s-%s" .user .user) | upper }}', b"ADMIN-ADMIN"),
        ("{{ toJson .user }}", b'"admin"'),
        ("{{ .user | nindent 2 }}", b"\n  admin"),
        ('{{ join "," (list .user .pass) }}', b"admin,s3cr3t&x"),
        ("{{ $.user }}", b"admin"),
    ],
)
def test_renders_like_go(template: str, expected: bytes) -> None:
    assert r(template) == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ .missing }}", "missing key 'missing'"),
        ('{{ index . "nope" }}', "missing key 'nope'"),
        ('{{ env "HOME" }}', "function 'env' is not in the supported subset"),
        ('{{ getHostByName "x" }}', "function 'getHostByName' is not in the supported subset"),
        ("{{ range . }}x{{ end }}", "{{range}} is not supported"),
        ('{{ define "x" }}{{ end }}', "{{define}} is not supported"),
        ("{{ $x := .user }}", "variables"),
        ("{{ if .user }}x", "missing {{end}}"),
        ("{{ end }}", "unexpected {{end}}"),
        ("{{ .user", "unclosed action"),
        ("{{ .user | .pass }}", "only a function can follow |"),
        ('{{ printf "%y" .user }}', "unsupported format directive"),
        ("{{ b64dec .user }}", "not standard base64"),
        ("{{ .user.name }}", "cannot read field 'name'"),
        ("{{ upper }}", "wrong number of arguments"),
    ],
)
def test_outside_the_subset_is_a_named_error(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        r(template)
    assert str(info.value).startswith("spec.template.data.x: ")
    assert message in str(info.value)
    for secret in (b"s3cr3t", b"admin"):
        assert secret.decode() not in str(info.value)


@settings(max_examples=60, deadline=None)
@given(value=st.binary(max_size=256))
def test_values_survive_byte_for_byte(value: bytes) -> None:
    assert r("{{ .v }}", {"v": value}) == value
    assert r("{{ .v | b64enc }}", {"v": value}) == base64.b64encode(value)


@settings(max_examples=80, deadline=None)
@given(template=st.text(alphabet='{}.|()"` abcx$-/*=:', max_size=40))
def test_arbitrary_templates_only_ever_raise_template_error(template: str) -> None:
    try:
        r(template, {"a": b"1", "b": b"2", "x": b"3"})
    except TemplateError:
        pass
