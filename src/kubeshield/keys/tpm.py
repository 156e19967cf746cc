"""TPM 2.0 sealing of key material at rest, the ``tpm`` key backend, and TPM quotes.

tpm2-pytss is imported here only (by name, lazily).

The ``tpm`` backend (:class:`TpmKeyBackend`) is :class:`~kubeshield.keys.local.LocalKeyBackend` over a
TPM-sealed keyring (``protection.kdf: tpm``, layout in :mod:`kubeshield.keys.keyring`): a random
32-byte wrapping key sealed by :class:`TpmSealer` (optionally to PCRs) protects the KEK versions in
the file. Same wrap format, same ``local:v<N>:<fp>`` key_ids (they name the keyring format, so moving
a keyring between passphrase and TPM protection keeps every key_id and every stored Secret readable).
The TPM is used when the keyring is opened, reloaded or rotated, never per wrap/unwrap: the KEKs are in
this process's memory while it runs (run it inside ``kubeshield custody serve`` to keep them out of
the plugin). A copied keyring file is useless without this TPM, and with ``pcrs`` without this PCR
state.

Sealing: the secret becomes a TPM keyed-hash object under the owner hierarchy's primary storage key
(ECC P-256, the standard template, re-derived from the TPM's seed on every use, never stored). Only
this TPM can load the blob: another TPM (a copied disk) fails the integrity check. With ``pcrs``
the object's authPolicy is ``PolicyPCR`` over the current sha256 values of those PCRs, so it unseals
only while they are unchanged. Every command that carries the secret runs in a salted, AES-CFB
encrypted HMAC session bound to the primary key: the secret never crosses the TPM transport in clear.

Sealed blob layout (integers big-endian)::

    magic "KSTPM1" (6) || npcrs (u8) || pcr indexes (u8 * npcrs)
      || len_pub (u32) || TPM2B_PUBLIC (marshalled) || len_priv (u32) || TPM2B_PRIVATE (marshalled)

Quotes: a restricted ECC P-256 signing key (ECDSA/SHA-256) is created under the endorsement
hierarchy's primary with the standard attestation template, so the same TPM always yields the same
attestation key (AK); the quote covers the chosen sha256 PCRs and ``qualifyingData = nonce``.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from kubeshield.config.settings import TpmSettings
from kubeshield.errors import BackendUnavailable, ConfigError, KeyringError
from kubeshield.keys.keyring import Argon2Params, KeyringFile, KeySealer
from kubeshield.keys.local import LocalKeyBackend

__all__ = ["MAX_NONCE", "Quote", "TpmKeyBackend", "TpmSealer", "TpmUnsealError"]

os.environ.setdefault("TSS2_LOG", "all+none")  # the library otherwise writes its own errors to stderr

_MAGIC = b"KSTPM1"
MAX_NONCE = 64
_RC_POLICY_FAIL = 0x99D
_RC_INTEGRITY = 0x1DF


class TpmUnsealError(KeyringError):
    """A sealed blob cannot be unsealed here: another TPM, changed PCRs, or a damaged blob."""


@dataclass(frozen=True, slots=True)
class Quote:
    """A TPM2 quote: ``attest`` is the marshalled TPMS_ATTEST, ``signature`` DER ECDSA over its sha256."""

    attest: bytes
    signature: bytes
    ak_public_pem: bytes
    pcrs: tuple[int, ...]


def _tss() -> Any:
    try:  # imported by name so only this module depends on the SDK (see .importlinter sdks-confined)
        tpm2_pytss = importlib.import_module("tpm2_pytss")
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise BackendUnavailable(
            "the tpm backend needs tpm2-pytss: pip install 'kubeshield[tpm]' (and libtss2-dev to build it)"
        ) from exc
    return tpm2_pytss


def _rc(exc: Exception) -> int:
    rc = getattr(exc, "rc", None)
    return int(rc) & 0xFFF if rc is not None else -1


class TpmSealer:
    """Seal and unseal secrets with one TPM, optionally bound to sha256 PCR values; quote PCRs."""

    def __init__(self, *, tcti: str, pcrs: Sequence[int] = ()) -> None:
        if not tcti:
            raise ValueError("tcti must name a TPM, e.g. device:/dev/tpmrm0 or swtpm:host=...,port=...")
        if any(not 0 <= p <= 23 for p in pcrs) or len(set(pcrs)) != len(pcrs):
            raise ValueError("pcrs must be distinct PCR indexes 0..23")
        self._tcti = tcti
        self._pcrs = tuple(sorted(pcrs))

    @property
    def pcrs(self) -> tuple[int, ...]:
        """The sha256 PCRs new seals are bound to (sorted; empty: bound to this TPM only)."""
        return self._pcrs

    # ---- plumbing --------------------------------------------------------------------------------
    @contextmanager
    def _esapi(self) -> Iterator[Any]:
        t = _tss()
        try:
            ctx = t.ESAPI(t.TCTILdr.parse(self._tcti))
        except Exception as exc:
            raise BackendUnavailable(f"cannot open the TPM at {self._tcti!r}: {type(exc).__name__}") from None
        try:
            yield ctx
        finally:
            ctx.close()

    @staticmethod
    def _selection(pcrs: Sequence[int]) -> Any:
        t = _tss()
        return t.TPML_PCR_SELECTION.parse("sha256:" + ",".join(str(p) for p in pcrs))

    def _primary(self, ctx: Any) -> Any:
        t = _tss()
        attrs = (
            t.TPMA_OBJECT.RESTRICTED
            | t.TPMA_OBJECT.DECRYPT
            | t.TPMA_OBJECT.FIXEDTPM
            | t.TPMA_OBJECT.FIXEDPARENT
            | t.TPMA_OBJECT.SENSITIVEDATAORIGIN
            | t.TPMA_OBJECT.USERWITHAUTH
        )
        template = t.TPM2B_PUBLIC(t.TPMT_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=attrs))
        handle, *_ = ctx.create_primary(t.TPM2B_SENSITIVE_CREATE(), template, t.ESYS_TR.OWNER)
        return handle

    def _encrypted_session(self, ctx: Any, primary: Any) -> Any:
        t = _tss()
        sym = t.TPMT_SYM_DEF(
            algorithm=t.TPM2_ALG.AES,
            keyBits=t.TPMU_SYM_KEY_BITS(aes=128),
            mode=t.TPMU_SYM_MODE(aes=t.TPM2_ALG.CFB),
        )
        session = ctx.start_auth_session(primary, t.ESYS_TR.NONE, t.TPM2_SE.HMAC, sym, t.TPM2_ALG.SHA256)
        ctx.trsess_set_attributes(
            session, t.TPMA_SESSION.ENCRYPT | t.TPMA_SESSION.DECRYPT | t.TPMA_SESSION.CONTINUESESSION
        )
        return session

    def _policy_session(self, ctx: Any, kind: Any, pcrs: Sequence[int]) -> Any:
        t = _tss()
        sym = t.TPMT_SYM_DEF(algorithm=t.TPM2_ALG.NULL)
        session = ctx.start_auth_session(t.ESYS_TR.NONE, t.ESYS_TR.NONE, kind, sym, t.TPM2_ALG.SHA256)
        ctx.policy_pcr(session, t.TPM2B_DIGEST(), self._selection(pcrs))
        return session

    # ---- sealing ---------------------------------------------------------------------------------
    def seal(self, secret: bytes) -> bytes:
        """Seal ``secret`` (1..128 bytes) to this TPM (and PCR state); returns the blob (layout above)."""
        if not isinstance(secret, bytes) or not 1 <= len(secret) <= 128:
            raise ValueError("secret must be 1..128 bytes")
        t = _tss()
        with self._esapi() as ctx:
            handles: list[Any] = []
            try:
                primary = self._primary(ctx)
                handles.append(primary)
                attrs = t.TPMA_OBJECT.FIXEDTPM | t.TPMA_OBJECT.FIXEDPARENT
                policy = b""
                if self._pcrs:
                    trial = self._policy_session(ctx, t.TPM2_SE.TRIAL, self._pcrs)
                    handles.append(trial)
                    policy = bytes(ctx.policy_get_digest(trial))
                else:
                    attrs |= t.TPMA_OBJECT.USERWITHAUTH
                public = t.TPMT_PUBLIC.parse("keyedhash", objectAttributes=attrs)
                public.authPolicy = t.TPM2B_DIGEST(policy)
                session = self._encrypted_session(ctx, primary)
                handles.append(session)
                sensitive = t.TPM2B_SENSITIVE_CREATE(
                    t.TPMS_SENSITIVE_CREATE(data=t.TPM2B_SENSITIVE_DATA(secret))
                )
                priv, pub, *_ = ctx.create(
                    primary, sensitive, t.TPM2B_PUBLIC(public), session1=t.ESYS_TR.PASSWORD, session2=session
                )
            except BackendUnavailable:
                raise
            except Exception as exc:
                raise BackendUnavailable(f"the TPM refused to seal (rc 0x{_rc(exc):x})") from None
            finally:
                for h in handles:
                    ctx.flush_context(h)
        pub_b, priv_b = bytes(pub.marshal()), bytes(priv.marshal())
        header = _MAGIC + bytes([len(self._pcrs), *self._pcrs])
        return header + struct.pack(">I", len(pub_b)) + pub_b + struct.pack(">I", len(priv_b)) + priv_b

    @staticmethod
    def _parse(blob: bytes) -> tuple[tuple[int, ...], bytes, bytes]:
        try:
            if not blob.startswith(_MAGIC):
                raise ValueError
            pos = len(_MAGIC)
            n = blob[pos]
            pcrs = tuple(blob[pos + 1 : pos + 1 + n])
            pos += 1 + n
            (lp,) = struct.unpack_from(">I", blob, pos)
            pub = blob[pos + 4 : pos + 4 + lp]
            pos += 4 + lp
            (lv,) = struct.unpack_from(">I", blob, pos)
            priv = blob[pos + 4 : pos + 4 + lv]
            if len(pub) != lp or len(priv) != lv or pos + 4 + lv != len(blob) or len(pcrs) != n:
                raise ValueError
        except (ValueError, IndexError, struct.error):
            raise TpmUnsealError("not a kubeshield TPM-sealed blob (bad magic or truncated)") from None
        return pcrs, pub, priv

    def unseal(self, blob: bytes) -> bytes:
        """The secret sealed in ``blob``. ``TpmUnsealError`` names why the TPM refused."""
        pcrs, pub_b, priv_b = self._parse(blob)
        t = _tss()
        with self._esapi() as ctx:
            handles: list[Any] = []
            try:
                primary = self._primary(ctx)
                handles.append(primary)
                pub, _ = t.TPM2B_PUBLIC.unmarshal(pub_b)
                priv, _ = t.TPM2B_PRIVATE.unmarshal(priv_b)
                try:
                    obj = ctx.load(primary, priv, pub)
                except Exception as exc:
                    raise TpmUnsealError(
                        "this TPM cannot load the sealed key: it was sealed by another TPM "
                        f"or the blob was altered (rc 0x{_rc(exc):x})"
                    ) from None
                handles.append(obj)
                session = self._encrypted_session(ctx, primary)
                handles.append(session)
                if pcrs:
                    policy = self._policy_session(ctx, t.TPM2_SE.POLICY, pcrs)
                    handles.append(policy)
                    auth = policy
                else:
                    auth = t.ESYS_TR.PASSWORD
                try:
                    data = ctx.unseal(obj, session1=auth, session2=session)
                except Exception as exc:
                    if _rc(exc) == _RC_POLICY_FAIL:
                        raise TpmUnsealError(
                            f"the TPM refused to unseal: PCR {','.join(map(str, pcrs))} changed "
                            "since sealing "
                            f"(policy check failed, rc 0x{_rc(exc):x})"
                        ) from None
                    raise TpmUnsealError(f"the TPM refused to unseal (rc 0x{_rc(exc):x})") from None
                return bytes(data)
            except (TpmUnsealError, BackendUnavailable):
                raise
            except Exception as exc:
                raise BackendUnavailable(f"TPM failure during unseal (rc 0x{_rc(exc):x})") from None
            finally:
                for h in handles:
                    ctx.flush_context(h)

    # ---- quotes ----------------------------------------------------------------------------------
    def quote(self, *, nonce: bytes, pcrs: Sequence[int]) -> Quote:
        """A TPM2 quote over sha256 ``pcrs`` with ``qualifyingData = nonce`` by this TPM's AK."""
        if not isinstance(nonce, bytes) or not 1 <= len(nonce) <= MAX_NONCE:
            raise ValueError(f"nonce must be 1..{MAX_NONCE} bytes")
        if not pcrs or any(not 0 <= p <= 23 for p in pcrs):
            raise ValueError("pcrs must be PCR indexes 0..23")
        t = _tss()
        with self._esapi() as ctx:
            handles: list[Any] = []
            try:
                template = t.TPMT_PUBLIC.parse(
                    "ecc256:ecdsa-sha256:null",
                    objectAttributes=t.TPMA_OBJECT.RESTRICTED
                    | t.TPMA_OBJECT.SIGN_ENCRYPT
                    | t.TPMA_OBJECT.FIXEDTPM
                    | t.TPMA_OBJECT.FIXEDPARENT
                    | t.TPMA_OBJECT.SENSITIVEDATAORIGIN
                    | t.TPMA_OBJECT.USERWITHAUTH,
                )
                ak, ak_pub, *_ = ctx.create_primary(
                    t.TPM2B_SENSITIVE_CREATE(), t.TPM2B_PUBLIC(template), t.ESYS_TR.ENDORSEMENT
                )
                handles.append(ak)
                scheme = t.TPMT_SIG_SCHEME(scheme=t.TPM2_ALG.ECDSA)
                scheme.details.any.hashAlg = t.TPM2_ALG.SHA256
                attest, sig = ctx.quote(ak, self._selection(sorted(pcrs)), t.TPM2B_DATA(nonce), scheme)
            except Exception as exc:
                raise BackendUnavailable(f"the TPM refused to quote (rc 0x{_rc(exc):x})") from None
            finally:
                for h in handles:
                    ctx.flush_context(h)
        r = int.from_bytes(bytes(sig.signature.ecdsa.signatureR), "big")
        s = int.from_bytes(bytes(sig.signature.ecdsa.signatureS), "big")
        pem = ak_pub.to_pem() if hasattr(ak_pub, "to_pem") else ak_pub.publicArea.to_pem()
        key_pem = bytes(pem)
        return Quote(
            attest=bytes(attest.marshal())[2:],  # TPM2B_ATTEST -> the TPMS_ATTEST bytes that were signed
            signature=encode_dss_signature(r, s),
            ak_public_pem=key_pem,
            pcrs=tuple(sorted(pcrs)),
        )

    def extend(self, pcr: int, data: bytes) -> None:
        """Extend sha256 PCR ``pcr`` with sha256(``data``) (to record a measurement, or in tests)."""
        t = _tss()
        digests = t.TPML_DIGEST_VALUES(
            [t.TPMT_HA(hashAlg=t.TPM2_ALG.SHA256, digest=t.TPMU_HA(sha256=hashlib.sha256(data).digest()))]
        )
        with self._esapi() as ctx:
            try:
                ctx.pcr_extend(getattr(t.ESYS_TR, f"PCR{pcr}"), digests)
            except Exception as exc:
                raise BackendUnavailable(f"the TPM refused to extend PCR {pcr} (rc 0x{_rc(exc):x})") from None


