"""One duration type for every timeout and interval flag: Go durations and plain seconds."""

from __future__ import annotations

import click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubeshield.cli._common import DURATION, Duration
from kubeshield.config.duration import format_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("3s", 3.0),
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("2h", 7200.0),
        ("1.5s", 1.5),
        ("3", 3.0),
        ("0.25", 0.25),
        (".5", 0.5),
        (" 3s ", 3.0),
        (2, 2.0),
        (2.5, 2.5),
    ],
)
def test_accepted(text: object, seconds: float) -> None:
    assert DURATION.convert(text, None, None) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc", "not a duration"),
        ("", "not a duration"),
        ("3x", "not a duration"),
        ("-1", "not a duration"),
        ("-1s", "not a duration"),
        ("inf", "not a duration"),
        ("nan", "not a duration"),
        ("1e3", "not a duration"),
        ("0", "greater than zero"),
        ("0s", "greater than zero"),
        (float("inf"), "finite"),
        (-2, "non-negative"),
        (True, "not a duration"),
    ],
)
def test_refused(text: object, message: str) -> None:
    with pytest.raises(click.BadParameter, match=message):
        DURATION.convert(text, None, None)


def test_zero_when_allowed() -> None:
    assert Duration(allow_zero=True).convert("0", None, None) == 0.0


@settings(deadline=None)
@given(
    st.integers(min_value=0, max_value=99),
    st.integers(min_value=0, max_value=59),
    st.integers(min_value=0, max_value=59),
    st.integers(min_value=0, max_value=999),
)
def test_go_durations_and_their_rendering_round_trip(h: int, m: int, s: int, ms: int) -> None:
    total = h * 3600 + m * 60 + s + ms / 1000
    if total == 0:
        return
    text = "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s"), (ms, "ms")) if v)
    assert DURATION.convert(text, None, None) == pytest.approx(total)
    assert DURATION.convert(format_duration(total), None, None) == pytest.approx(total)
    assert DURATION.convert(repr(total), None, None) == pytest.approx(total)
