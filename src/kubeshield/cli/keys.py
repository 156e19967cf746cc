"""``kubeshield keys``: create, rotate and list key-encryption keys (KEKs).

Only parsing and rendering live here; the work is in :mod:`kubeshield.keys`. Key material is never
printed. The passphrase of a local keyring comes from ``--passphrase-file`` (or ``passphraseFile`` in
the config) or from ``KUBESHIELD_KEYRING_PASSPHRASE``, never from a flag value.

``list -o json`` schema (stable)::

    {"backend": "local", "keyring": "<path>" | null, "keyringId": "<uuid>" | null,
     "protection": "none" | "argon2id" | null,
     "versions": [{"version": 1, "keyId": "local:v1:...", "created": "<RFC3339>", "state": "primary"}]}
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

from kubeshield.cli._common import CLIError, option, raise_cli_error
from kubeshield.config import KeysSettings, LocalSettings, load_config
from kubeshield.errors import KubeshieldError
from kubeshield.keys.base import Exportable, Rotatable
from kubeshield.keys.keyring import KeyringFile
from kubeshield.keys.passphrase import PASSPHRASE_ENV, read_passphrase
from kubeshield.keys.registry import open_backend

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
    """Create, rotate and list key-encryption keys (KEKs).

    \b
    Select the keys with --keyring PATH (a local keyring file) or --config FILE (the keys: section of
    kubeshield.yaml); --keyring wins. A local keyring's passphrase is read from --passphrase-file or
    from $KUBESHIELD_KEYRING_PASSPHRASE, never from a flag value.

    \b
    Examples:
      kubeshield keys init --keyring /var/lib/kubeshield/keyring --passphrase-file /etc/kubeshield/passphrase
      kubeshield keys rotate --config /etc/kubeshield/kubeshield.yaml
      kubeshield keys list --keyring /var/lib/kubeshield/keyring -o json
    """


@group.command("init")
@_target_options
@option(
    "--force", is_flag=True, help="Replace an existing keyring. Secrets encrypted under it become unreadable."
)
def init_command(
    config_file: Path | None, keyring: Path | None, passphrase_file: Path | None, force: bool
) -> None:
    """Create a new local keyring with one primary KEK.

    With a passphrase (--passphrase-file or $KUBESHIELD_KEYRING_PASSPHRASE) the keys are sealed with
    AES-256-GCM under an Argon2id-derived key. Without one the keyring is created unprotected and a
    warning is printed: then only file permissions (0600) and disk encryption protect it.
    Refuses to overwrite an existing keyring unless --force is given.
    """
    with _errors():
        target = _resolve(config_file, keyring, passphrase_file)
        if not target.is_local:
            raise CLIError(
                f"keys init creates local keyrings only; the {target.keys.backend!r} backend's keys are "
                "created in that key service"
            )
        passphrase = read_passphrase(passphrase_file=target.local.passphrase_file)
        created = KeyringFile(target.local.keyring).create(passphrase=passphrase, force=force)
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


@group.command("rotate")
@_target_options
def rotate_command(config_file: Path | None, keyring: Path | None, passphrase_file: Path | None) -> None:
    """Add a new primary KEK; older versions stay for decryption.

    Running `kubeshield kms serve` processes pick up the new key_id when they next refresh the keyring;
    kube-apiserver then writes new data under it. Re-encrypt old data with `kubeshield etcd rewrite`.
    """
    with _errors():
        target = _resolve(config_file, keyring, passphrase_file)
        if target.is_local:
            passphrase = read_passphrase(passphrase_file=target.local.passphrase_file)
            rotated = KeyringFile(target.local.keyring).rotate(passphrase=passphrase)
            key_id, where = rotated.info.primary.key_id, str(rotated.info.path)
        else:
            backend = open_backend(target.keys)
            try:
                if not isinstance(backend, Rotatable):
                    raise CLIError(
                        f"the {target.keys.backend!r} backend cannot rotate its keys from kubeshield"
                    )
                key_id, where = backend.rotate(), f"backend {target.keys.backend}"
            finally:
                backend.close()
    click.echo(f"Rotated {where}: new primary key_id {key_id}")


@group.command("list")
@_target_options
@option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def list_command(
    config_file: Path | None, keyring: Path | None, passphrase_file: Path | None, output: str
) -> None:
    """List KEK versions (no key material). A local keyring needs no passphrase for this."""
    with _errors():
        target = _resolve(config_file, keyring, passphrase_file)
        if target.is_local:
            info = KeyringFile(target.local.keyring).read_info()
            doc: dict[str, Any] = {
                "backend": "local",
                "keyring": str(info.path),
                "keyringId": info.keyring_id,
                "protection": info.kdf,
                "versions": [
                    {"version": v.version, "keyId": v.key_id, "created": v.created, "state": v.state}
                    for v in info.versions
                ],
            }
        else:
            backend = open_backend(target.keys)
            try:
                if not isinstance(backend, Exportable):
                    raise CLIError(f"the {target.keys.backend!r} backend cannot list its key versions")
                doc = {
                    "backend": target.keys.backend,
                    "keyring": None,
                    "keyringId": None,
                    "protection": None,
                    "versions": [
                        {
                            "version": v.version,
                            "keyId": v.key_id,
                            "created": _rfc3339(v.created),
                            "state": v.state,
                        }
                        for v in backend.versions()
                    ],
                }
            finally:
                backend.close()
    if output == "json":
        click.echo(json.dumps(doc, indent=2))
        return
    if doc["keyring"] is not None:
        click.echo(f"keyring {doc['keyring']}  id {doc['keyringId']}  protection {doc['protection']}")
    rows = [("VERSION", "KEY ID", "CREATED", "STATE")] + [
        (str(v["version"]), v["keyId"], v["created"], v["state"]) for v in doc["versions"]
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
