"""Go's number formatting and parsing, as sops' Go code does it (``strconv``, ``encoding/json``).

* :func:`format_float_f` is ``strconv.FormatFloat(v, 'f', -1, 64)`` (what sops encrypts and hashes);
* :func:`format_float_g` is ``FormatFloat(v, 'g', -1, 64)`` (what go-yaml prints);
* :func:`format_float_json` is ``encoding/json``'s float encoding;
* :func:`parse_int`, :func:`parse_float`, :func:`parse_bool` are ``Atoi``, ``ParseFloat``, ``ParseBool``.

Python's ``repr`` of a float is the shortest string that round-trips, the same digits Go's ``-1``
precision picks, so only the layout differs.
"""

from __future__ import annotations

import math
import re
from typing import Final

__all__ = [
    "format_float_f",
    "format_float_g",
    "format_float_json",
    "parse_bool",
    "parse_float",
    "parse_int",
]

_INT_RE: Final = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE: Final = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)", re.I
)
_TRUE: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE: Final = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def _digits(value: float) -> tuple[str, int]:
    """Shortest decimal digits ``d`` and decimal point position ``dp``: |value| = 0.d * 10**dp."""
    text = repr(abs(value))
    mantissa, _, exp = text.partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = whole + frac
    dp = len(whole) + (int(exp) if exp else 0)
    stripped = digits.lstrip("0")
    dp -= len(digits) - len(stripped)
    stripped = stripped.rstrip("0")
    if not stripped:
        return "", 0
    return stripped, dp


def _special(value: float) -> str | None:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return None


def _fmt_f(neg: bool, digits: str, dp: int) -> str:
    if not digits:
        return "-0" if neg else "0"
    if dp <= 0:
        text = "0." + "0" * (-dp) + digits
    elif dp >= len(digits):
        text = digits + "0" * (dp - len(digits))
    else:
        text = digits[:dp] + "." + digits[dp:]
    return ("-" if neg else "") + text


def _fmt_e(neg: bool, digits: str, dp: int) -> str:
    if not digits:
        digits, dp = "0", 1
    exp = dp - 1
    text = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    sign = "+" if exp >= 0 else "-"
    return ("-" if neg else "") + f"{text}e{sign}{abs(exp):02d}"


def format_float_f(value: float) -> str:
    special = _special(value)
    if special is not None:
        return special
    digits, dp = _digits(value)
    return _fmt_f(math.copysign(1.0, value) < 0, digits, dp)


def format_float_g(value: float) -> str:
    special = _special(value)
    if special is not None:
        return special
    digits, dp = _digits(value)
    neg = math.copysign(1.0, value) < 0
    exp = (dp - 1) if digits else 0
    if exp < -4 or exp >= 6:  # Go: with the shortest precision, %e from exponent 6 on
        return _fmt_e(neg, digits, dp)
    return _fmt_f(neg, digits, dp)


def format_float_json(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        raise ValueError("JSON cannot hold NaN or infinity")
    digits, dp = _digits(value)
    neg = math.copysign(1.0, value) < 0
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        text = _fmt_e(neg, digits, dp)
        if len(text) >= 4 and text[-4] == "e" and text[-3] == "-" and text[-2] == "0":
            text = text[:-2] + text[-1]
        return text
    return _fmt_f(neg, digits, dp)


def parse_int(text: str) -> int:
    if not _INT_RE.fullmatch(text):
        raise ValueError("not an integer")
    return int(text)


def parse_float(text: str) -> float:
    if _FLOAT_RE.fullmatch(text):
        return float(text)
    if re.fullmatch(r"[+-]?0[xX][0-9a-fA-F_.]+[pP][+-]?[0-9]+", text):
        return float.fromhex(text.replace("_", ""))
    raise ValueError("not a float")


def parse_bool(text: str) -> bool:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("not a bool")
