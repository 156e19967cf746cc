"""Walking a tree to encrypt or decrypt it, computing the MAC on the way (sops' ``Tree.Encrypt/Decrypt``).

The MAC is SHA-512 over the plaintext bytes of every leaf in document order (encrypted and clear
leaves, comments excluded, ``None`` skipped; with ``mac_only_encrypted`` it is first fed
``sha256("sops")`` and then only the encrypted leaves). Its uppercase hex digest is stored encrypted
(see :mod:`kubeshield.sops.mac`). Keys are not hashed: their integrity rests on the per-value AAD.

Path semantics: a map key adds a path part; a list does not (every element of ``list:`` gets AAD
``list:``). Comment lines collect on a per-level stack that a non-comment item clears.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Final

from kubeshield.errors import InvalidCiphertext
from kubeshield.sops._cipher import ValueCipher, plain_bytes
from kubeshield.sops.errors import ExitCode, SopsError
from kubeshield.sops.selection import Selection
from kubeshield.sops.tree import Branch, Comment

__all__ = ["MAC_ONLY_ENCRYPTED_INIT", "decrypt_branches", "encrypt_branches"]

MAC_ONLY_ENCRYPTED_INIT: Final = hashlib.sha256(b"sops").digest()

_Leaf = Callable[[Any, list[str], list[list[str]]], Any]


def _walk_value(value: Any, path: list[str], stack: list[list[str]], on_leaf: _Leaf) -> Any:
    if isinstance(value, Branch):
        return _walk_branch(value, path, stack, on_leaf)
    if isinstance(value, list):
        return _walk_list(value, path, stack, on_leaf)
    if value is None:
        return None
    return on_leaf(value, path, stack)


def _walk_list(items: list[Any], path: list[str], stack: list[list[str]], on_leaf: _Leaf) -> list[Any]:
    stack = [*stack, []]
    out: list[Any] = []
    for item in items:
        is_comment = isinstance(item, Comment)
        if is_comment:
            stack[-1].append(item.value)
        out.append(_walk_value(item, path, stack, on_leaf))
        if not is_comment:
            stack[-1] = []
    return out


def _walk_branch(branch: Branch, path: list[str], stack: list[list[str]], on_leaf: _Leaf) -> Branch:
    stack = [*stack, []]
    out = Branch()
    for key, value in branch:
        if isinstance(key, Comment):
            stack[-1].append(key.value)
            result = on_leaf(key, path, stack)
            out.append((result if isinstance(result, Comment) else Comment(result), None))
            continue
        if not isinstance(key, str):
            raise SopsError(
                f"the tree holds a key that is not a string ({type(key).__name__}) under "
                f"{':'.join(path) or 'the top level'}; only string keys are supported",
                code=ExitCode.ERROR_ENCRYPTING_TREE,
            )
        out.append((key, _walk_value(value, [*path, key], stack, on_leaf)))
        stack[-1] = []
    return out


def _aad(path: list[str]) -> str:
    return ":".join(path) + ":"


def encrypt_branches(
    branches: list[Branch], *, cipher: ValueCipher, selection: Selection, mac_only_encrypted: bool
) -> tuple[list[Branch], str]:
    """Encrypt every selected leaf; return the new branches and the MAC (uppercase hex)."""
    digest = hashlib.sha512()
    if mac_only_encrypted:
        digest.update(MAC_ONLY_ENCRYPTED_INIT)

    def on_leaf(value: Any, path: list[str], stack: list[list[str]]) -> Any:
        is_comment = isinstance(value, Comment)
        encrypted = selection.should_encrypt(path, stack, is_comment=is_comment)
        if not encrypted and (mac_only_encrypted or is_comment):
            return value
        data, kind = plain_bytes(value)
        if not is_comment:
            digest.update(data)
        if encrypted:
            text = cipher.encrypt_plain(data, kind, aad=_aad(path))
            return Comment(text) if is_comment else text
        return value

    out = [_walk_branch(b, [], [], on_leaf) for b in branches]
    return out, digest.hexdigest().upper()


def decrypt_branches(
    branches: list[Branch], *, cipher: ValueCipher, selection: Selection, mac_only_encrypted: bool
) -> tuple[list[Branch], str]:
    """Decrypt every selected leaf; return the plaintext branches and the MAC they hash to.

    A value that should be encrypted but does not decrypt raises ``SopsError`` naming its path (never
    its content). A comment that does not decrypt is kept as it is (files from older sops versions).
    """
    digest = hashlib.sha512()
    if mac_only_encrypted:
        digest.update(MAC_ONLY_ENCRYPTED_INIT)

    def on_leaf(value: Any, path: list[str], stack: list[list[str]]) -> Any:
        is_comment = isinstance(value, Comment)
        encrypted = selection.should_encrypt(path, stack, is_comment=is_comment)
        plain = value
        if encrypted:
            if is_comment:
                try:
                    plain = cipher.decrypt(value.value, aad=_aad(path))
                except InvalidCiphertext:
                    plain = value
                if not isinstance(plain, Comment):
                    plain = value
            else:
                where = ":".join(path) or "(top level)"
                if not isinstance(value, str):
                    raise SopsError(
                        f"the value at {where} should be encrypted but is a clear {type(value).__name__}",
                        code=ExitCode.ERROR_DECRYPTING_TREE,
                    )
                try:
                    plain = cipher.decrypt(value, aad=_aad(path))
                except InvalidCiphertext:
                    raise SopsError(
                        f"the value at {where} does not decrypt: it is not a valid ENC[...] value for "
                        "this file's data key and path (malformed, moved, or tampered with)",
                        code=ExitCode.ERROR_DECRYPTING_TREE,
                    ) from None
        if (not mac_only_encrypted or encrypted) and not isinstance(plain, Comment):
            digest.update(plain_bytes(plain)[0])
        return plain

    out = [_walk_branch(b, [], [], on_leaf) for b in branches]
    return out, digest.hexdigest().upper()
