"""Shamir's secret sharing over GF(2^8), as sops uses it for several key groups (``shamir/shamir.go``).

sops took HashiCorp Vault's implementation; this one produces and reads the same shares:

* the field is GF(2^8) with the AES polynomial x^8 + x^4 + x^3 + x + 1 (0x11B);
* each byte of the secret is the constant term of its own random polynomial of degree ``threshold-1``;
* share ``i`` is ``y_0 || y_1 || ... || y_{n-1} || x`` (the x-coordinate last, a distinct value in
  1..255 taken from a random permutation);
* combining interpolates each byte at x = 0 from any ``threshold`` shares.

Randomness is injected (``rng(n) -> bytes``) so tests can pin it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

__all__ = ["combine", "split"]


def _mult(a: int, b: int) -> int:
    result = 0
    for _ in range(8):
        if b & 1:
            result ^= a
        carry = a & 0x80
        a = (a << 1) & 0xFF
        if carry:
            a ^= 0x1B
        b >>= 1
    return result


_EXP = [0] * 510
_LOG = [0] * 256
_value = 1
for _i in range(255):
    _EXP[_i] = _value
    _LOG[_value] = _i
    _value = _mult(_value, 0x03)
for _i in range(255, 510):
    _EXP[_i] = _EXP[_i - 255]


def _mul(a: int, b: int) -> int:
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def _div(a: int, b: int) -> int:
    if b == 0:
        raise ZeroDivisionError("division by zero in GF(2^8)")
    if a == 0:
        return 0
    return _EXP[(_LOG[a] - _LOG[b]) % 255]


def _random_below(rng: Callable[[int], bytes], bound: int) -> int:
    limit = 256 - 256 % bound
    while True:
        value = rng(1)[0]
        if value < limit:
            return value % bound


def split(
    secret: bytes, *, parts: int, threshold: int, rng: Callable[[int], bytes] = os.urandom
) -> list[bytes]:
    """Split ``secret`` into ``parts`` shares, any ``threshold`` of which recover it."""
    if not secret:
        raise ValueError("cannot split an empty secret")
    if not 2 <= threshold <= parts <= 255:
        raise ValueError("need 2 <= threshold <= parts <= 255")
    xs = list(range(1, 256))
    for i in range(len(xs) - 1, 0, -1):  # Fisher-Yates with the injected rng
        j = _random_below(rng, i + 1)
        xs[i], xs[j] = xs[j], xs[i]
    xs = xs[:parts]
    shares = [bytearray(len(secret) + 1) for _ in range(parts)]
    for idx, x in enumerate(xs):
        shares[idx][len(secret)] = x
    for pos, byte in enumerate(secret):
        coefficients = [byte, *rng(threshold - 1)]
        for idx, x in enumerate(xs):
            y = 0
            for coefficient in reversed(coefficients):  # Horner
                y = _mul(y, x) ^ coefficient
            shares[idx][pos] = y
    return [bytes(s) for s in shares]


def combine(shares: Sequence[bytes]) -> bytes:
    """Recover the secret from ``threshold`` or more shares (fewer give a wrong value, as in Vault)."""
    if len(shares) < 2:
        raise ValueError("at least two shares are needed")
    length = len(shares[0])
    if length < 2 or any(len(s) != length for s in shares):
        raise ValueError("all shares must have the same length (at least 2 bytes)")
    xs = [s[-1] for s in shares]
    if len(set(xs)) != len(xs):
        raise ValueError("duplicate share")
    secret = bytearray(length - 1)
    for pos in range(length - 1):
        result = 0
        for i, xi in enumerate(xs):
            basis = 1
            for j, xj in enumerate(xs):
                if i != j:
                    basis = _mul(basis, _div(xj, xi ^ xj))
            result ^= _mul(shares[i][pos], basis)
        secret[pos] = result
    return bytes(secret)
