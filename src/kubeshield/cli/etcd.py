"""``kubeshield etcd``: audit, decrypt and rewrite what kube-apiserver stored in etcd.

Flag parsing and rendering only; the logic is :mod:`kubeshield.etcd`. Exit codes: 0 ok, 1 findings
(``--fail-on``) or any key that failed, 2 usage error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

import click

from kubeshield.cli._common import EXIT_FAILURE, CLIError, option
from kubeshield.errors import KubeshieldError

__all__ = ["group"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


@click.group("etcd")
def group() -> None:
    """Prove encryption at rest, recover Secrets from etcd or a snapshot, migrate keys."""


def _source_options(*, snapshot: bool, tls_key_flag: str = "--key") -> Callable[[F], F]:
    """The flags that pick etcd or a snapshot. ``decrypt`` uses ``--key`` for etcd keys (DESIGN.md), so
    there the TLS client key is ``--client-key``."""

    def decorate(func: F) -> F:
        opts = [
            option("--endpoints", help="etcd endpoints, comma-separated (http(s)://HOST:PORT)."),
            option(
                "--cacert", type=click.Path(dir_okay=False), help="CA bundle to verify etcd's certificate."
            ),
            option("--cert", type=click.Path(dir_okay=False), help="Client certificate for etcd (TLS)."),
            option(
                tls_key_flag, "key_file", type=click.Path(dir_okay=False), help="Client key for etcd (TLS)."
            ),
            option(
                "--prefix", default="/registry", show_default=True, help="kube-apiserver's --etcd-prefix."
            ),
            option("--timeout", type=float, default=30.0, show_default=True, help="Seconds per etcd call."),
        ]
        if snapshot:
            opts.append(
                option(
                    "--snapshot",
                    type=click.Path(exists=True, dir_okay=False),
                    help="Read an etcdctl snapshot file instead of a live etcd.",
                )
            )
        for opt in reversed(opts):
            func = opt(func)
        return func

    return decorate


def _resources(text: str) -> list[str] | None:
    items = [r.strip() for r in text.split(",") if r.strip()]
    if not items:
        raise click.UsageError("--resources: give at least one resource, or 'all'")
    return None if items == ["all"] else items


def _open_source(stack: ExitStack, params: dict[str, Any], *, allow_snapshot: bool = True) -> Any:
    from kubeshield.etcd.client import EtcdClient
    from kubeshield.etcd.snapshot import SnapshotReader

    snapshot, endpoints = params.get("snapshot"), params.get("endpoints")
    if snapshot and endpoints:
        raise click.UsageError("give either --endpoints or --snapshot, not both")
    if snapshot and allow_snapshot:
        return stack.enter_context(SnapshotReader(snapshot))
    if not endpoints:
        raise click.UsageError("--endpoints is required" + (" (or --snapshot)" if allow_snapshot else ""))
    client = EtcdClient(
        [e for e in endpoints.split(",") if e.strip()],
        cacert=params.get("cacert"),
        cert=params.get("cert"),
        key=params.get("key_file"),
        timeout=params["timeout"],
    )
    return stack.enter_context(client)


def _chains(stack: ExitStack, config_path: str | None) -> tuple[Any, Any]:
    from kubeshield.config.encryption import load_encryption_config
    from kubeshield.etcd.transformers import ChainSet

    if config_path is None:
        return None, None
    config = load_encryption_config(config_path)
    chains = ChainSet(config)
    stack.callback(chains.close)
    return config, chains


def _progress(items: Iterator[T], *, label: str) -> Iterator[T]:
    """A live counter on stderr when it is a terminal; otherwise the items unchanged."""
    if not sys.stderr.isatty():
        yield from items
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description} {task.completed} keys"),
        TimeElapsedColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(label)
        for item in items:
            yield item
            bar.advance(task)


# -- audit ------------------------------------------------------------------------------------------------


@group.command("audit")
@_source_options(snapshot=True)
@option(
    "--encryption-config", type=click.Path(dir_okay=False), help="EncryptionConfiguration: judge staleness."
)
@option("--resources", default="secrets", show_default=True, help="Comma-separated resources, or 'all'.")
@option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@option(
    "--fail-on",
    type=click.Choice(["plaintext", "stale"]),
    multiple=True,
    help="Exit 1 when any value is in plaintext / stale (repeatable).",
)
def audit_cmd(**params: Any) -> int:
    """Classify every stored value (format, provider, key_id); never prints a secret value."""
    from kubeshield.etcd.audit import AuditSummary, audit

    resources = _resources(params["resources"])
    summary = AuditSummary()
    as_json = params["output"] == "json"
    try:
        with ExitStack() as stack:
            source = _open_source(stack, params)
            config, chains = _chains(stack, params["encryption_config"])
            records = audit(
                source,
                prefix=params["prefix"],
                resources=resources,
                config=config,
                chains=chains,
                summary=summary,
            )
            if as_json:
                out = sys.stdout
                out.write('{"records": [')
                for i, record in enumerate(_progress(records, label="auditing")):
                    out.write(("," if i else "") + "\n  " + json.dumps(record.to_json()))
                out.write('\n], "summary": ' + json.dumps(summary.to_json()) + "}\n")
            else:
                for _ in _progress(records, label="auditing"):
                    pass
                _render_audit_table(summary, with_config=config is not None)
    except KubeshieldError as exc:
        raise CLIError(f"{type(exc).__name__}: {exc}") from exc
    failed = summary.errors > 0
    if "plaintext" in params["fail_on"] and summary.plaintext:
        failed = True
    if "stale" in params["fail_on"] and summary.stale:
        failed = True
    return EXIT_FAILURE if failed else 0


def _render_audit_table(summary: Any, *, with_config: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    table = Table(title=f"{summary.total} keys")
    for column in ("resource", "format", "provider", "key_id", "count"):
        table.add_column(column, justify="right" if column == "count" else "left")
    for group_key, count in sorted(summary.groups.items()):
        resource, fmt, provider, key_id = group_key
        table.add_row(resource, fmt, provider or "-", key_id or "-", str(count))
    console.print(table)
    stale = str(summary.stale) if with_config else "n/a (no --encryption-config)"
    console.print(
        f"plaintext: {summary.plaintext}  stale: {stale}  errors: {summary.errors}", highlight=False
    )
    for name, key_id in sorted(summary.current_key_ids.items()):
        console.print(f"KMS provider {name}: current key_id {key_id}", highlight=False, markup=False)
    if summary.problems:
        console.print("problems:", highlight=False)
        for problem in summary.problems:
            console.print(f"  {problem}", highlight=False, markup=False)
        hidden = summary.plaintext + summary.stale + summary.errors - len(summary.problems)
        if hidden > 0:
            console.print("  ... and more; use -o json for every record", highlight=False)


# -- decrypt ----------------------------------------------------------------------------------------------


@group.command("decrypt")
@_source_options(snapshot=True, tls_key_flag="--client-key")
@option(
    "--encryption-config",
    type=click.Path(dir_okay=False),
    required=True,
    help="EncryptionConfiguration to read with.",
)
@option("--resources", default="secrets", show_default=True, help="Comma-separated resources, or 'all'.")
@option(
    "--key",
    "keys",
    multiple=True,
    envvar="KUBESHIELD_ETCD_KEY",
    help="An exact etcd key to decrypt (repeatable).",
)
@option("--namespace", help="Every object of --resources in this namespace.")
@option("--all", "all_keys", is_flag=True, help="Every object of --resources.")
@option("-o", "--output", type=click.Choice(["yaml", "json"]), help="Print the objects on stdout.")
@option("--out-dir", type=click.Path(file_okay=False), help="Write one file (mode 0600) per object here.")
def decrypt_cmd(**params: Any) -> int:
    """Decrypt stored objects exactly as kube-apiserver would (disaster recovery; works on a snapshot)."""
    from kubeshield.etcd.decrypt import decrypt
    from kubeshield.etcd.output import dump_manifest, manifest_path, write_private_file

    chosen = sum(bool(x) for x in (params["keys"], params["namespace"], params["all_keys"]))
    if chosen != 1:
        raise click.UsageError("choose exactly one of --key, --namespace, --all")
    if bool(params["output"]) == bool(params["out_dir"]):
        raise click.UsageError("choose exactly one of -o yaml|json and --out-dir")
    resources = _resources(params["resources"])
    if params["namespace"] and resources is None:
        raise click.UsageError("--namespace needs explicit --resources (not 'all')")
    fmt = params["output"] or "yaml"
    out_dir = Path(params["out_dir"]) if params["out_dir"] else None
    ok = failed = 0
    manifests: list[dict[str, Any]] = []
    try:
        with ExitStack() as stack:
            source = _open_source(stack, params)
            _, chains = _chains(stack, params["encryption_config"])
            items = decrypt(
                source,
                chains=chains,
                prefix=params["prefix"],
                resources=resources,
                keys=list(params["keys"]),
                namespace=params["namespace"],
            )
            out = sys.stdout
            first = True
            for item in _progress(items, label="decrypting"):
                if item.manifest is None:
                    failed += 1
                    click.echo(f"error: {item.key}: {item.error}", err=True)
                    continue
                ok += 1
                if out_dir is not None:
                    path = manifest_path(out_dir, item.path, fmt="yaml")
                    write_private_file(path, dump_manifest(item.manifest, fmt="yaml").encode())
                elif fmt == "yaml":
                    out.write(("" if first else "---\n") + dump_manifest(item.manifest, fmt="yaml"))
                else:
                    manifests.append(item.manifest)
                first = False
            if fmt == "json" and out_dir is None:
                out.write(
                    json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}, indent=2) + "\n"
                )
    except KubeshieldError as exc:
        raise CLIError(f"{type(exc).__name__}: {exc}") from exc
    where = f" into {out_dir}" if out_dir is not None else ""
    click.echo(f"decrypted {ok} objects{where}; {failed} failed", err=True)
    return EXIT_FAILURE if failed or ok == 0 else 0


# -- rewrite ----------------------------------------------------------------------------------------------


@group.command("rewrite")
@_source_options(snapshot=False)
@option(
    "--encryption-config", type=click.Path(dir_okay=False), required=True, help="EncryptionConfiguration."
)
@option(
    "--to",
    "to",
    required=True,
    help="Provider to write with: a KMS name, aesgcm, aescbc, secretbox, identity.",
)
@option("--resources", default="secrets", show_default=True, help="Comma-separated resources, or 'all'.")
@option("--dry-run", is_flag=True, help="Only print the plan (the default).")
@option("--yes", is_flag=True, help="Apply the rewrite.")
@option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def rewrite_cmd(**params: Any) -> int:
    """Re-encrypt stored values with one provider (guarded writes, resumable, dry-run by default)."""
    from kubeshield.etcd.rewrite import rewrite

    if params["dry_run"] and params["yes"]:
        raise click.UsageError("--dry-run and --yes contradict each other")
    apply = bool(params["yes"])
    resources = _resources(params["resources"])
    counts: dict[str, int] = {}
    conflicts = 0
    try:
        with ExitStack() as stack:
            source = _open_source(stack, params, allow_snapshot=False)
            _, chains = _chains(stack, params["encryption_config"])
            records = rewrite(
                source,
                chains=chains,
                to=params["to"],
                prefix=params["prefix"],
                resources=resources,
                apply=apply,
                allow_plaintext=apply and params["to"] == "identity",
            )
            for record in _progress(records, label="rewriting"):
                counts[record.action] = counts.get(record.action, 0) + 1
                conflicts += record.conflicts
                if params["output"] == "json":
                    click.echo(json.dumps(record.to_json()))
                elif record.action != "skipped":
                    detail = f" (from {record.source})" if record.source else ""
                    if record.conflicts:
                        detail += f" after {record.conflicts} concurrent write(s)"
                    if record.error:
                        detail += f": {record.error}"
                    click.echo(f"{record.action}: {record.key}{detail}")
    except KubeshieldError as exc:
        raise CLIError(f"{type(exc).__name__}: {exc}") from exc
    summary = ", ".join(f"{n} {a}" for a, n in sorted(counts.items())) or "no keys"
    mode = "" if apply else " (dry run: nothing written; add --yes to apply)"
    click.echo(f"rewrite to {params['to']}: {summary}; {conflicts} concurrent writes retried{mode}", err=True)
    return EXIT_FAILURE if counts.get("error") else 0
