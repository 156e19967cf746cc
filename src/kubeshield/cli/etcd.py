"""``kubeshield etcd``: audit, decrypt and rewrite what kube-apiserver stored in etcd.

Flag parsing and rendering only; the logic is :mod:`kubeshield.etcd`. Exit codes: 0 ok, 1 findings
(``--fail-on``) or any key that failed, 2 usage error.

Flags shared by the three commands, with their variables (the same ones work for every command):

* ``--endpoints`` and etcd TLS as etcdctl spells it: ``--cacert --cert --key`` (``KUBESHIELD_ENDPOINTS``,
  ``KUBESHIELD_CACERT``, ``KUBESHIELD_CERT``, ``KUBESHIELD_KEY``); ``--client-key`` is a deprecated alias
  of ``--key``;
* ``--prefix``, ``--timeout`` (a duration: ``30s``, ``1m``, or seconds);
* ``--kms-endpoint NAME=unix:///PATH`` to dial a KMS provider of the EncryptionConfiguration on another
  socket without editing the file (recovery), ``--skip-kms NAME`` to run without a provider.

``etcd decrypt`` chooses objects with ``--object ETCDKEY`` (``KUBESHIELD_OBJECT``). Its old spelling
``--key ETCDKEY`` keeps working, with a deprecation warning, only where it cannot mean the TLS key: on
the command line, with no other selector, and every value an etcd key under ``--prefix`` that is not a
file. ``$KUBESHIELD_KEY`` is always the TLS key.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

import click

from kubeshield.cli._common import (
    DURATION,
    EXIT_FAILURE,
    CLIError,
    etcd_tls,
    etcd_tls_options,
    option,
    warn,
)
from kubeshield.errors import ConfigError, KubeshieldError

__all__ = ["group"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


@click.group("etcd")
def group() -> None:
    """Prove encryption at rest, recover Secrets from etcd or a snapshot, migrate keys.

    \b
    TLS to etcd uses etcdctl's flags: --cacert, --cert, --key (or KUBESHIELD_CACERT, KUBESHIELD_CERT,
    KUBESHIELD_KEY), the same for audit, decrypt and rewrite.
    """


class _KeyOption(click.Option):
    """``decrypt --key``: repeatable on the command line (for the deprecated ``--key ETCDKEY ...``), but
    ``$KUBESHIELD_KEY`` is one TLS key file and is never split."""

    def value_from_envvar(self, ctx: click.Context) -> Any:
        value = self.resolve_envvar_value(ctx)
        return None if value is None else (value,)


def _source_options(*, snapshot: bool, key_option: bool = True) -> Callable[[F], F]:
    """The flags that pick etcd or a snapshot, and how to reach it."""

    def decorate(func: F) -> F:
        opts = [
            option("--endpoints", help="etcd endpoints, comma-separated (http(s)://HOST:PORT)."),
            etcd_tls_options(key_option=key_option),
        ]
        if not key_option:  # decrypt: --key repeatable for the deprecated --key ETCDKEY form
            opts.append(
                click.option(
                    "--key",
                    "key",
                    cls=_KeyOption,
                    multiple=True,
                    envvar="KUBESHIELD_KEY",
                    show_envvar=True,
                    metavar="FILE",
                    help="Client private key for etcd (etcdctl --key). The old --key ETCDKEY still selects "
                    "objects, with a warning, when it can only mean that.",
                )
            )
        opts += [
            option(
                "--prefix", default="/registry", show_default=True, help="kube-apiserver's --etcd-prefix."
            ),
            option(
                "--timeout",
                type=DURATION,
                default="30s",
                show_default=True,
                help="Deadline of each etcd call (30s, 1m, or seconds).",
            ),
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


def _kms_options(func: F) -> F:
    opts = [
        option(
            "--kms-endpoint",
            "kms_endpoint",
            multiple=True,
            metavar="NAME=ENDPOINT",
            help="Dial KMS provider NAME of the EncryptionConfiguration at ENDPOINT (unix:///PATH) instead "
            "of the file's endpoint; the name stays, it is part of every stored value (repeatable).",
        ),
        option(
            "--skip-kms",
            "skip_kms",
            multiple=True,
            metavar="NAME",
            help="Run without KMS provider NAME: no check that its plugin answers; values under it fail.",
        ),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def _resources(text: str, prefix: str) -> list[str] | None:
    from kubeshield.etcd.walk import walk_targets

    items = [r.strip() for r in text.split(",") if r.strip()]
    if not items:
        raise click.UsageError("--resources: give at least one resource, or 'all'")
    if items == ["all"] or "*.*" in items:
        return None
    for item in items:
        try:
            walk_targets(prefix, item)
        except ConfigError as exc:
            raise click.UsageError(f"--resources: {exc}") from None
    return items


def _open_source(stack: ExitStack, params: dict[str, Any], *, allow_snapshot: bool = True) -> Any:
    from kubeshield.etcd.client import EtcdClient
    from kubeshield.etcd.snapshot import SnapshotReader

    snapshot, endpoints = params.get("snapshot"), params.get("endpoints")
    if snapshot and endpoints:
        raise click.UsageError("give either --endpoints or --snapshot, not both")
    tls = etcd_tls(params)
    if snapshot and allow_snapshot:
        return stack.enter_context(SnapshotReader(snapshot))
    if not endpoints:
        raise click.UsageError("--endpoints is required" + (" (or --snapshot)" if allow_snapshot else ""))
    client = EtcdClient(
        [e for e in endpoints.split(",") if e.strip()],
        cacert=tls.cacert,
        cert=tls.cert,
        key=tls.key,
        timeout=params["timeout"],
        flags=tls.flags,
    )
    return stack.enter_context(client)


def _kms_overrides(values: Sequence[str]) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for value in values:
        name, sep, endpoint = value.partition("=")
        if not sep or not name or not endpoint:
            raise click.UsageError(f"--kms-endpoint: expected NAME=unix:///PATH, got {value!r}")
        if name in overrides and overrides[name] != endpoint:
            raise click.UsageError(f"--kms-endpoint: provider {name!r} given twice")
        overrides[name] = endpoint
    return overrides


def _chains(stack: ExitStack, params: dict[str, Any], *, resources: Sequence[str] | None) -> tuple[Any, Any]:
    """Load the EncryptionConfiguration, apply ``--kms-endpoint``, and check every KMS endpoint the walk
    can need before anything is read (a dead socket fails here, not once per key)."""
    from kubeshield.config.encryption import load_encryption_config, socket_path_from_endpoint
    from kubeshield.etcd.kms_check import check_kms_providers, kms_providers_for
    from kubeshield.etcd.transformers import ChainSet, KMSPlugins

    path = params.get("encryption_config")
    overrides = _kms_overrides(params.get("kms_endpoint") or ())
    skip = tuple(params.get("skip_kms") or ())
    if path is None:
        if overrides or skip:
            raise click.UsageError("--kms-endpoint and --skip-kms need --encryption-config")
        return None, None
    config = load_encryption_config(path).with_kms_endpoints(overrides)
    names = {p.name for p in config.kms_providers()}
    for name in skip:
        if name not in names:
            have = ", ".join(sorted(names)) or "none"
            raise click.UsageError(f"--skip-kms: no KMS provider named {name!r} (have: {have})")
    providers = kms_providers_for(config, resources)
    for p in providers:
        if p.name not in skip and socket_path_from_endpoint(p.endpoint).startswith("@"):
            warn(
                f"KMS provider {p.name!r} uses the abstract socket {p.endpoint}: abstract sockets have no "
                "permissions, so any local process could be answering"
            )
    check_kms_providers(providers, skip=skip)
    chains = ChainSet(config, plugins=KMSPlugins(skip=skip))
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


_RESOURCES_HELP = (
    "Comma-separated resources as an EncryptionConfiguration names them (secrets, deployments.apps, "
    "widgets.example.com, *.apps, *.), or 'all'."
)


# -- audit ------------------------------------------------------------------------------------------------


@group.command("audit")
@_source_options(snapshot=True)
@option(
    "--encryption-config", type=click.Path(dir_okay=False), help="EncryptionConfiguration: judge staleness."
)
@_kms_options
@option("--resources", default="secrets", show_default=True, help=_RESOURCES_HELP)
@option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@option(
    "--fail-on",
    type=click.Choice(["plaintext", "stale"]),
    multiple=True,
    help="Exit 1 when any value is in plaintext / stale (repeatable).",
)
def audit_cmd(**params: Any) -> int:
    """Classify every stored value (format, provider, key_id); never prints a secret value.

    With --encryption-config a value is stale when kube-apiserver would call it stale on read; only KMS
    Status is asked (each plugin's socket is checked first).

    \b
    Examples:
      kubeshield etcd audit --endpoints https://127.0.0.1:2379 --cacert ca.crt --cert client.crt \\
          --key client.key --encryption-config /etc/kubernetes/enc/enc.yaml --fail-on plaintext
      kubeshield etcd audit --snapshot etcd.db --resources secrets,configmaps -o json
    """
    from kubeshield.etcd.audit import AuditSummary, audit

    resources = _resources(params["resources"], params["prefix"])
    summary = AuditSummary()
    as_json = params["output"] == "json"
    try:
        with ExitStack() as stack:
            config, chains = _chains(stack, params, resources=resources)
            source = _open_source(stack, params)
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
        hidden = summary.problem_records - len(summary.problems)
        if hidden > 0:
            console.print(f"  ... and {hidden} more; use -o json for every record", highlight=False)


# -- decrypt ----------------------------------------------------------------------------------------------


def _decrypt_selection(ctx: click.Context, params: dict[str, Any]) -> tuple[str | None, list[str]]:
    """(TLS client key, objects) from ``--key``/``--object``, with the transition rules of the module
    docstring. Raises UsageError naming the flag when ``--key`` is ambiguous."""
    from kubeshield.etcd.keys import normalize_prefix

    keys: tuple[str, ...] = params["key"] or ()
    objects = list(params["objects"])
    if not keys or ctx.get_parameter_source("key") is not click.core.ParameterSource.COMMANDLINE:
        return (keys[0] if keys else None), objects
    head = normalize_prefix(params["prefix"]).rstrip("/") + "/"
    selector = bool(objects or params["namespace"] or params["all_keys"])

    def etcd_key(value: str) -> bool:
        return value.startswith(head) and len(value) > len(head)

    if len(keys) == 1 and not etcd_key(keys[0]):
        return keys[0], objects  # --key is the TLS client key, as everywhere
    if len(keys) == 1 and selector and os.path.lexists(keys[0]):
        return keys[0], objects  # a TLS key file that happens to live under the prefix's path
    if selector or not all(etcd_key(k) for k in keys):
        raise click.UsageError(
            "--key is the etcd TLS client key (as in etcdctl) and is given once; choose objects with "
            "--object ETCDKEY (repeatable)"
        )
    files = [k for k in keys if os.path.lexists(k)]
    if files:
        raise click.UsageError(
            f"--key {files[0]!r} is ambiguous: it is a file (a TLS client key?) and an etcd key under "
            f"{head}; choose objects with --object, and give --key only the TLS key"
        )
    warn(
        "--key ETCDKEY is deprecated for choosing objects: use --object ETCDKEY "
        "(--key is now the etcd TLS client key, as in etcdctl)"
    )
    return os.environ.get("KUBESHIELD_KEY") or None, [*objects, *keys]


def _nothing_found(prefix: str, resources: Sequence[str] | None, namespace: str | None) -> str:
    from kubeshield.etcd.walk import walk_targets

    places = []
    selected: Sequence[str | None] = resources or [None]
    for resource in selected:
        for target in walk_targets(prefix, resource):
            if namespace is None:
                places.append(target.key.decode("utf-8", "backslashreplace"))
            elif not target.exact:
                places.append(target.key.decode("utf-8", "backslashreplace") + namespace + "/")
    what = ", ".join(resources) if resources else "objects"
    if what == "secrets":
        what = "Secrets"
    return f"nothing to decrypt: no {what} found under {', '.join(places) or prefix}"


@group.command("decrypt")
@_source_options(snapshot=True, key_option=False)
@option(
    "--encryption-config",
    type=click.Path(dir_okay=False),
    required=True,
    help="EncryptionConfiguration to read with.",
)
@_kms_options
@option("--resources", default="secrets", show_default=True, help=_RESOURCES_HELP)
@option(
    "--object",
    "objects",
    multiple=True,
    metavar="ETCDKEY",
    help="An exact etcd key to decrypt (repeatable; in $KUBESHIELD_OBJECT space-separated).",
)
@option("--namespace", help="Every object of --resources in this namespace.")
@option("--all", "all_keys", is_flag=True, help="Every object of --resources.")
@option("-o", "--output", type=click.Choice(["yaml", "json"]), help="Print the objects on stdout.")
@option(
    "--out-dir",
    type=click.Path(file_okay=False),
    help="Write one file (mode 0600, directories 0700) per object here.",
)
@click.pass_context
def decrypt_cmd(ctx: click.Context, /, **params: Any) -> int:
    """Decrypt stored objects exactly as kube-apiserver would (disaster recovery; works on a snapshot).

    \b
    Examples:
      kubeshield etcd decrypt --snapshot etcd.db --encryption-config enc.yaml --all --out-dir /restore
      kubeshield etcd decrypt --endpoints https://127.0.0.1:2379 --cacert ca.crt --cert client.crt \\
          --key client.key --encryption-config enc.yaml --namespace payments -o yaml
      kubeshield etcd decrypt --snapshot etcd.db --encryption-config enc.yaml \\
          --kms-endpoint kubeshield=unix:///tmp/kms.sock --object /registry/secrets/payments/db -o json
    """
    from kubeshield.etcd.decrypt import decrypt
    from kubeshield.etcd.output import dump_manifest, manifest_path, write_private_file

    tls_key, objects = _decrypt_selection(ctx, params)
    params["key"] = tls_key
    chosen = sum(bool(x) for x in (objects, params["namespace"], params["all_keys"]))
    if chosen != 1:
        hint = ""
        if os.environ.get("KUBESHIELD_ETCD_KEY") and not objects:
            hint = (
                " ($KUBESHIELD_ETCD_KEY no longer selects objects: it is kms serve's etcd TLS key; "
                "use $KUBESHIELD_OBJECT)"
            )
        raise click.UsageError("choose exactly one of --object, --namespace, --all" + hint)
    if bool(params["output"]) == bool(params["out_dir"]):
        raise click.UsageError("choose exactly one of -o yaml|json and --out-dir")
    resources = _resources(params["resources"], params["prefix"])
    if params["namespace"] and resources is None:
        raise click.UsageError("--namespace needs explicit --resources (not 'all')")
    fmt = params["output"] or "yaml"
    out_dir = Path(params["out_dir"]) if params["out_dir"] else None
    ok = failed = 0
    manifests: list[dict[str, Any]] = []
    try:
        with ExitStack() as stack:
            _, chains = _chains(stack, params, resources=resources)
            source = _open_source(stack, params)
            items = decrypt(
                source,
                chains=chains,
                prefix=params["prefix"],
                resources=resources,
                keys=objects,
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
                    write_private_file(path, dump_manifest(item.manifest, fmt="yaml").encode(), root=out_dir)
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
    if ok == 0 and failed == 0:
        click.echo("error: " + _nothing_found(params["prefix"], resources, params["namespace"]), err=True)
    where = f" into {out_dir}" if out_dir is not None else ""
    click.echo(f"decrypted {ok} objects{where}; {failed} failed", err=True)
    return EXIT_FAILURE if failed or ok == 0 else 0


# -- rewrite ----------------------------------------------------------------------------------------------


@group.command("rewrite")
@_source_options(snapshot=False)
@option(
    "--encryption-config", type=click.Path(dir_okay=False), required=True, help="EncryptionConfiguration."
)
@_kms_options
@option(
    "--to",
    "to",
    required=True,
    help="Provider to write with: a KMS name, aesgcm, aescbc, secretbox, identity.",
)
@option("--resources", default="secrets", show_default=True, help=_RESOURCES_HELP)
@option("--dry-run", is_flag=True, help="Only print the plan (the default).")
@option("--yes", is_flag=True, help="Apply the rewrite.")
@option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def rewrite_cmd(**params: Any) -> int:
    """Re-encrypt stored values with one provider (guarded writes, resumable, dry-run by default).

    Refuses to write through a KMS provider on an abstract socket (unix:///@name): Encrypt would hand a
    plaintext DEK seed to whichever local process holds the name.

    \b
    Examples:
      kubeshield etcd rewrite --endpoints https://127.0.0.1:2379 --cacert ca.crt --cert client.crt \\
          --key client.key --encryption-config enc.yaml --to kubeshield          # the plan
      kubeshield etcd rewrite ... --to kubeshield --yes                          # apply it
    """
    from kubeshield.etcd.rewrite import rewrite

    if params["dry_run"] and params["yes"]:
        raise click.UsageError("--dry-run and --yes contradict each other")
    apply = bool(params["yes"])
    resources = _resources(params["resources"], params["prefix"])
    counts: dict[str, int] = {}
    conflicts = 0
    try:
        with ExitStack() as stack:
            _, chains = _chains(stack, params, resources=resources)
            source = _open_source(stack, params, allow_snapshot=False)
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