class TpmKeyBackend(LocalKeyBackend):
    """The ``tpm`` backend: a local keyring whose material is sealed by this TPM (module docstring)."""

    name = "tpm"

    def __init__(
        self,
        *,
        path: str | Path,
        tcti: str,
        pcrs: Sequence[int] = (),
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        super().__init__(path=path, clock=clock, rng=rng, sealer=TpmSealer(tcti=tcti, pcrs=pcrs))

    @classmethod
    def create(
        cls,
        *,
        path: str | Path,
        passphrase: bytes | None = None,
        force: bool = False,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
        argon2: Argon2Params | None = None,
        sealer: KeySealer | None = None,
        tcti: str = "",
        pcrs: Sequence[int] = (),
    ) -> TpmKeyBackend:
        """Create a TPM-sealed keyring (refusing to replace one unless ``force``) and open it.

        ``tcti`` names the TPM; ``passphrase``, ``argon2`` and ``sealer`` exist for the signature of
        :meth:`LocalKeyBackend.create` and must be left out.
        """
        if passphrase is not None or argon2 is not None or sealer is not None:
            raise ValueError("a TPM-sealed keyring takes tcti and pcrs, not a passphrase, argon2 or sealer")
        sealer = TpmSealer(tcti=tcti, pcrs=pcrs)
        KeyringFile(path, clock=clock, rng=rng, sealer=sealer).create(passphrase=None, force=force)
        return cls(path=path, tcti=tcti, pcrs=pcrs, clock=clock, rng=rng)

    # Each backend's from_settings takes its own settings section (keys.registry), hence the override.
    @classmethod
    def from_settings(cls, settings: TpmSettings) -> TpmKeyBackend:  # type: ignore[override]
        """Open the TPM-sealed keyring named by ``keys.tpm`` (``keyring``, ``tcti``, ``pcrs``)."""
        try:
            TpmSealer(tcti=settings.tcti, pcrs=settings.pcrs)
        except ValueError as exc:
            raise ConfigError(f"keys.tpm: {exc}") from None
        return cls(path=settings.keyring, tcti=settings.tcti, pcrs=settings.pcrs)
