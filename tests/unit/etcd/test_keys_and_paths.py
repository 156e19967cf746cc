"""etcd key layout, range ends and safe output paths (property tests)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from kubeshield.etcd.keys import KeyPath, normalize_prefix, parse_key
from kubeshield.etcd.output import manifest_path
from kubeshield.etcd.store import prefix_range_end
from kubeshield.etcd.walk import resource_key_prefix


def test_parse_key_shapes() -> None:
    assert parse_key(b"/registry/secrets/ns/n", prefix="/registry") == KeyPath("secrets", "ns", "n")
    assert parse_key(b"/registry/namespaces/n", prefix="registry/") == KeyPath("namespaces", None, "n")
    assert parse_key(b"/registry/example.com/widgets/ns/w", prefix="/registry") == KeyPath(
        "widgets.example.com", "ns", "w"
    )
    assert parse_key(b"/other/secrets/ns/n", prefix="/registry") is None
    assert parse_key(b"/registry/secrets/ns/\xff", prefix="/registry") == KeyPath("secrets", "ns", "\\xff")


def test_resource_key_prefix_inverts_parse_key() -> None:
    assert resource_key_prefix("/registry", "secrets") == b"/registry/secrets/"
    assert resource_key_prefix("/p/registry/", "widgets.example.com") == b"/p/registry/example.com/widgets/"
    assert resource_key_prefix("/registry", None) == b"/registry/"


@given(st.binary(max_size=20), st.binary(max_size=20))
def test_prefix_range_end_bounds_exactly_the_prefix(prefix: bytes, other: bytes) -> None:
    end = prefix_range_end(prefix)
    inside = other.startswith(prefix)
    if end == b"\x00":  # to the end of the keyspace: only for an empty or all-0xff prefix
        assert prefix.strip(b"\xff") == b""
        return
    assert (prefix <= other < end) == inside


@given(st.text(min_size=0, max_size=30), st.text(min_size=0, max_size=30), st.text(max_size=30))
def test_manifest_paths_never_escape_the_output_dir(resource: str, namespace: str, name: str) -> None:
    out = Path("/out")
    path = manifest_path(out, KeyPath(resource, namespace, name), fmt="yaml")
    assert ".." not in path.relative_to(out).parts
    assert path.parent.parent.parent == out
    assert len(path.relative_to(out).parts) == 3


@given(st.text(max_size=40))
def test_normalize_prefix_is_idempotent(text: str) -> None:
    once = normalize_prefix(text)
    assert once.startswith("/") and normalize_prefix(once) == once
