"""``--peer-attestation FILE`` for ``kms serve`` (replicas) and ``kms relay``: the CLI half of
:mod:`kubeshield.kms.peer_attest`, kept apart so the kms commands need only one line each."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from kubeshield.cli._common import option

__all__ = ["attested_upstreams", "peer_attestation_option", "peer_gate"]

peer_attestation_option = option(
    "--peer-attestation",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Require verified evidence from the other side (relay <-> replicas) besides mTLS: "
    "a YAML file with attester, peerPolicy (docs/attestation.md).",
)


def peer_gate(path: Path | None) -> Any:
    """The replica's Decrypt gate, or None without the flag."""
    if path is None:
        return None
    from kubeshield.kms.peer_attest import PeerAttestationGate, load_peer_attestation

    return PeerAttestationGate(load_peer_attestation(path))


def attested_upstreams(
    upstreams: Sequence[Any], path: Path | None, *, credentials: Any, tls_cert: Path, server_name: str | None
) -> list[Any]:
    """Wrap each replica so Decrypt goes only to one that attested (unchanged without the flag)."""
    if path is None:
        return list(upstreams)
    from kubeshield.kms.peer_attest import AttestedUpstream, cert_fingerprint, load_peer_attestation

    config = load_peer_attestation(path)
    fp = cert_fingerprint(tls_cert.read_bytes())
    return [
        AttestedUpstream(
            u,
            credentials=credentials,
            client_cert_fingerprint=fp,
            config=config,
            server_name=server_name,
            client_cert_path=tls_cert,
        )
        for u in upstreams
    ]
