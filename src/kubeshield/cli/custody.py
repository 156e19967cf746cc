"""``kubeshield custody``: the isolated key-custody process and its evidence.

\b
kubeshield custody serve   --keyring PATH --socket PATH --policy FILE [--user NAME] [--require-mlock]
kubeshield custody attest  --socket PATH --tcti TCTI --nonce HEX [--pcrs 7,16]
kubeshield custody verify  --statement FILE --nonce HEX [--ak-public PEM]
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from kubeshield.cli._common import option, raise_cli_error
from kubeshield.custody.attest import dumps, make_statement, verify_statement
from kubeshield.custody.daemon import ServeOptions, load_backend_factory, serve
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


@group.command("serve")
@option(
    "--keyring", required=True, type=click.Path(dir_okay=False), help="The keyring holding the KEK versions."
)
@option("--socket", required=True, type=click.Path(dir_okay=False), help="Unix socket to listen on.")
@option("--policy", required=True, type=click.Path(dir_okay=False), help="Caller allow-list (YAML).")
@option("--passphrase-file", type=click.Path(dir_okay=False, exists=True), help="Keyring passphrase file.")
@option("--user", help="Drop to this user (name or uid) after start when started as root.")
@option("--require-mlock", is_flag=True, help="Refuse to start if memory cannot be locked.")
@option("--socket-mode", default="0660", show_default=True, help="Permission bits of the socket file.")
@option("--backend-factory", hidden=True, help="module:callable building the key store (testing, plugins).")
def serve_cmd(
    keyring: str,
    socket: str,
    policy: str,
    passphrase_file: str | None,
    user: str | None,
    require_mlock: bool,
    socket_mode: str,
    backend_factory: str | None,
) -> int:
    """Hold the KEK versions and serve wrap/unwrap/key_id/health/rotate to allowed callers only."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    passphrase = Path(passphrase_file).read_bytes().rstrip(b"\r\n") if passphrase_file else None
    options = ServeOptions(
        socket=socket,
        policy=policy,
        keyring=keyring,
        passphrase=passphrase,
        user=user,
        require_mlock=require_mlock,
        socket_mode=_octal(socket_mode),
    )

    def ready(key_id: str) -> None:
        click.echo(f"ready key_id={key_id}")
        sys.stdout.flush()

    try:
        return serve(options, factory=load_backend_factory(backend_factory), ready=ready)
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


def _pcr_list(value: str) -> tuple[int, ...]:
    try:
        pcrs = tuple(sorted({int(p) for p in value.split(",") if p.strip()}))
    except ValueError:
        raise click.BadParameter("must be a comma-separated list of PCR indexes such as 7,16") from None
    if not pcrs or any(not 0 <= p <= 23 for p in pcrs):
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
