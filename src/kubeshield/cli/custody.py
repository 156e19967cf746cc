"""``kubeshield custody``: the isolated key-custody process and its evidence.

\b
kubeshield custody serve   (--keyring PATH | --config FILE) [--backend local|tpm] [--tcti T --pcrs 7]
                           --socket PATH --policy FILE [--user NAME] [--require-mlock]
kubeshield custody attest  --socket PATH --tcti TCTI --nonce HEX [--pcrs 7,16]
kubeshield custody verify  --statement FILE --nonce HEX [--ak-public PEM | --ak-fingerprint sha256:HEX]
kubeshield custody measure --pid N [--name NAME] [-o yaml|json]
kubeshield custody ak      --tcti TCTI [-o pem|json]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

import click

from kubeshield.cli._common import CLIError, option, raise_cli_error
from kubeshield.config import KeysSettings, load_config
from kubeshield.config.settings import TpmSettings
from kubeshield.custody.ak import ak_fingerprint as ak_fingerprint_of
from kubeshield.custody.ak import read_ak_public
from kubeshield.custody.attest import dumps, make_statement, verify_statement
from kubeshield.custody.daemon import ServeOptions, serve
from kubeshield.custody.suggest import measure_process, render_yaml, suggest_rule
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
@option(
    "--ak-fingerprint",
    help="Pin the expected AK by its fingerprint (sha256:HEX, as `custody ak` printed it on the node).",
)
def verify_cmd(statement_file: str, nonce: str, ak_public: str | None, ak_fingerprint: str | None) -> None:
    """Verify a statement from `custody attest` (signature, magic, type, nonce, PCR selection).

    \b
    Pin the attestation key, or the check proves only that the statement is self-consistent:
      --ak-public ak.pem              the PEM that `kubeshield custody ak` printed on the node
      --ak-fingerprint sha256:HEX     its fingerprint, recorded by a trusted route (docs/custody.md)
    """
    if ak_public and ak_fingerprint:
        raise click.UsageError("give --ak-public or --ak-fingerprint, not both")
    try:
        statement = json.loads(Path(statement_file).read_text())
    except (OSError, ValueError) as exc:
        raise click.BadParameter(
            f"not a JSON statement: {type(exc).__name__}", param_hint="--statement"
        ) from None
    pinned = Path(ak_public).read_bytes() if ak_public else None
    try:
        info = verify_statement(statement, nonce=_nonce(nonce), ak_public_pem=pinned)
        fingerprint = ak_fingerprint_of(str(statement["akPublicKey"]).encode())
    except KubeshieldError as exc:
        raise_cli_error(exc)
    except ValueError:  # pragma: no cover - verify_statement already loaded this key
        raise CLIError("the statement's akPublicKey is not a public key") from None
    if ak_fingerprint is not None and fingerprint != ak_fingerprint.strip().lower():
        raise CLIError(f"the statement is signed by AK {fingerprint}, not by the pinned {ak_fingerprint}")
    pinned_any = pinned is not None or ak_fingerprint is not None
    note = "" if pinned_any else " (attestation key NOT pinned: pass --ak-public or --ak-fingerprint)"
    click.echo(
        f"verified: quote over PCRs {','.join(map(str, info.pcrs))} with our nonce by AK {fingerprint}{note}"
    )


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


@group.command("measure")
@option("--pid", required=True, type=click.IntRange(min=1), help="The process to measure.")
@option("--name", default="kms-plugin", show_default=True, help="The rule's name.")
@option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
def measure_cmd(pid: int, name: str, output: str) -> None:
    """Print what a custody policy can pin for process PID, as a rule ready to paste.

    \b
    The values are measured exactly as the custody process measures a caller: uid and gid (the
    effective ids, as SO_PEERCRED reports them), the cgroup (for a pod: the pod's cgroup, which
    survives container restarts), and the sha256 of the executable (needs root for another uid's
    process). Examples:
      kubeshield custody measure --pid "$(pgrep -f 'kubeshield kms serve')" >> rule.yaml
      kubeshield custody measure --pid 4242 -o json | jq .rule
    """
    try:
        measured = measure_process(pid)
    except OSError as exc:
        raise CLIError(f"cannot measure process {pid}: {exc.strerror or exc}") from None
    if output == "yaml":
        click.echo(render_yaml(measured, name=name), nl=False)
        return
    rule, notes = suggest_rule(measured, name=name)
    identity = measured.identity
    click.echo(
        json.dumps(
            {
                "pid": identity.pid,
                "uid": identity.uid,
                "gid": identity.gid,
                "realUid": measured.real_uid,
                "realGid": measured.real_gid,
                "exe": identity.exe,
                "exeSha256": identity.exe_sha256,
                "cgroup": identity.cgroup,
                "startTime": identity.start_time,
                "rule": rule,
                "notes": notes,
            },
            indent=2,
        )
    )


@group.command("ak")
@option("--tcti", required=True, help="The TPM, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321.")
@option("-o", "--output", type=click.Choice(["pem", "json"]), default="pem", show_default=True)
def ak_cmd(tcti: str, output: str) -> None:
    """Print this TPM's attestation key (the one `custody attest` signs with) and its fingerprint.

    \b
    Run it on the node while it is provisioned, record the fingerprint where verifiers read it,
    and pin it with `custody verify --ak-fingerprint` (or the PEM with --ak-public). The same TPM
    always gives the same AK. The PEM goes to stdout, its fingerprint to stderr. Examples:
      kubeshield custody ak --tcti device:/dev/tpmrm0 > ak-$(hostname).pem
      kubeshield custody ak --tcti device:/dev/tpmrm0 -o json > ak-$(hostname).json
    """
    try:
        ak = read_ak_public(tcti=tcti)
    except KubeshieldError as exc:
        raise_cli_error(exc)
    if output == "json":
        click.echo(json.dumps({"akPublicKey": ak.pem, "fingerprint": ak.fingerprint}, indent=2))
    else:
        click.echo(f"fingerprint {ak.fingerprint}", err=True)  # stdout stays a plain PEM file
        click.echo(ak.pem if ak.pem.endswith("\n") else ak.pem + "\n", nl=False)
