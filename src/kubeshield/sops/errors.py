"""Errors of the SOPS feature, each carrying the exit code the real ``sops`` binary uses for it.

``SopsError`` is a :class:`~kubeshield.errors.KubeshieldError`; the CLI exits with ``error.code``
(:class:`ExitCode` mirrors sops' ``cmd/sops/codes``). Messages name the file, field or path and never
hold a plaintext value, a data key or a digest of plaintext.
"""

from __future__ import annotations

import enum

from kubeshield.errors import KubeshieldError

__all__ = ["ExitCode", "MacMismatch", "SopsError"]


class ExitCode(enum.IntEnum):
    """sops' exit statuses (``cmd/sops/codes/codes.go``)."""

    ERROR_GENERIC = 1
    COULD_NOT_READ_INPUT_FILE = 2
    COULD_NOT_WRITE_OUTPUT_FILE = 3
    ERROR_DUMPING_TREE = 4
    ERROR_READING_CONFIG = 5
    ERROR_INVALID_KMS_ENCRYPTION_CONTEXT_FORMAT = 6
    ERROR_INVALID_SET_FORMAT = 7
    ERROR_CONFLICTING_PARAMETERS = 8
    ERROR_ENCRYPTING_MAC = 21
    ERROR_ENCRYPTING_TREE = 23
    ERROR_DECRYPTING_MAC = 24
    ERROR_DECRYPTING_TREE = 25
    CANNOT_CHANGE_KEYS_FROM_NON_EXISTENT_FILE = 49
    MAC_MISMATCH = 51
    MAC_NOT_FOUND = 52
    CONFIG_FILE_NOT_FOUND = 61
    KEYBOARD_INTERRUPT = 85
    INVALID_TREE_PATH_FORMAT = 91
    NO_FILE_SPECIFIED = 100
    NO_ENCRYPTION_KEY_FOUND = 111
    COULD_NOT_RETRIEVE_KEY = 128
    FILE_HAS_NOT_BEEN_MODIFIED = 200
    NO_EDITOR_FOUND = 201
    FAILED_TO_COMPARE_VERSIONS = 202
    FILE_ALREADY_ENCRYPTED = 203


class SopsError(KubeshieldError):
    """A SOPS operation failed; ``code`` is the exit status sops would use."""

    def __init__(self, message: str, *, code: ExitCode = ExitCode.ERROR_GENERIC) -> None:
        super().__init__(message)
        self.code = code


class MacMismatch(SopsError):
    """The file's MAC does not match its content (tampered, or edited without sops)."""

    def __init__(
        self, message: str = "MAC mismatch: the file was changed outside sops or tampered with"
    ) -> None:
        super().__init__(message, code=ExitCode.MAC_MISMATCH)
