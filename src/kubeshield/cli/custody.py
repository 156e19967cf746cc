"""``kubeshield custody``: the isolated key-custody process and its evidence.

\b
kubeshield custody serve   (--keyring PATH | --config FILE) [--backend local|tpm] [--tcti T --pcrs 7]
                           --socket PATH --policy FILE [--user NAME] [--require-mlock]
kubeshield custody attest  --socket PATH --tcti TCTI --nonce HEX [--pcrs 7,16]
kubeshield custody verify  --statement FILE --nonce HEX [--ak-public PEM]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

import click

from kubeshield.cli._common import option, raise_cli_error
from kubeshield.config import KeysSettings, load_config
from kubeshield.config.settings import TpmSettings
from kubeshield.custody.attest import dumps, make_statement, verify_statement
from kubeshield.custody.daemon import ServeOptions, serve
from kubeshield.errors import KubeshieldError

__all__ = ["group"]


@click.group(name="custody")
def group() -> None:
    """The isolated custody process that holds the KEKs, and its attestation evidence."""


def _octal(value: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        raise click.BadParameter("must be an octal mode such as 0660") from None
    if mode & ~0o777:
        raise click.BadParameter("must be a permission mode (at most 0777)")
    return mode


def _keys_settings(
    *,
    config: Path | None,
    backend: str | None,
    keyring: Path | None,
    passphrase_file: Path | None,
    tcti: str | None,
    pcrs: str | None,
) -> KeysSettings:
    """The ``keys:`` section from ``--config`` (or the defaults), with the flags laid over it."""
    if config is None and keyring is None:
        raise click.UsageError("give --keyring PATH or --config FILE")
    keys = load_config(config).keys if config is not None else KeysSettings()
    name = backend or ("local" if config is None else keys.backend)
    if name == "local":
        local = keys.local
        local = dataclasses.replace(
            local,
            keyring=keyring if keyring is not None else local.keyring,
            passphrase_file=passphrase_file if passphrase_file is not None else local.passphrase_file,
        )
        return dataclasses.replace(keys, backend="local", local=local)
    if passphrase_file is not None:
        raise click.UsageError(f"--passphrase-file applies to the local backend, not {name}")
    if name == "tpm":
        tpm = keys.tpm if keys.tpm is not None else TpmSettings()
        tpm = dataclasses.replace(
            tpm,
            keyring=keyring if keyring is not None else tpm.keyring,
            tcti=tcti if tcti is not None else tpm.tcti,
            pcrs=_pcr_list(pcrs, allow_empty=True) if pcrs is not None else tpm.pcrs,
        )
        return dataclasses.replace(keys, backend="tpm", tpm=tpm)
    if keyring is not None or tcti is not None or pcrs is not None:
        raise click.UsageError(f"--keyring/--tcti/--pcrs do not apply to the {name} backend")
    return keys


@group.command("serve")
@option(
    "--config", type=click.Path(dir_okay=False, path_type=Path), help="kubeshield.yaml (its keys: section)."
)
@option(
    "--backend",
    type=click.Choice(["local", "tpm"]),
    help="Key store: a local keyring file, or a TPM-sealed keyring [default: local, or the config's].",
)
@option("--keyring", type=click.Path(dir_okay=False, path_type=Path), help="The keyring file.")
@option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Passphrase file of a local keyring (else $KUBESHIELD_KEYRING_PASSPHRASE).",
)
@option("--tcti", help="tpm backend: the TPM, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321.")
@option("--pcrs", help="tpm backend: PCRs new seals are bound to, e.g. 7 or 7,16 ('' for none).")
@option("--socket", required=True, type=click.Path(dir_okay=False), help="Unix socket to listen on.")
@option("--policy", required=True, type=click.Path(dir_okay=False), help="Caller allow-list (YAML).")
@option("--user", help="Drop to this user (name or uid) after start when started as root.")
@option("--require-mlock", is_flag=True, help="Refuse to start if memory cannot be locked.")
@option("--socket-mode", default="0660", show_default=True, help="Permission bits of the socket file.")
def serve_cmd(
    config: Path | None,
    backend: str | None,
    keyring: Path | None,
    passphrase_file: Path | None,
    tcti: str | None,
    pcrs: str | None,
    socket: str,
    policy: str,
    user: str | None,
    require_mlock: bool,
    socket_mode: str,
) -> int:
    """Hold the KEK versions and serve wrap/unwrap/key_id/health/rotate to allowed callers only.

    \b
    The key store is a real kubeshield backend:
      --keyring PATH [--passphrase-file F]          a local keyring (kubeshield keys init --keyring)
      --backend tpm --keyring PATH --tcti T         a TPM-sealed keyring (keys init --config, backend tpm)
      --config FILE                                 the keys: section of kubeshield.yaml (local or tpm)
    """
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")

    def ready(key_id: str) -> None:
        click.echo(f"ready key_id={key_id}")
        sys.stdout.flush()

    try:
        keys = _keys_settings(
            config=config,
            backend=backend,
            keyring=keyring,
            passphrase_file=passphrase_file,
            tcti=tcti,
            pcrs=pcrs,
        )
        options = ServeOptions(
            socket=socket,
            policy=policy,
            keys=keys,
            user=user,
            require_mlock=require_mlock,
            socket_mode=_octal(socket_mode),
        )
        return serve(options, ready=ready)
    except KubeshieldError as exc:
        raise_cli_error(exc)
        raise  # unreachable


def _nonce(value: str) -> bytes:
    try:
        nonce = bytes.fromhex(value)
    except ValueError:
        raise click.BadParameter("must be hex") from None
    if not 1 <= len(nonce) <= 64:
        raise click.BadParameter("must be 1..64 bytes (2..128 hex digits)")
    return nonce


def _pcr_list(value: str, *, allow_empty: bool = False) -> tuple[int, ...]:
    try:
        pcrs = tuple(sorted({int(p) for p in value.split(",") if p.strip()}))
    except ValueError:
        raise click.BadParameter("must be a comma-separated list of PCR indexes such as 7,16") from None
    if (not pcrs and not allow_empty) or any(not 0 <= p <= 23 for p in pcrs):
        raise click.BadParameter("PCR indexes are 0..23")
    return pcrs


@group.command("attest")
@option("--socket", required=True, type=click.Path(dir_okay=False), help="The custody process's socket.")
@option("--tcti", required=True, help="The TPM, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321.")
@option("--nonce", required=True, help="The verifier's fresh nonce, hex (at most 64 bytes).")
@option("--pcrs", default="7", show_default=True, help="PCR indexes (sha256 bank) to quote.")
def attest_cmd(socket: str, tcti: str, nonce: str, pcrs: str) -> None:
    """Print a JSON statement of the custody process's identity signed by a TPM quote."""
    try:
        statement = make_statement(socket_path=socket, tcti=tcti, nonce=_nonce(nonce), pcrs=_pcr_list(pcrs))
    except KubeshieldError as exc:
        raise_cli_error(exc)
    click.echo(dumps(statement))


