"""Every storage format kube-apiserver writes for encryption at rest: pure functions, no I/O.

* :mod:`~kubeshield.envelope.prefixes` - ``k8s:enc:...`` prefixes and :func:`classify`
* :mod:`~kubeshield.envelope.aes` - the ``aesgcm`` and ``aescbc`` providers
* :mod:`~kubeshield.envelope.secretbox` - the ``secretbox`` provider
* :mod:`~kubeshield.envelope.kmsv2` - KMS v2 ``EncryptedObject`` and its DEK (type 0) / seed (type 1) data
* :mod:`~kubeshield.envelope.kmsv1` - KMS v1 ``uint16 len || encDEK || data``
* :mod:`~kubeshield.envelope.limits` - the apiserver's key_id / ciphertext / annotation checks
* :mod:`~kubeshield.envelope.objects` - ``k8s\\x00`` protobuf and JSON objects (Secret, ConfigMap, ...)

Every failure to decrypt or parse ciphertext raises the one opaque
:class:`~kubeshield.errors.InvalidCiphertext`. Sealing functions take ``rng`` (default ``os.urandom``)
only so tests can reproduce known-answer vectors; there are no nonce or IV parameters.
"""

from __future__ import annotations

from kubeshield.envelope.aes import open_aescbc, open_aesgcm, seal_aescbc, seal_aesgcm
from kubeshield.envelope.kmsv1 import (
    decode_kmsv1_payload,
    encode_kmsv1_payload,
    open_kmsv1_data,
    seal_kmsv1_data,
)
from kubeshield.envelope.kmsv2 import (
    DEKSourceType,
    EncryptedObject,
    decode_encrypted_object,
    encode_encrypted_object,
    generate_dek,
    generate_seed,
    open_encrypted_object,
    open_with_dek,
    open_with_seed,
    seal_with_dek,
    seal_with_seed,
)
from kubeshield.envelope.limits import (
    MAX_ANNOTATIONS_BYTES,
    MAX_CIPHERTEXT_BYTES,
    MAX_KEY_ID_BYTES,
    is_fully_qualified_domain_name,
    validate_annotations,
    validate_encrypted_dek_source,
    validate_key_id,
)
from kubeshield.envelope.objects import (
    KubeObject,
    ObjectDecodeError,
    decode_object,
    encode_secret,
    to_manifest,
)
from kubeshield.envelope.prefixes import (
    ENCRYPTED_PREFIX,
    StoredFormat,
    classify,
    split_prefix,
    value_prefix,
)
from kubeshield.envelope.secretbox import open_secretbox, seal_secretbox

__all__ = [
    "ENCRYPTED_PREFIX",
    "MAX_ANNOTATIONS_BYTES",
    "MAX_CIPHERTEXT_BYTES",
    "MAX_KEY_ID_BYTES",
    "DEKSourceType",
    "EncryptedObject",
    "KubeObject",
    "ObjectDecodeError",
    "StoredFormat",
    "classify",
    "decode_encrypted_object",
    "decode_kmsv1_payload",
    "decode_object",
    "encode_encrypted_object",
    "encode_kmsv1_payload",
    "encode_secret",
    "generate_dek",
    "generate_seed",
    "is_fully_qualified_domain_name",
    "open_aescbc",
    "open_aesgcm",
    "open_encrypted_object",
    "open_kmsv1_data",
    "open_secretbox",
    "open_with_dek",
    "open_with_seed",
    "seal_aescbc",
    "seal_aesgcm",
    "seal_kmsv1_data",
    "seal_secretbox",
    "seal_with_dek",
    "seal_with_seed",
    "split_prefix",
    "to_manifest",
    "validate_annotations",
    "validate_encrypted_dek_source",
    "validate_key_id",
    "value_prefix",
]
