"""The fast paths taken for speed give exactly what the general code gives (property tests).

Each fast path (the YAML emitter's scalar analysis for printable ASCII, ...) is compared with the general
code it short-cuts, on inputs drawn to hit the characters that change the answer.
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from kubeshield.sops import _cipher
from kubeshield.sops.stores import _yaml_emit, _yaml_load

# printable ASCII, weighted towards what libyaml's analysis looks at: indicators, blanks, ':' and '#'
_ASCII = st.text(
    st.one_of(
        st.sampled_from(list(" :#-?.,[]{}&*!|>'\"%@`")), st.characters(min_codepoint=0x20, max_codepoint=0x7E)
    ),
    min_size=1,
    max_size=12,
)
_ANY = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=12)


def _general(value: str) -> tuple[bool, bool, bool, bool]:
    analysis = _yaml_emit._Analysis.__new__(_yaml_emit._Analysis)
    analysis._analyse(value)
    return analysis.multiline, analysis.block_plain, analysis.single_allowed, analysis.block_allowed


def _fast(value: str) -> tuple[bool, bool, bool, bool]:
    analysis = _yaml_emit._Analysis(value)
    return analysis.multiline, analysis.block_plain, analysis.single_allowed, analysis.block_allowed


@settings(max_examples=500)
@given(st.one_of(_ASCII, _ANY))
def test_scalar_analysis_fast_path_matches_the_character_loop(value: str) -> None:
    assert _fast(value) == _general(value)


def test_scalar_analysis_fast_path_examples() -> None:
    # (value, block_plain): the cases the fast path spells out one by one
    for value, plain in [
        ("-", False), ("-a", True), ("- a", False), ("a: b", False), ("a:b", True), ("a:", False),
        (":", False), ("?x", True), ("? x", False), ("a #b", False), ("a#b", True), ("---x", False),
        ("...", False), (" a", False), ("a ", False), ("@a", False), ("a@", True), ("9abc", True),
    ]:  # fmt: skip
        assert _fast(value)[1] is plain, value
        assert _general(value)[1] is plain, value
    assert _fast("a ")[3] is False and _fast("a")[3] is True


def _comments_reference(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int, int, str, bool]]:
    """Character by character: a '#' at a line start or after a blank, in no span, starts a comment that
    runs to the end of its line; a '#' inside a span is skipped and the scan goes on after it."""
    found = []
    pos = 0
    while pos < len(text):
        starts_comment = text[pos] == "#" and (pos == 0 or text[pos - 1] in " \t\n")
        if not starts_comment or any(start <= pos < end for start, end in spans):
            pos += 1
            continue
        line_start = text.rfind("\n", 0, pos) + 1
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end
        line = text.count("\n", 0, pos)
        before = text[line_start:pos]
        found.append((pos, line, pos - line_start, text[pos + 1 : end].rstrip("\r"), bool(before.strip())))
        pos = end
    return found


@st.composite
def _text_and_spans(draw: st.DrawFn) -> tuple[str, list[tuple[int, int]]]:
    text = draw(st.text(st.sampled_from(list("#  \t\n\r#ab:")), max_size=60))
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=8)))
    spans = [(cuts[i], cuts[i + 1]) for i in range(0, len(cuts) - 1, 2)]
    return text, spans


@settings(max_examples=500)
@given(_text_and_spans())
def test_comment_scan_matches_a_character_by_character_scan(case: tuple[str, list[tuple[int, int]]]) -> None:
    text, spans = case
    assert _yaml_load._comments(text, spans) == _comments_reference(text, spans)


_B64ISH = st.text(st.sampled_from(list("Aa0+/=,:]ivtagype[")), min_size=0, max_size=10)


@settings(max_examples=500)
@given(_B64ISH, _B64ISH, _B64ISH, _B64ISH, st.sampled_from(["", "]", "x", ",iv:a"]))
def test_strict_enc_pattern_splits_as_the_sops_pattern(
    data: str, iv: str, tag: str, kind: str, tail: str
) -> None:
    text = f"ENC[AES256_GCM,data:{data},iv:{iv},tag:{tag},type:{kind}]{tail}"
    strict = _cipher._ENC_STRICT.fullmatch(text)
    if strict is not None:
        general = _cipher._ENC_RE.match(text)
        assert general is not None and general.groups() == strict.groups()


def test_batched_ivs_are_all_different_and_a_plain_decrypt_keeps_no_stash() -> None:
    cipher = _cipher.ValueCipher(os.urandom(32))
    values = [cipher.encrypt("same", aad="k:") for _ in range(3 * _cipher._IV_BATCH + 5)]
    ivs = {v.split(",iv:", 1)[1].split(",", 1)[0] for v in values}
    assert len(ivs) == len(values)
    reader = _cipher.ValueCipher(cipher_key := os.urandom(32))
    forgetful = _cipher.ValueCipher(cipher_key, remember_ivs=False)
    text = reader.encrypt("v", aad="a:")
    assert reader.decrypt(text, aad="a:") == "v" and reader.encrypt("v", aad="a:") == text
    assert forgetful.decrypt(text, aad="a:") == "v" and forgetful.encrypt("v", aad="a:") != text
