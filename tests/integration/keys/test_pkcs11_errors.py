"""PKCS#11 backend: the error map, with python-pkcs11's own exception classes."""

from __future__ import annotations

import pkcs11.exceptions as p11e
import pytest

from kubeshield.errors import (
    BackendAuthError,
    BackendError,
    BackendUnavailable,
    ConfigError,
    InvalidCiphertext,
    KeyNotFound,
)
from kubeshield.keys.pkcs11 import map_exceptions


@pytest.mark.parametrize(
    ("exc", "decrypting", "expected"),
    [
        (p11e.PinIncorrect, False, BackendAuthError),
        (p11e.PinLocked, True, BackendAuthError),
        (p11e.NoSuchToken, False, BackendUnavailable),
        (p11e.TokenNotPresent, True, BackendUnavailable),
        (p11e.DeviceRemoved, False, BackendUnavailable),
        (p11e.SessionHandleInvalid, False, BackendUnavailable),
        (p11e.ObjectHandleInvalid, False, KeyNotFound),
        (p11e.KeyHandleInvalid, True, KeyNotFound),
        (p11e.MultipleTokensReturned, False, ConfigError),
        (p11e.GeneralError, True, InvalidCiphertext),
        (p11e.EncryptedDataInvalid, True, InvalidCiphertext),
        (p11e.EncryptedDataLenRange, True, InvalidCiphertext),
        (p11e.GeneralError, False, BackendUnavailable),
        (p11e.DataLenRange, False, BackendError),
        (p11e.MechanismInvalid, False, BackendError),
        (p11e.MechanismInvalid, True, InvalidCiphertext),
    ],
)
def test_sdk_errors_map(exc: type[Exception], decrypting: bool, expected: type) -> None:
    with pytest.raises(expected) as info, map_exceptions(decrypting=decrypting):
        raise exc("sdk text that must not leak")
    assert type(info.value) is expected
    assert "must not leak" not in str(info.value)
    assert isinstance(info.value.__cause__, exc)


def test_other_exceptions_pass_through() -> None:
    with pytest.raises(KeyError), map_exceptions():
        raise KeyError("not ours")
