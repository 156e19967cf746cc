"""The service-mode half of ``kubeshield keys``: the cluster keyring in etcd.

* ``keys rotate --etcd-endpoints URLS [--cacert F --cert F --key F] [--sync-prefix P]`` rotates the
  etcd copy with a compare-and-swap (:func:`kubeshield.kms.sync_ops.rotate_in_etcd`) instead of one
  replica's keyring file; every replica adopts the new version by the ordinary sync rule.
* ``keys sync --from etcd|local`` makes one side equal to the other
  (:func:`kubeshield.kms.sync_ops.resolve`): publish the cluster keyring the first time, install it on a
  node, end a divergence.

TLS to etcd is ``--cacert --cert --key``, as etcdctl spells them. Only parsing and rendering live here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import click

from kubeshield.cli._common import option, raise_cli_error
from kubeshield.errors import KubeshieldError

__all__ = ["etcd_rotation", "sync_command"]

F = TypeVar("F", bound=Callable[..., Any])
_DEFAULT_PREFIX = "/kubeshield/keyring/"
_PATH = click.Path(dir_okay=False, path_type=Path)


def _etcd_options(func: F, *, required: bool) -> F:
    func = option(
        "--sync-prefix", default=_DEFAULT_PREFIX, show_default=True, help="etcd prefix of the keyring sync."
    )(func)
    func = option("--key", "etcd_key", type=click.Path(dir_okay=False), help="etcd client key (TLS).")(func)
    func = option("--cert", "etcd_cert", type=click.Path(dir_okay=False), help="etcd client cert (TLS).")(
        func
    )
    func = option("--cacert", "etcd_cacert", type=click.Path(dir_okay=False), help="etcd CA (TLS).")(func)
    func = option(
        "--etcd-endpoints",
        required=required,
        help="etcd URLs (comma-separated) holding the cluster keyring that `kms serve` replicas sync.",
    )(func)
    return func


def _required_etcd_options(func: F) -> F:
    return _etcd_options(func, required=True)


def _store(endpoints: str, cacert: str | None, cert: str | None, key: str | None) -> Any:
    from kubeshield.etcd.client import EtcdClient

    urls = [e.strip() for e in endpoints.split(",") if e.strip()]
    if not urls:
        raise click.BadParameter("at least one etcd URL is required", param_hint="--etcd-endpoints")
    return EtcdClient(urls, cacert=cacert, cert=cert, key=key, timeout=5.0)


def _passphrase(config_file: Path | None, passphrase_file: Path | None) -> bytes | None:
    from kubeshield.config import load_config
    from kubeshield.keys.passphrase import read_passphrase

    if passphrase_file is None and config_file is not None:
        passphrase_file = load_config(config_file).keys.local.passphrase_file
    return read_passphrase(passphrase_file=passphrase_file)


def etcd_rotation(command: F) -> F:
    """Give ``keys rotate`` the ``--etcd-endpoints`` route (apply below ``@group.command``)."""

    @functools.wraps(command)
    def run(
        *args: Any,
        etcd_endpoints: str | None,
        etcd_cacert: str | None,
        etcd_cert: str | None,
        etcd_key: str | None,
        sync_prefix: str,
        **kwargs: Any,
    ) -> Any:
        if etcd_endpoints is None:
            if etcd_cacert or etcd_cert or etcd_key or sync_prefix != _DEFAULT_PREFIX:
                raise click.UsageError("--cacert/--cert/--key/--sync-prefix need --etcd-endpoints")
            return command(*args, **kwargs)
        if kwargs.get("keyring") is not None:
            raise click.UsageError(
                "--keyring with --etcd-endpoints: a rotation through etcd changes the cluster keyring in "
                "etcd (every replica adopts it); rotate a local keyring file without --etcd-endpoints"
            )
        _rotate_in_etcd(
            endpoints=etcd_endpoints,
            cacert=etcd_cacert,
            cert=etcd_cert,
            key=etcd_key,
            prefix=sync_prefix,
            passphrase=_passphrase(kwargs.get("config_file"), kwargs.get("passphrase_file")),
        )
        return None

    def collect() -> None: ...

    _etcd_options(collect, required=False)
    # after the command's own options in --help (click lists __click_params__ in reverse)
    params = getattr(collect, "__click_params__", []) + getattr(command, "__click_params__", [])
    run.__click_params__ = params  # type: ignore[attr-defined]
    run.__doc__ = (command.__doc__ or "").rstrip() + (
        "\n\n    With --etcd-endpoints (service mode) the cluster keyring in etcd is rotated with a "
        "compare-and-swap, so two rotations can never create the same version twice; every `kms serve "
        "--etcd-endpoints` replica adopts the new version within about two sync intervals, and the relay "
        "reports it once every healthy replica serves it. Give the keyring passphrase (--passphrase-file, "
        "or --config's keys.local.passphraseFile, or $KUBESHIELD_KEYRING_PASSPHRASE), no --keyring.\n\n"
        "    \b\n    Example:\n      kubeshield keys rotate --passphrase-file /etc/kubeshield/passphrase \\\n"
        "          --etcd-endpoints https://10.0.0.11:2379 --cacert ca.crt --cert c.crt --key c.key"
    )
    return cast(F, run)


def _rotate_in_etcd(
    *,
    endpoints: str,
    cacert: str | None,
    cert: str | None,
    key: str | None,
    prefix: str,
    passphrase: bytes | None,
) -> None:
    from kubeshield.kms.sync_ops import etcd_key, rotate_in_etcd

    try:
        store = _store(endpoints, cacert, cert, key)
        try:
            rotation = rotate_in_etcd(store=store, passphrase=passphrase, prefix=prefix)
        finally:
            store.close()
    except KubeshieldError as exc:
        raise_cli_error(exc)
    click.echo(f"Rotated the cluster keyring in etcd ({etcd_key(prefix).decode()})")
    click.echo(f"  keyring id:     {rotation.keyring_id}")
    click.echo(f"  primary key_id: {rotation.key_id} ({rotation.versions} versions)")
    click.echo("  every `kms serve --etcd-endpoints` replica adopts it at its next sync round")


@click.command("sync")
@option(
    "--from",
    "source",
    type=click.Choice(["etcd", "local"]),
    required=True,
    help="Which side wins: etcd (install the etcd copy here) or local (publish this keyring to etcd).",
)
@option("--keyring", type=_PATH, help="The local keyring file (overrides the config).")
@option("--config", "config_file", type=_PATH, help="kubeshield.yaml (keys.local.keyring, passphraseFile).")
@option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Keyring passphrase file (else passphraseFile, else $KUBESHIELD_KEYRING_PASSPHRASE).",
)
@option("--allow-drop", is_flag=True, help="Drop versions only the overwritten side holds (named first).")
@option("--dry-run", is_flag=True, help="Say what would be done; write nothing.")
@_required_etcd_options
def sync_command(
    source: str,
    keyring: Path | None,
    config_file: Path | None,
    passphrase_file: Path | None,
    allow_drop: bool,
    dry_run: bool,
    etcd_endpoints: str,
    etcd_cacert: str | None,
    etcd_cert: str | None,
    etcd_key: str | None,
    sync_prefix: str,
) -> None:
    """Make the cluster keyring in etcd and a local keyring file equal (service mode).

    \b
    --from local  publishes the local keyring to etcd: the first time (etcd holds none), or to end a
                  divergence in favour of this file. Replicas started with an empty keyring path and
                  --etcd-endpoints adopt it.
    --from etcd   writes the etcd copy into the local file: to install the cluster keyring on a node,
                  or to end a divergence on a replica (its versions etcd lacks are dropped).

    Nothing is dropped silently: when the overwritten side holds versions the other lacks, the command
    names their key_ids and refuses unless --allow-drop is given (data encrypted under a dropped version
    can no longer be decrypted; check with `kubeshield etcd audit` first). Only passphrase-protected
    keyrings ever go to etcd, and each side must open with the passphrase.

    \b
    Examples:
      kubeshield keys init --keyring cluster-keyring --passphrase-file pass
      kubeshield keys sync --from local --keyring cluster-keyring --passphrase-file pass \\
          --etcd-endpoints https://10.0.0.11:2379 --cacert ca.crt --cert c.crt --key c.key
      kubeshield keys sync --from etcd --keyring /var/lib/kubeshield/sync/keyring --passphrase-file pass \\
          --etcd-endpoints https://10.0.0.11:2379 --cacert ca.crt --cert c.crt --key c.key --dry-run
    """
    from kubeshield.config import load_config
    from kubeshield.kms.sync_ops import etcd_key as etcd_key_of
    from kubeshield.kms.sync_ops import resolve

    if keyring is None:
        if config_file is None:
            raise click.UsageError("give --keyring PATH or --config FILE")
        keyring = Path(load_config(config_file).keys.local.keyring)
    try:
        passphrase = _passphrase(config_file, passphrase_file)
        store = _store(etcd_endpoints, etcd_cacert, etcd_cert, etcd_key)
        try:
            result = resolve(
                store=store,
                keyring=keyring,
                passphrase=passphrase,
                source=cast(Literal["etcd", "local"], source),
                prefix=sync_prefix,
                allow_drop=allow_drop,
                dry_run=dry_run,
            )
        finally:
            store.close()
    except KubeshieldError as exc:
        raise_cli_error(exc)
    where = etcd_key_of(sync_prefix).decode()
    if result.action == "in-sync":
        click.echo(f"{keyring} and etcd ({where}) already hold the same versions; nothing to do")
        return
    if result.action == "published":
        done = f"published {keyring} to etcd ({where})"
    else:
        done = f"installed the etcd copy ({where}) into {keyring}"
    click.echo(("dry run: would have " if dry_run else "") + done)
    click.echo(f"  keyring id: {result.keyring_id} ({result.versions} versions)")
    if result.dropped:
        click.echo(f"  dropped:    {', '.join(result.dropped)}")
