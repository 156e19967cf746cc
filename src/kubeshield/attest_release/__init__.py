"""Attested key release (layer 2): an RCAR-style release server, its client, attesters and key sources.

Why a package of its own: :mod:`kubeshield.attest` (layer 1) must stay network-free and is shared by
every feature; the release server is a feature (HTTP, sessions, key backends), and the custody process
and the CLI use its client. Like other layer-2 packages it imports only layers 0-1; ``kubeshield.cli``
wires it into ``custody`` (layer 2 packages do not import each other).

Modules: ``protocol`` (messages, the report-data binding, JWE), ``server`` (``attest release-server``),
``client`` (``attest request`` and the library call), ``resources``
(what can be released: keyring KEK versions, a key file), ``keysource`` (an in-memory key backend
built from released KEKs, for the custody process). Attesters live below: ``kubeshield.keys.tpm_attest``
(TPM) and ``kubeshield.attest.sample`` (no protection), so the KMS relay can use them too.
"""

from __future__ import annotations

__all__: list[str] = []