@group.command("verify")
@option("--statement", "statement_file", required=True, type=click.Path(dir_okay=False, exists=True))
@option("--nonce", required=True, help="The nonce this verifier sent, hex.")
@option(
    "--ak-public", type=click.Path(dir_okay=False, exists=True), help="Pin the expected AK public key (PEM)."
)
def verify_cmd(statement_file: str, nonce: str, ak_public: str | None) -> None:
    """Verify a statement from `custody attest` (signature, magic, type, nonce, PCR selection)."""
    try:
        statement = json.loads(Path(statement_file).read_text())
    except (OSError, ValueError) as exc:
        raise click.BadParameter(
            f"not a JSON statement: {type(exc).__name__}", param_hint="--statement"
        ) from None
    pinned = Path(ak_public).read_bytes() if ak_public else None
    try:
        info = verify_statement(statement, nonce=_nonce(nonce), ak_public_pem=pinned)
    except KubeshieldError as exc:
        raise_cli_error(exc)
    note = "" if pinned else " (attestation key NOT pinned: pass --ak-public to trust only your TPM's AK)"
    click.echo(f"verified: quote over PCRs {','.join(map(str, info.pcrs))} with our nonce{note}")


@group.command("serve-attested")
@option(
    "--release-url",
    required=True,
    help="The release server (kubeshield attest release-server), http(s)://HOST:PORT.",
)
@option("--resource", required=True, help="The keyring resource to request, as named in the server's config.")
@option(
    "--tcti",
    required=True,
    help="The TPM that quotes, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321.",
)
@option(
    "--pcrs", default="0-23", show_default=True, help="PCRs the quote covers (the server's policy pins some)."
)
@option(
    "--cafile", type=click.Path(dir_okay=False, exists=True), help="CA bundle for an https:// release server."
)
@option("--socket", required=True, type=click.Path(dir_okay=False), help="Unix socket to listen on.")
@option("--policy", required=True, type=click.Path(dir_okay=False), help="Caller allow-list (YAML).")
@option("--user", help="Drop to this user (name or uid) after start when started as root.")
@option("--require-mlock", is_flag=True, help="Refuse to start if memory cannot be locked.")
@option("--socket-mode", default="0660", show_default=True, help="Permission bits of the socket file.")
def serve_attested_cmd(
    release_url: str,
    resource: str,
    tcti: str,
    pcrs: str,
    cafile: str | None,
    socket: str,
    policy: str,
    user: str | None,
    require_mlock: bool,
    socket_mode: str,
) -> int:
    """Like `custody serve`, but the KEKs come from a release server after a TPM quote, not from a file.

    \b
    The keys live only in this process's (locked) memory. The release server checks the quote (its AK
    and PCRs, per its policy) and refuses when a bound PCR changed; then this command fails to start.
      kubeshield custody serve-attested --release-url http://10.0.0.5:8443 --resource custody-keyring \\
          --tcti device:/dev/tpmrm0 --socket /run/kubeshield/custody.sock --policy custody-policy.yaml
    """
    from kubeshield.attest_release.client import request_resource
    from kubeshield.attest_release.keysource import ReleasedKeyBackend
    from kubeshield.cli.attest import parse_pcrs
    from kubeshield.keys.tpm_attest import TpmAttester

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    attester = TpmAttester(tcti=tcti, pcrs=parse_pcrs(pcrs))

    def open_released(_: KeysSettings) -> ReleasedKeyBackend:
        return ReleasedKeyBackend(request_resource(release_url, resource, attester=attester, cafile=cafile))

    def ready(key_id: str) -> None:
        click.echo(f"ready key_id={key_id}")
        sys.stdout.flush()

    try:
        options = ServeOptions(
            socket=socket,
            policy=policy,
            keys=KeysSettings(),
            user=user,
            require_mlock=require_mlock,
            socket_mode=_octal(socket_mode),
        )
        return serve(options, ready=ready, open_backend=open_released)
    except KubeshieldError as exc:
        raise_cli_error(exc)
        raise  # unreachable
