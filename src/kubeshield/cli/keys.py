"""``kubeshield keys``: create, rotate, list, back up and restore key-encryption keys (KEKs).

Only parsing and rendering live here; the work is in :mod:`kubeshield.keys`. Key material is never
printed. The passphrase of a local keyring comes from ``--passphrase-file`` (or ``passphraseFile`` in
the config) or from ``KUBESHIELD_KEYRING_PASSPHRASE``, never from a flag value.

``list -o json`` schema (stable)::

    {"backend": "local", "keyring": "<path>" | null,
     "keyringId": "<uuid>" | "<the backend's key identity, kubeshield.keys.identity>",
     "keyringIdHash": "<16 hex: the keyring_id_hash label of kubeshield_keyring_info>",
     "versionsDigest": "<16 hex>" | null,                      # keyring files only
     "protection": "none" | "argon2id" | "tpm" | null,
     "versions": [{"version": 1, "keyId": "local:v1:...", "created": "<RFC3339>", "state": "primary"}]}

(``keyringId`` used to be null for backends without a keyring file; ``keyringIdHash`` and
``versionsDigest`` are additions.)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from kubeshield.cli._common import DURATION, EXIT_FAILURE, CLIError, option, raise_cli_error
from kubeshield.cli._keyring_files import (
    KeyringTarget,
    ValuesUnder,
    find_values_under,
    keyring_target,
    parse_versions,
)
from kubeshield.cli._keys_etcd import etcd_rotation, sync_command
from kubeshield.config import KeysSettings, LocalSettings, load_config
from kubeshield.errors import KubeshieldError
from kubeshield.keys import backup as backups
from kubeshield.keys.base import Exportable, Rotatable
from kubeshield.keys.identity import configured_identity, identity_hash
from kubeshield.keys.keyring import KeyringFile
from kubeshield.keys.passphrase import PASSPHRASE_ENV, read_passphrase
from kubeshield.keys.registry import open_primary

__all__ = ["group"]

F = TypeVar("F", bound=Callable[..., Any])

_PATH = click.Path(dir_okay=False, path_type=Path)


@dataclass(frozen=True, slots=True)
class _Target:
    keys: KeysSettings

    @property
    def is_local(self) -> bool:
        return self.keys.backend == "local"

    @property
    def local(self) -> LocalSettings:
        return self.keys.local


def _target_options(func: F) -> F:
    func = option(
        "--passphrase-file",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help=f"File holding the keyring passphrase (overrides passphraseFile; else ${PASSPHRASE_ENV}).",
    )(func)
    func = option("--keyring", type=_PATH, help="Local keyring file to use (overrides the config).")(func)
    func = option(
        "--config", "config_file", type=_PATH, help="kubeshield.yaml to read the keys: section from."
    )(func)
    return func


def _resolve(config_file: Path | None, keyring: Path | None, passphrase_file: Path | None) -> _Target:
    if config_file is None and keyring is None:
        raise click.UsageError("give --keyring PATH or --config FILE")
    keys = load_config(config_file).keys if config_file is not None else KeysSettings()
    local = keys.local
    if keyring is not None:
        local = LocalSettings(keyring=keyring, passphrase_file=local.passphrase_file)
        keys = KeysSettings(**{**_fields(keys), "backend": "local", "local": local})
    if passphrase_file is not None:
        local = LocalSettings(keyring=local.keyring, passphrase_file=passphrase_file)
        keys = KeysSettings(**{**_fields(keys), "local": local})
    return _Target(keys)


def _fields(keys: KeysSettings) -> dict[str, Any]:
    return {name: getattr(keys, name) for name in KeysSettings.__dataclass_fields__}


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except KubeshieldError as exc:
        raise_cli_error(exc)


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@click.group(name="keys")
def group() -> None:
    """Create, rotate, list, back up and restore key-encryption keys (KEKs).

    \b
    Select the keys with --keyring PATH (a local keyring file) or --config FILE (the keys: section of
    kubeshield.yaml); --keyring wins. A local keyring's passphrase is read from --passphrase-file or
    from $KUBESHIELD_KEYRING_PASSPHRASE, never from a flag value.

    \b
    Examples:
      kubeshield keys init --keyring /var/lib/kubeshield/keyring --passphrase-file /etc/kubeshield/passphrase
      kubeshield keys rotate --config /etc/kubeshield/kubeshield.yaml
      kubeshield keys list --keyring /var/lib/kubeshield/keyring -o json
      kubeshield keys backup --keyring /var/lib/kubeshield/keyring --out kr.age --recipient age1...
      kubeshield keys restore --in kr.age --keyring /var/lib/kubeshield/keyring --identity-file key.txt
    """


@group.command("init")
@_target_options
@option(
    "--force", is_flag=True, help="Replace an existing keyring. Secrets encrypted under it become unreadable."
)
@option(
    "--exist-ok",
    is_flag=True,
    help="Accept a key that already exists (checked, never replaced): for init containers and re-runs.",
)
def init_command(
    config_file: Path | None, keyring: Path | None, passphrase_file: Path | None, force: bool, exist_ok: bool
) -> None:
    """Create the KEK: a local keyring, a TPM-sealed keyring, or the key in a token or key service.

    \b
    local (--keyring, or keys.backend: local): a new keyring with one primary KEK. With a passphrase
      (--passphrase-file or $KUBESHIELD_KEYRING_PASSPHRASE) the keys are sealed with AES-256-GCM under
      an Argon2id-derived key; without one only file permissions (0600) and disk encryption protect it.
    tpm: a keyring sealed by the TPM of keys.tpm (tcti, keyring, pcrs), useless on any other machine.
    pkcs11: KEK version 1 generated inside the token (AES-256, sensitive, never extractable), labelled
      keyLabel; refused when a key with that label exists, unless --exist-ok.
    transit: the Transit key (aes256-gcm96), created when missing if the token may; else the error
      names the bao command to run. An existing key is checked.
    awskms: for keyId alias/NAME that points nowhere, a new symmetric key and the alias, if the
      credentials may create them; else the error names the aws kms commands. An existing key is checked.
    Every backend ends with a real encrypt/decrypt round trip with the plugin's own credential, and
    lists what else that credential may do. A local or TPM keyring is never replaced without --force;
    keys in a token or key service are never replaced or deleted.

    \b
    Examples:
      kubeshield keys init --keyring /var/lib/kubeshield/keyring --passphrase-file /etc/kubeshield/passphrase
      kubeshield keys init --config /etc/kubeshield/kubeshield.yaml            # any keys.backend
      kubeshield keys init --config /etc/kubeshield/kubeshield.yaml --exist-ok # in an init container
    """
    with _errors():
        target = _resolve(config_file, keyring, passphrase_file)
        if target.keys.backend == "tpm" and keyring is None:
            _init_tpm(target.keys, force=force, passphrase_file=passphrase_file)
            return
        if not target.is_local:
            _init_key_service(target.keys, force=force, exist_ok=exist_ok, passphrase_file=passphrase_file)
            return
        passphrase = read_passphrase(passphrase_file=target.local.passphrase_file)
        keyring_file = KeyringFile(target.local.keyring)
        if exist_ok and not force and Path(target.local.keyring).exists():
            info = keyring_file.load(passphrase).info
            click.echo(f"Checked existing keyring {info.path} (it opens with the given passphrase)")
            click.echo(f"  keyring id:     {info.keyring_id}")
            click.echo(f"  primary key_id: {info.primary.key_id}")
            return
        created = keyring_file.create(passphrase=passphrase, force=force)
    info = created.info
    if passphrase is None:
        click.echo(
            f"WARNING: no passphrase given (--passphrase-file or ${PASSPHRASE_ENV}): the keys are stored "
            "unencrypted in the keyring file. Only its permissions (0600) and disk encryption protect them.",
            err=True,
        )
    click.echo(f"Created keyring {info.path}")
    click.echo(f"  keyring id:     {info.keyring_id}")
    click.echo(f"  primary key_id: {info.primary.key_id}")
    click.echo(f"  protection:     {'argon2id passphrase' if info.protected else 'none'}")


def _init_key_service(
    keys: KeysSettings, *, force: bool, exist_ok: bool, passphrase_file: Path | None
) -> None:
    """``keys init`` for a backend whose KEK lives in a token or a key service (keys.provisioning)."""
    from kubeshield.keys.provisioning import init_backend

    if force:
        raise click.UsageError(
            f"--force: kubeshield never replaces or deletes keys in the {keys.backend} backend; "
            "use --exist-ok to accept an existing key, or `kubeshield keys rotate` for a new version"
        )
    if passphrase_file is not None:
        raise click.UsageError(f"--passphrase-file: the {keys.backend} backend has no keyring passphrase")
    report = init_backend(keys, exist_ok=exist_ok)
    click.echo(f"{'Created' if report.created else 'Checked existing'} KEK: {report.location}")
    click.echo(f"  primary key_id: {report.key_id}")
    marks = {True: "ok  ", False: "NO  ", None: "--  "}
    for check in report.checks:
        click.echo(f"  {marks[check.ok]}{check.what}: {check.detail}")
    failed = [c.what for c in report.checks if c.required and c.ok is not True]
    if failed:
        raise CLIError(f"the plugin could not work with this set-up: {', '.join(failed)} failed")


def _init_tpm(keys: KeysSettings, *, force: bool, passphrase_file: Path | None) -> None:
    from kubeshield.config.settings import TpmSettings
    from kubeshield.keys.tpm import TpmSealer

    if passphrase_file is not None:
        raise click.UsageError("--passphrase-file: a TPM-sealed keyring (backend tpm) has no passphrase")
    tpm = keys.tpm if keys.tpm is not None else TpmSettings()
    try:
        sealer = TpmSealer(tcti=tpm.tcti, pcrs=tpm.pcrs)
    except ValueError as exc:
        raise click.UsageError(f"keys.tpm: {exc}") from None
    with _errors():
        info = KeyringFile(tpm.keyring, sealer=sealer).create(passphrase=None, force=force).info
    click.echo(f"Created keyring {info.path}")
    click.echo(f"  keyring id:     {info.keyring_id}")
    click.echo(f"  primary key_id: {info.primary.key_id}")
    pcrs = ",".join(map(str, info.pcrs)) or "none (bound to this TPM only)"
    click.echo(f"  protection:     tpm ({tpm.tcti}; PCRs {pcrs})")


@group.command("rotate")
@etcd_rotation
@_target_options
def rotate_command(config_file: Path | None, keyring: Path | None, passphrase_file: Path | None) -> None:
    """Add a new primary KEK; older versions stay for decryption.

    Running `kubeshield kms serve` processes pick up the new key_id when they next refresh the keyring;
    kube-apiserver then writes new data under it. Re-encrypt old data with `kubeshield etcd rewrite`.
    The keyring file keeps its owner, group and mode. Back up a keyring right after rotating it (the
    command reminds you): until then no backup holds the new version.
    """
    with _errors():
        target = _resolve(config_file, keyring, passphrase_file)
        file_target = keyring_target(target.keys, passphrase_flag=passphrase_file is not None)
        if file_target is not None:
            rotated = file_target.file().rotate(passphrase=file_target.passphrase)
            key_id, where = rotated.info.primary.key_id, str(rotated.info.path)
        else:
            backend = open_primary(target.keys)
            try:
                if not isinstance(backend, Rotatable):
                    raise CLIError(
                        f"the {target.keys.backend!r} backend cannot rotate its keys from kubeshield"
                    )
                key_id, where = backend.rotate(), f"backend {target.keys.backend}"
            finally:
                backend.close()
    click.echo(f"Rotated {where}: new primary key_id {key_id}")
    if file_target is not None:
        click.echo(
            f"Back up the keyring now (kubeshield keys backup, docs/backup.md): no earlier backup holds "
            f"{key_id}, and the apiservers encrypt new writes under it within a minute.",
            err=True,
        )


def _list_doc(target: _Target) -> dict[str, Any]:
    keys = target.keys
    info = None
    if keys.backend == "local":
        info = KeyringFile(keys.local.keyring).read_info()  # the public part: no passphrase needed
    elif keys.backend == "tpm":
        # opened through the TPM, so listing also proves this node's TPM can unseal it
        tpm_target = keyring_target(keys, passphrase_flag=False)
        assert tpm_target is not None
        info = tpm_target.file().load(None).info
    if info is not None:
        return {
            "backend": keys.backend,
            "keyring": str(info.path),
            "keyringId": info.keyring_id,
            "keyringIdHash": identity_hash(info.keyring_id),
            "versionsDigest": info.versions_digest,
            "protection": info.kdf,
            "versions": [
                {"version": v.version, "keyId": v.key_id, "created": v.created, "state": v.state}
                for v in info.versions
            ],
        }
    backend = open_primary(target.keys)
    try:
        if not isinstance(backend, Exportable):
            raise CLIError(f"the {target.keys.backend!r} backend cannot list its key versions")
        identity = configured_identity(target.keys)
        return {
            "backend": target.keys.backend,
            "keyring": None,
            "keyringId": identity,
            "keyringIdHash": identity_hash(identity),
            "versionsDigest": None,
            "protection": None,
            "versions": [
                {"version": v.version, "keyId": v.key_id, "created": _rfc3339(v.created), "state": v.state}
                for v in backend.versions()
            ],
        }
    finally:
        backend.close()


@group.command("list")
@_target_options
@option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def list_command(
    config_file: Path | None, keyring: Path | None, passphrase_file: Path | None, output: str
) -> None:
    """List KEK versions (no key material), the keyring id and the versions digest.

    A local keyring needs no passphrase for this; a tpm keyring is opened with its TPM (so a keyring
    this node's TPM cannot unseal is an error here, not at the next start). Every node of a cluster must
    show the same keyring id and versions digest (`kubeshield kms status` shows them for a running
    plugin): see docs/backup.md, "One keyring for the cluster". For other backends the keyring id is
    the key's identity at the key service (e.g. pkcs11:token=...;object=...).
    """
    with _errors():
        doc = _list_doc(_resolve(config_file, keyring, passphrase_file))
    if output == "json":
        click.echo(json.dumps(doc, indent=2))
        return
    if doc["keyring"] is not None:
        click.echo(
            f"keyring {doc['keyring']}  id {doc['keyringId']}  protection {doc['protection']}  "
            f"versions digest {doc['versionsDigest']}"
        )
    else:
        click.echo(f"backend {doc['backend']}  id {doc['keyringId']}")
    rows = [("VERSION", "KEY ID", "CREATED", "STATE")] + [
        (str(v["version"]), v["keyId"], v["created"], v["state"]) for v in doc["versions"]
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


_READABLE = click.Path(dir_okay=False, exists=True, path_type=Path)


def _file_target(target: _Target, passphrase_file: Path | None, *, command: str) -> KeyringTarget:
    file_target = keyring_target(target.keys, passphrase_flag=passphrase_file is not None)
    if file_target is None:
        raise CLIError(
            f"keys {command} works on keyring files (keys.backend local or tpm); the "
            f"{target.keys.backend!r} backend's keys live in its key service (docs/backup.md)"
        )
    return file_target


@group.command("backup")
@_target_options
@option("--out", "out", type=_PATH, required=True, help="Where to write the age-encrypted backup (0600).")
@option("--recipient", "recipients", multiple=True, help="An age X25519 recipient (age1...); repeatable.")
@option("--recipients-file", type=_READABLE, help="File of age recipients, one per line (# comments).")
@option(
    "--backup-passphrase-file",
    type=_READABLE,
    help="Encrypt the backup to the passphrase in this file instead of to age recipients.",
)
@option("--force", is_flag=True, help="Replace an existing file at --out.")
def backup_command(
    config_file: Path | None,
    keyring: Path | None,
    passphrase_file: Path | None,
    out: Path,
    recipients: tuple[str, ...],
    recipients_file: Path | None,
    backup_passphrase_file: Path | None,
    force: bool,
) -> None:
    """Export the KEK versions of a keyring file (local, or tpm opened with its TPM), encrypted with age.

    \b
    Encrypt to age recipients (--recipient, --recipients-file) or to a passphrase
    (--backup-passphrase-file), not both. --passphrase-file opens a passphrase-protected keyring.
    Keys held by an HSM, Transit or AWS KMS cannot leave it: the command says so and names the
    vendor's backup procedure (docs/backup.md). Back up after every rotate and before every retire.

    \b
    Examples:
      kubeshield keys backup --keyring /var/lib/kubeshield/keyring \\
          --passphrase-file /etc/kubeshield/passphrase --out keyring.age --recipient age1...
      kubeshield keys backup --config /etc/kubeshield/kubeshield.yaml --out keyring.age \\
          --recipients-file recipients.txt
    """
    with _errors():
        target = _resolve(config_file, keyring, passphrase_file)
        reason = backups.non_exportable_reason(target.keys.backend)
        if reason is not None:
            raise CLIError(
                f"the {target.keys.backend!r} backend's keys are not exportable: {reason} (docs/backup.md)"
            )
        to = list(recipients) + (backups.read_recipients(recipients_file) if recipients_file else [])
        secret = (
            read_passphrase(passphrase_file=backup_passphrase_file, environ={})
            if (backup_passphrase_file)
            else None
        )
        if bool(to) == (secret is not None):
            raise click.UsageError(
                "give --recipient/--recipients-file or --backup-passphrase-file (exactly one kind)"
            )
        file_target = _file_target(target, passphrase_file, command="backup")
        opened = file_target.file().load(file_target.passphrase)
        data = backups.encrypt_backup(backups.export_payload(opened), recipients=to, passphrase=secret)
        backups.write_backup(out, data, force=force)
    how = f"{len(to)} age recipient(s)" if to else "a passphrase"
    click.echo(f"Wrote backup {out} (encrypted to {how})")
    click.echo(f"  keyring id:      {opened.info.keyring_id}")
    click.echo(f"  versions digest: {opened.info.versions_digest}")
    for v in opened.info.versions:
        click.echo(f"  {v.key_id}  {v.state}")


@group.command("restore")
@_target_options
@option("--in", "in_file", type=_READABLE, required=True, help="The age-encrypted backup to restore.")
@option("--identity-file", "identity_files", type=_READABLE, multiple=True, help="age identity file.")
@option("--backup-passphrase-file", type=_READABLE, help="File holding the backup's passphrase.")
@option("--force", is_flag=True, help="Replace an existing keyring (never dropping a version silently).")
@option(
    "--allow-drop",
    metavar="VERSIONS",
    help="With --force: versions of the current keyring that the backup lacks and may be dropped (3,4).",
)
def restore_command(
    config_file: Path | None,
    keyring: Path | None,
    passphrase_file: Path | None,
    in_file: Path,
    identity_files: tuple[Path, ...],
    backup_passphrase_file: Path | None,
    force: bool,
    allow_drop: str | None,
) -> None:
    """Decrypt a backup, verify it, and write it as the keyring the configuration names.

    \b
    Where and how it is written:
      --keyring PATH               a local keyring at PATH, sealed with --passphrase-file
                                   (or $KUBESHIELD_KEYRING_PASSPHRASE), else unprotected with a warning
      --config F, backend local    keys.local.keyring, sealed with keys.local.passphraseFile
      --config F, backend tpm      keys.tpm.keyring, sealed by the TPM at keys.tpm.tcti to keys.tpm.pcrs
      --config F, other backends   refused: their keys are restored by the key service's own procedure

    \b
    Open the backup with --identity-file (age identities) or --backup-passphrase-file. Before anything
    is written, every key's fingerprint is checked against its key_id and every version does a
    wrap/unwrap round trip through a keyring sealed as above. An existing keyring is replaced only
    with --force, keeps its owner, group and mode, and any of its versions the backup lacks (all of
    them if the backup is of another keyring) must be named in --allow-drop, or nothing is written.

    \b
    Examples:
      kubeshield keys restore --in keyring.age --identity-file node.agekey \\
          --config /etc/kubeshield/kubeshield.yaml
      kubeshield keys restore --in keyring.age --identity-file ops.agekey \\
          --keyring /var/lib/kubeshield/keyring --passphrase-file /etc/kubeshield/passphrase \\
          --force --allow-drop 3
    """
    with _errors():
        if allow_drop is not None and not force:
            raise click.UsageError("--allow-drop only applies with --force")
        drops = parse_versions(allow_drop, flag="--allow-drop") if allow_drop is not None else ()
        target = _resolve(config_file, keyring, passphrase_file)
        identities = [line for f in identity_files for line in backups.read_identities(f)]
        secret = (
            read_passphrase(passphrase_file=backup_passphrase_file, environ={})
            if (backup_passphrase_file)
            else None
        )
        if bool(identities) == (secret is not None):
            raise click.UsageError("give --identity-file or --backup-passphrase-file (exactly one kind)")
        file_target = _file_target(target, passphrase_file, command="restore")
        contents = backups.decrypt_backup(
            backups.read_backup_file(in_file), identities=identities, passphrase=secret
        )
        info = backups.restore_backup(
            contents,
            keyring=file_target.path,
            passphrase=file_target.passphrase,
            sealer=file_target.sealer,
            force=force,
            allow_drop=drops,
        )
    if file_target.backend == "local" and file_target.passphrase is None:
        click.echo(
            f"WARNING: no passphrase given (--passphrase-file or ${PASSPHRASE_ENV}): the restored keys are "
            "stored unencrypted in the keyring file.",
            err=True,
        )
    click.echo(f"Restored keyring {info.path} (verified: {len(info.versions)} version(s) round-tripped)")
    click.echo(f"  keyring id:      {info.keyring_id}")
    click.echo(f"  versions digest: {info.versions_digest}")
    click.echo(f"  primary key_id:  {info.primary.key_id}")
    click.echo(f"  protection:      {file_target.describe}")


@group.command("retire")
@_target_options
@option("--version", "version", type=int, required=True, help="The decrypt-only version to remove for good.")
@option("--endpoints", help="etcd endpoints (comma-separated): refuse while values there still need it.")
@option("--cacert", type=click.Path(dir_okay=False, exists=True), help="CA bundle for etcd's certificate.")
@option("--cert", type=click.Path(dir_okay=False, exists=True), help="Client certificate for etcd (TLS).")
@option("--key", "key_file", type=click.Path(dir_okay=False, exists=True), help="Client key for etcd (TLS).")
@option("--prefix", default="/registry", show_default=True, help="kube-apiserver's --etcd-prefix.")
@option(
    "--encryption-config",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The apiservers' EncryptionConfiguration (names their KMS providers exactly).",
)
@option("--timeout", type=DURATION, default="30s", show_default=True, help="Per etcd call.")
@option(
    "--no-etcd-check",
    is_flag=True,
    help="Retire without looking in etcd (only when you have proved otherwise that nothing needs it).",
)
def retire_command(
    config_file: Path | None,
    keyring: Path | None,
    passphrase_file: Path | None,
    version: int,
    endpoints: str | None,
    cacert: str | None,
    cert: str | None,
    key_file: str | None,
    prefix: str,
    encryption_config: Path | None,
    timeout: float,
    no_etcd_check: bool,
) -> int:
    """Remove a decrypt-only KEK version from a keyring file, after proving etcd no longer needs it.

    \b
    Refuses the primary version. With --endpoints (and --cacert/--cert/--key for TLS, as etcdctl
    spells them) it walks every resource under --prefix first and refuses, naming them, while any
    stored value is still encrypted under that version (KMS v2 by key_id, KMS v1 by the wrap's
    fingerprint) or cannot be checked. Without --endpoints it refuses unless --no-etcd-check says
    you checked another way. The keyring keeps its id, owner, group and mode.

    \b
    Back up the keyring BEFORE retiring (kubeshield keys backup): etcd snapshots older than the
    rewrite still need the old version, and only a backup still holds it. See docs/rotation.md.

    \b
    Example:
      kubeshield keys retire --config /etc/kubeshield/kubeshield.yaml --version 1 \\
          --endpoints https://127.0.0.1:2379 --cacert ca.crt --cert client.crt --key client.key \\
          --encryption-config /etc/kubernetes/enc/enc.yaml
    """
    if endpoints and no_etcd_check:
        raise click.UsageError("give --endpoints or --no-etcd-check, not both")
    if not endpoints and not no_etcd_check:
        raise click.UsageError(
            "give --endpoints (with --cacert/--cert/--key) so retire can prove etcd no longer needs the "
            "version, or --no-etcd-check"
        )
    with _errors():
        target = _resolve(config_file, keyring, passphrase_file)
        file_target = _file_target(target, passphrase_file, command="retire")
        info = file_target.file().read_info()
        chosen = next((v for v in info.versions if v.version == version), None)
        if chosen is None:
            listed = ", ".join(str(v.version) for v in info.versions)
            raise CLIError(f"{info.path}: version {version} is not in this keyring (its versions: {listed})")
        if chosen.state == "primary":
            raise CLIError(
                f"{info.path}: version {version} is the primary (it encrypts every new write); rotate first, "
                "then retire it once nothing is stored under it"
            )
        if endpoints:
            found = _scan_etcd(
                chosen,
                endpoints=endpoints,
                cacert=cacert,
                cert=cert,
                key_file=key_file,
                prefix=prefix,
                encryption_config=encryption_config,
                timeout=timeout,
            )
            if found.under or found.unreadable:
                _report_blockers(chosen, found)
                return EXIT_FAILURE
            click.echo(f"etcd: {found.scanned} stored value(s) checked, none needs {chosen.key_id}")
        retired = file_target.file().retire(version, passphrase=file_target.passphrase)
    click.echo(f"Retired version {version} ({chosen.key_id}) from {retired.info.path}")
    click.echo(f"  keyring id:      {retired.info.keyring_id}")
    click.echo(f"  versions digest: {retired.info.versions_digest}")
    click.echo(f"  versions left:   {', '.join(v.key_id for v in retired.info.versions)}")
    click.echo(
        "Running plugins drop the version at their next reload (5 s); do the same on every node "
        "(docs/backup.md, One keyring for the cluster).",
        err=True,
    )
    return 0


def _scan_etcd(chosen: Any, *, endpoints: str, **params: Any) -> ValuesUnder:
    from kubeshield.etcd.client import EtcdClient

    urls = [e.strip() for e in endpoints.split(",") if e.strip()]
    with EtcdClient(
        urls, cacert=params["cacert"], cert=params["cert"], key=params["key_file"], timeout=params["timeout"]
    ) as client:
        return find_values_under(
            client, chosen, prefix=params["prefix"], encryption_config=params["encryption_config"]
        )


def _report_blockers(chosen: Any, found: ValuesUnder) -> None:
    shown = 10
    if found.under:
        click.echo(
            f"refusing to retire {chosen.key_id}: {len(found.under)} stored value(s) are still encrypted "
            "under it; rewrite them first (kubeshield etcd rewrite ... --to <provider> --yes, "
            "docs/rotation.md):",
            err=True,
        )
        for key in found.under[:shown]:
            click.echo(f"  {key}", err=True)
        if len(found.under) > shown:
            click.echo(f"  ... and {len(found.under) - shown} more", err=True)
    if found.unreadable:
        click.echo(
            f"refusing to retire {chosen.key_id}: {len(found.unreadable)} KMS value(s) cannot be parsed, "
            "so nobody can tell which key they need:",
            err=True,
        )
        for key in found.unreadable[:shown]:
            click.echo(f"  {key}", err=True)
        if len(found.unreadable) > shown:
            click.echo(f"  ... and {len(found.unreadable) - shown} more", err=True)


@group.command("age-keygen")
@option("--out", "out", type=_PATH, required=True, help="Where to write the new age identity (0600).")
@option("--force", is_flag=True, help="Replace an existing file at --out.")
def age_keygen_command(out: Path, force: bool) -> None:
    """Create an age X25519 identity for receiving keyring backups; print its recipient (age1...).

    The same format as `age-keygen -o FILE` (the age tool is not needed). The identity file is written
    0600 and never printed; give the printed recipient to whoever runs `kubeshield keys backup`.

    \b
    Example (on each control-plane node that receives the cluster keyring):
      kubeshield keys age-keygen --out /etc/kubeshield/node.agekey
    """
    with _errors():
        recipient = backups.write_identity(out, force=force)
    click.echo(recipient)


group.add_command(sync_command)  # keys sync: the cluster keyring in etcd (cli/_keys_etcd.py)
