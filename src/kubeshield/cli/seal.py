"""``kubeshield seal``: kubeseal-compatible sealing, the sealing keys, unseal and the controller.

Only parsing and rendering live here; the work is in :mod:`kubeshield.seal`. No plaintext value, key
or ciphertext is ever printed to stderr; ``seal unseal`` and ``--recovery-unseal`` print the Secret on
stdout (that is what they are for) and ``seal unseal`` writes an audit record to stderr.

``seal keys list -o json`` schema (stable)::

    {"registry": "<path>", "keys": [{"fingerprint": "SHA256:...", "notBefore": "<RFC3339>",
      "notAfter": "<RFC3339>", "created": "<RFC3339>", "origin": "generated|imported|token",
      "custody": "wrapped|token", "backend": "<name>" | null, "current": bool}]}

``seal unseal -o json``: the Secret as Kubernetes stores it (``data`` in base64).
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from kubeshield.cli._common import CLIError, option, raise_cli_error
from kubeshield.cli._kubeconfig import kubeconfig_namespace
from kubeshield.config import Settings, load_config
from kubeshield.errors import KubeshieldError
from kubeshield.seal import migrate
from kubeshield.seal.certs import pem_of, sealing_key_from_pem
from kubeshield.seal.errors import SealError
from kubeshield.seal.keyset import KeySet, MemoryDecrypter, SealingKey
from kubeshield.seal.objects import (
    InputSecret,
    dump_objects,
    load_documents,
    parse_sealed_secret,
    parse_secret,
)
from kubeshield.seal.scope import Scope
from kubeshield.seal.sealing import merge_into, seal_raw, seal_secret
from kubeshield.seal.setup import open_registry
from kubeshield.seal.unsealing import unseal

__all__ = ["group"]

F = TypeVar("F", bound=Callable[..., Any])

_PATH = click.Path(dir_okay=False, path_type=Path)
_READABLE = click.Path(dir_okay=False, exists=True, path_type=Path)
_MAX_FETCH = 1 << 20


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except KubeshieldError as exc:
        raise_cli_error(exc)


def _rfc3339(value: datetime | float) -> str:
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, tz=UTC)
    return value.isoformat(timespec="seconds").replace("+00:00", "Z")


def _settings(config_file: Path | None) -> Settings:
    if config_file is None:
        raise click.UsageError("give --config FILE (the seal: and keys: sections of kubeshield.yaml)")
    return load_config(config_file)


def _read_input(path: Path | None) -> tuple[bytes, str]:
    if path is None or str(path) == "-":
        return sys.stdin.buffer.read(), "stdin"
    try:
        return path.read_bytes(), str(path)
    except OSError as exc:
        raise CLIError(f"{path}: cannot read: {exc.strerror}") from None


def _fetch(url: str, *, data: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), response.read(_MAX_FETCH)
    except urllib.error.HTTPError as exc:
        return int(exc.code), b""
    except (urllib.error.URLError, OSError) as exc:
        raise CLIError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


def _cert_pem(cert: str | None, config_file: Path | None, controller_url: str | None) -> tuple[bytes, str]:
    """The PEM certificate to seal with: --cert FILE|URL, the registry of --config, or the controller."""
    if cert:
        if cert.startswith(("http://", "https://")):
            status, body = _fetch(cert)
            if status != 200:
                raise CLIError(f"cannot fetch {cert!r}: HTTP {status}")
            return body, cert
        path = Path(cert.removeprefix("file://"))
        try:
            return path.read_bytes(), str(path)
        except OSError as exc:
            raise CLIError(f"--cert {path}: cannot read: {exc.strerror}") from None
    if config_file is not None:
        with open_registry(_settings(config_file), private=False) as opened:
            records = opened.registry.load()
        if not records:
            raise CLIError("the sealing-key registry holds no key")
        return pem_of(records[-1].certificate), "the registry's newest key"
    if controller_url:
        url = controller_url.rstrip("/") + "/v1/cert.pem"
        status, body = _fetch(url)
        if status != 200:
            raise CLIError(f"cannot fetch the controller's certificate: HTTP {status}")
        return body, url
    raise click.UsageError("give --cert FILE|URL, --config FILE or --controller-url URL")


def _load_cert(cert: str | None, config_file: Path | None, controller_url: str | None) -> Any:
    pem, where = _cert_pem(cert, config_file, controller_url)
    return sealing_key_from_pem(pem, where=where)


def _output(objs: list[dict[str, Any]], fmt: str, out: Path | None) -> None:
    text = dump_objects(objs, fmt=fmt)
    if out is None or str(out) == "-":
        click.echo(text, nl=False)
        return
    try:
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        raise CLIError(f"{out}: cannot write: {exc.strerror}") from None


def _format(fmt: str | None, out: Path | None) -> str:
    if fmt:
        return fmt
    if out is not None and out.suffix in (".yaml", ".yml"):
        return "yaml"
    return "json"


def _recovery_keys(files: tuple[str, ...], identity_files: tuple[Path, ...]) -> KeySet:
    from kubeshield.keys import backup as backups
    from kubeshield.seal.certs import make_certificate

    identities = [line for f in identity_files for line in backups.read_identities(f)]
    keys: list[SealingKey] = []
    for entry in files:
        for name in [n for n in entry.split(",") if n]:
            path = Path(name)
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise CLIError(f"--recovery-private-key {path}: cannot read: {exc.strerror}") from None
            if data.startswith(b"age-encryption.org/v1\n"):
                if not identities:
                    raise CLIError(f"{path}: an age-encrypted backup; give --identity-file")
                data = migrate.decrypt_age(data, identities=identities)
            for material in migrate.read_key_material(data, source=str(path)):
                cert = (
                    material.certificates[0]
                    if material.certificates
                    else make_certificate(material.private_key, valid_for=_TEN_YEARS)
                )
                keys.append(SealingKey(certificate=cert, decrypter=MemoryDecrypter(material.private_key)))
    if not keys:
        raise CLIError("--recovery-private-key: no private key given")
    return KeySet(keys)


_TEN_YEARS = timedelta(days=3650)


@click.group(name="seal", invoke_without_command=True)
@option(
    "-f", "--secret-file", "secret_file", type=_PATH, help="Input (Secret or SealedSecret); default stdin."
)
@option("-w", "--sealed-secret-file", "out_file", type=_PATH, help="Write the result here instead of stdout.")
@option("-o", "--format", "fmt", type=click.Choice(["json", "yaml"]), help="Output format (default json).")
@option("--cert", help="PEM certificate to seal with: a file or an http(s) URL (offline sealing).")
@option("--config", "config_file", type=_PATH, help="kubeshield.yaml: seal with its registry's newest key.")
@option(
    "--controller-url",
    help="The kubeshield (or sealed-secrets) controller's HTTP API, e.g. http://HOST:8080.",
)
@option("--scope", type=click.Choice(["strict", "namespace-wide", "cluster-wide"]), help="Sealing scope.")
@option("--raw", is_flag=True, help="Seal one value (stdin or --from-file) and print bare base64.")
@option("--name", help="Secret name (--raw with the strict scope; overrides the input's name).")
@option(
    "--namespace",
    help="Secret namespace; default: the Secret's own, else the kubeconfig context's, else 'default'.",
)
@option("--from-file", "from_file", help="--raw: read the value from [KEY=]FILE.")
@option(
    "--merge-into",
    "merge_file",
    type=_READABLE,
    help="Seal the input and merge it into this SealedSecret file in place.",
)
@option(
    "--re-encrypt",
    is_flag=True,
    help="Re-seal SealedSecrets with the newest key (--config or --controller-url).",
)
@option("--validate", is_flag=True, help="Check that SealedSecrets unseal (--config or --controller-url).")
@option(
    "--recovery-unseal", is_flag=True, help="Unseal offline with --recovery-private-key (prints Secrets)."
)
@option(
    "--recovery-private-key",
    multiple=True,
    help="PEM key, key Secret, List or age backup (repeat or comma-separate).",
)
@option(
    "--identity-file", type=_READABLE, multiple=True, help="age identity to open an age-encrypted key backup."
)
@option("--allow-empty-data", is_flag=True, help="Allow sealing a Secret with no data.")
@option("--fetch-cert", is_flag=True, help="Print the certificate that would be used, and exit.")
@option("--no-key-hint", is_flag=True, help="Do not write the kubeshield.io/sealing-key hint annotation.")
@click.pass_context
def group(ctx: click.Context, /, **kw: Any) -> None:
    """Seal Kubernetes Secrets for Git, kubeseal-compatible; manage sealing keys; run the controller.

    Without a subcommand it reads Secret(s) (YAML or JSON, several documents) from stdin or -f and prints
    SealedSecret(s) that bitnami's controller and kubeshield's both unseal.

    \b
    Examples:
      kubeshield seal --cert cert.pem -f secret.yaml -w sealed.yaml
      kubeshield seal --config /etc/kubeshield/kubeshield.yaml --scope namespace-wide < secret.json
      printf 'hunter2' | kubeshield seal --raw --cert cert.pem --namespace prod --name db
      kubeshield seal --cert cert.pem --merge-into sealed.yaml -f more.yaml
      kubeshield seal --re-encrypt --config kubeshield.yaml -f sealed.yaml -w sealed.yaml
      kubeshield seal --validate --controller-url http://127.0.0.1:8080 -f sealed.yaml
      kubeshield seal --recovery-unseal --recovery-private-key backup-keys.yaml -f sealed.yaml
      kubeshield seal keys init --config kubeshield.yaml
      kubeshield seal unseal --config kubeshield.yaml -f sealed.yaml -o yaml
    """
    if ctx.invoked_subcommand is not None:
        from click.core import ParameterSource

        given = [k for k in kw if ctx.get_parameter_source(k) is ParameterSource.COMMANDLINE]
        if given:  # values from KUBESHIELD_* variables are for sealing only and are ignored here
            raise click.UsageError(
                f"seal options ({', '.join(given)}) go after the subcommand, or without one to seal"
            )
        return
    with _errors():
        _seal_main(**kw)


def _default_namespace() -> str:
    """kubeseal's default: the kubeconfig context's namespace, else ``default``; said on stderr."""
    found = kubeconfig_namespace()
    chosen = found or "default"
    origin = (
        "the kubeconfig's current context" if found else "no namespace in a kubeconfig: kubeseal's default"
    )
    click.echo(f"sealing for namespace {chosen!r} ({origin}); set --namespace to choose", err=True)
    return chosen


def _seal_main(
    *,
    secret_file: Path | None,
    out_file: Path | None,
    fmt: str | None,
    cert: str | None,
    config_file: Path | None,
    controller_url: str | None,
    scope: str | None,
    raw: bool,
    name: str | None,
    namespace: str | None,
    from_file: str | None,
    merge_file: Path | None,
    re_encrypt: bool,
    validate: bool,
    recovery_unseal: bool,
    recovery_private_key: tuple[str, ...],
    identity_file: tuple[Path, ...],
    allow_empty_data: bool,
    fetch_cert: bool,
    no_key_hint: bool,
) -> None:
    modes = [
        m
        for m, on in (
            ("--raw", raw),
            ("--merge-into", merge_file),
            ("--re-encrypt", re_encrypt),
            ("--validate", validate),
            ("--recovery-unseal", recovery_unseal),
            ("--fetch-cert", fetch_cert),
        )
        if on
    ]
    if len(modes) > 1:
        raise click.UsageError(f"{' and '.join(modes)} cannot be combined")
    output_format = _format(fmt, out_file)
    if fetch_cert:
        pem, where = _cert_pem(cert, config_file, controller_url)
        sealing_key_from_pem(pem, where=where)  # the same checks as sealing
        click.echo(pem.decode("ascii", "replace"), nl=False)
        return
    if recovery_unseal:
        if not recovery_private_key:
            raise click.UsageError("--recovery-unseal needs --recovery-private-key")
        keys = _recovery_keys(recovery_private_key, identity_file)
        data, source = _read_input(secret_file)
        unsealed = [unseal(parse_sealed_secret(d), keys).secret for d in load_documents(data, source=source)]
        _output(unsealed, output_format, out_file)
        return
    if validate or re_encrypt:
        _validate_or_reencrypt(
            validate=validate,
            secret_file=secret_file,
            out_file=out_file,
            output_format=_format(fmt, out_file or secret_file),
            config_file=config_file,
            controller_url=controller_url,
        )
        return
    public_key = _load_cert(cert, config_file, controller_url)
    chosen = Scope.parse(scope) if scope else None
    if raw:
        value = _raw_value(from_file)
        raw_scope = chosen or Scope.STRICT
        if not namespace and raw_scope is not Scope.CLUSTER_WIDE:
            namespace = _default_namespace()
        text = seal_raw(public_key, value, namespace=namespace, name=name, scope=raw_scope)
        click.echo(text, nl=False)
        return
    data, source = _read_input(secret_file)
    docs = load_documents(data, source=source)
    if not docs:
        raise CLIError(f"{source}: no Secret found in the input")
    secrets = [parse_secret(d, allow_empty=allow_empty_data) for d in docs]
    if merge_file is not None:
        _merge(public_key, secrets, merge_file, chosen, fmt, hint=not no_key_hint)
        return
    default_ns = None if namespace or all(s.namespace for s in secrets) else _default_namespace()
    out = [
        seal_secret(
            public_key,
            s,
            scope=chosen,
            name=name,
            namespace=namespace,
            default_namespace=default_ns,
            hint=not no_key_hint,
        )
        for s in secrets
    ]
    _output(out, output_format, out_file)


def _raw_value(from_file: str | None) -> bytes:
    if from_file is None:
        return sys.stdin.buffer.read()
    # kubectl's --from-file=[key=]path: the key ends at the first "="
    path = from_file.partition("=")[2] if "=" in from_file else from_file
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CLIError(f"--from-file {path}: cannot read: {exc.strerror}") from None


def _merge(
    public_key: Any,
    secrets: list[InputSecret],
    merge_file: Path,
    scope: Scope | None,
    fmt: str | None,
    *,
    hint: bool,
) -> None:
    if len(secrets) != 1:
        raise CLIError("--merge-into takes exactly one input Secret")
    original_text = merge_file.read_bytes()
    docs = load_documents(original_text, source=str(merge_file))
    if len(docs) != 1:
        raise CLIError(f"{merge_file}: --merge-into needs a file holding exactly one SealedSecret")
    original = parse_sealed_secret(docs[0])
    secret = secrets[0]
    meta = {**secret.metadata, "name": original.name, "namespace": original.namespace}
    secret = dataclasses.replace(secret, metadata=meta)
    if scope is None:
        from kubeshield.seal.scope import scope_of

        scope = scope_of(original.annotations)
    update = seal_secret(public_key, secret, scope=scope, hint=hint)
    merged = merge_into(original.raw, update)
    out_fmt = fmt or ("json" if original_text.lstrip().startswith(b"{") else "yaml")
    # rendered fully before the file is touched, then replaced atomically: a failure leaves it as it was
    _output([merged], out_fmt, merge_file)


def _validate_or_reencrypt(
    *,
    validate: bool,
    secret_file: Path | None,
    out_file: Path | None,
    output_format: str,
    config_file: Path | None,
    controller_url: str | None,
) -> None:
    data, source = _read_input(secret_file)
    docs = load_documents(data, source=source)
    if not docs:
        raise CLIError(f"{source}: no SealedSecret found in the input")
    sealed = [parse_sealed_secret(d) for d in docs]
    if controller_url and config_file is None:
        base = controller_url.rstrip("/")
        results = []
        for ss in sealed:
            body = json.dumps(ss.raw).encode()
            status, reply = _fetch(base + ("/v1/verify" if validate else "/v1/rotate"), data=body)
            if validate:
                if status == 409:
                    raise CLIError(f"unable to decrypt sealed secret: {ss.name}")
                if status != 200:
                    raise CLIError(f"cannot validate sealed secret {ss.name}: HTTP {status}")
                continue
            if status != 200:
                raise CLIError(f"cannot re-encrypt sealed secret {ss.name}: HTTP {status}")
            results.append(json.loads(reply))
        if not validate:
            _output(results, output_format, out_file if out_file else secret_file)
        return
    if config_file is None:
        raise click.UsageError(
            f"{'--validate' if validate else '--re-encrypt'} needs --config FILE or --controller-url URL"
        )
    from kubeshield.seal.rotate import reencrypt

    with open_registry(_settings(config_file)) as opened:
        keys = opened.registry.keyset()
        if validate:
            for ss in sealed:
                try:
                    unseal(ss, keys)
                except SealError:
                    raise CLIError(f"unable to decrypt sealed secret: {ss.name}") from None
            return
        results = [reencrypt(ss, keys) for ss in sealed]
    _output(results, output_format, out_file if out_file else secret_file)


# --- keys --------------------------------------------------------------------------------------------


def _config_option(func: F) -> F:
    return option(
        "--config", "config_file", type=_PATH, required=True, help="kubeshield.yaml (seal: and keys:)."
    )(func)


@group.group("keys")
def keys_group() -> None:
    """Create, rotate, list, print, back up and import sealing keys.

    The registry (seal.registry) holds certificates and private keys that exist only wrapped by the
    keys: backend (or, with seal.privateKeys: token, only on the PKCS#11 token).

    \b
    Examples:
      kubeshield seal keys init --config kubeshield.yaml
      kubeshield seal keys rotate --config kubeshield.yaml
      kubeshield seal keys list --config kubeshield.yaml -o json
      kubeshield seal keys cert --config kubeshield.yaml > cert.pem
      kubeshield seal keys backup --config kubeshield.yaml --out keys.age --recipient age1...
      kubeshield seal keys import --config kubeshield.yaml -f sealed-secrets-keys.yaml
    """


@keys_group.command("init")
@_config_option
@option("--force", is_flag=True, help="Replace an existing registry (everything sealed for it is lost).")
def keys_init(config_file: Path, force: bool) -> None:
    """Create the registry with a first RSA key and its self-signed certificate."""
    with _errors(), open_registry(_settings(config_file)) as opened:
        record = opened.registry.init(force=force)
    click.echo(f"Created sealing-key registry {opened.registry.path}")
    click.echo(f"  key:       {record.fingerprint}")
    click.echo(
        f"  custody:   {record.custody_type} ({record.custody.get('backend') or record.custody.get('token')})"
    )
    click.echo(f"  notAfter:  {_rfc3339(record.not_after)}")


@keys_group.command("rotate")
@_config_option
def keys_rotate(config_file: Path) -> None:
    """Add a new key; it seals from now on. Older keys stay for unsealing (nothing needs re-sealing)."""
    with _errors(), open_registry(_settings(config_file)) as opened:
        record = opened.registry.rotate()
    click.echo(f"Added sealing key {record.fingerprint} (now the current key)")


@keys_group.command("list")
@_config_option
@option("-o", "--output", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def keys_list(config_file: Path, fmt: str) -> None:
    """List the keys, oldest first; the last one seals."""
    settings = _settings(config_file)
    with _errors(), open_registry(settings, private=False) as opened:
        records = opened.registry.load()
    rows = [
        {
            "fingerprint": r.fingerprint,
            "notBefore": _rfc3339(r.not_before),
            "notAfter": _rfc3339(r.not_after),
            "created": r.created,
            "origin": r.origin,
            "custody": r.custody_type,
            "backend": r.custody.get("backend"),
            "current": i == len(records) - 1,
        }
        for i, r in enumerate(records)
    ]
    if fmt == "json":
        click.echo(json.dumps({"registry": str(settings.seal.registry), "keys": rows}, indent=2))
        return
    for row in rows:
        mark = "*" if row["current"] else " "
        span = f"{row['notBefore']} .. {row['notAfter']}"
        click.echo(f"{mark} {row['fingerprint']}  {span}  {row['origin']:9} {row['custody']}")


@keys_group.command("cert")
@_config_option
@option("--all", "all_keys", is_flag=True, help="Print every key's certificate, oldest first.")
def keys_cert(config_file: Path, all_keys: bool) -> None:
    """Print the current sealing certificate (PEM), for `kubeseal --cert` or `kubeshield seal --cert`."""
    with _errors(), open_registry(_settings(config_file), private=False) as opened:
        records = opened.registry.load()
    if not records:
        raise CLIError("the registry holds no key")
    for record in records if all_keys else records[-1:]:
        click.echo(pem_of(record.certificate).decode("ascii"), nl=False)


@keys_group.command("backup")
@_config_option
@option("--out", "out", type=_PATH, required=True, help="Where to write the age-encrypted backup (0600).")
@option("--recipient", "recipients", multiple=True, help="age X25519 recipient (age1...). Repeatable.")
@option("--recipients-file", type=_READABLE, help="File of age recipients, one per line.")
@option("--backup-passphrase-file", type=_READABLE, help="Encrypt to the passphrase in this file instead.")
@option(
    "--namespace", default="kube-system", show_default=True, help="metadata.namespace of the key Secrets."
)
@option("--force", is_flag=True, help="Replace an existing backup file.")
def keys_backup(
    config_file: Path,
    out: Path,
    recipients: tuple[str, ...],
    recipients_file: Path | None,
    backup_passphrase_file: Path | None,
    namespace: str,
    force: bool,
) -> None:
    """Write every wrapped key, age-encrypted, as a List of sealed-secrets key Secrets.

    Once decrypted (`age -d`), the file is what bitnami's controller keeps in its namespace: it restores
    with `kubeshield seal keys import`, `kubectl apply` or `kubeseal --recovery-private-key`. Keys held by
    a PKCS#11 token cannot leave it and are not in the backup (use the token vendor's backup).
    """
    from kubeshield.keys import backup as backups
    from kubeshield.keys.passphrase import read_passphrase

    with _errors(), open_registry(_settings(config_file)) as opened:
        to = list(recipients) + (backups.read_recipients(recipients_file) if recipients_file else [])
        secret = (
            read_passphrase(passphrase_file=backup_passphrase_file, environ={})
            if backup_passphrase_file
            else None
        )
        if bool(to) == (secret is not None):
            raise click.UsageError(
                "give --recipient/--recipients-file or --backup-passphrase-file (exactly one kind)"
            )
        records = opened.registry.load()
        pairs = [
            (opened.registry.private_key(r), r.certificate) for r in records if r.custody_type == "wrapped"
        ]
        skipped = len(records) - len(pairs)
        if not pairs:
            raise CLIError("no exportable key: every key is held by a PKCS#11 token")
        payload = migrate.backup_payload(pairs, namespace=namespace)
        backups.write_backup(
            out, backups.encrypt_backup(payload, recipients=to, passphrase=secret), force=force
        )
    click.echo(f"Wrote {len(pairs)} sealing key(s) to {out} (age-encrypted)")
    if skipped:
        click.echo(
            f"NOTE: {skipped} token-held key(s) are not in the backup; they never leave the token", err=True
        )


@keys_group.command("import")
@_config_option
@option(
    "-f",
    "--file",
    "key_file",
    type=_READABLE,
    required=True,
    help="Key Secret, List, PEM key, or age backup.",
)
@option(
    "--identity-file", type=_READABLE, multiple=True, help="age identity, when the file is age-encrypted."
)
@option("--backup-passphrase-file", type=_READABLE, help="Passphrase, when the file is age-encrypted to one.")
@option("--include-compromised", is_flag=True, help="Also import keys labelled other than active.")
def keys_import(
    config_file: Path,
    key_file: Path,
    identity_file: tuple[Path, ...],
    backup_passphrase_file: Path | None,
    include_compromised: bool,
) -> None:
    """Import sealed-secrets controller keys, so everything sealed for them unseals here.

    \b
    Get them from the bitnami controller's namespace:
      kubectl -n kube-system get secret -l sealedsecrets.bitnami.com/sealed-secrets-key -o yaml > keys.yaml
      kubeshield seal keys import --config kubeshield.yaml -f keys.yaml && shred -u keys.yaml
    Each private key is wrapped by the keys: backend before it is written; the file given is not kept.
    """
    from kubeshield.keys import backup as backups
    from kubeshield.keys.passphrase import read_passphrase

    with _errors():
        data = key_file.read_bytes()
        if data.startswith(b"age-encryption.org/v1\n"):
            identities = [line for f in identity_file for line in backups.read_identities(f)]
            secret = (
                read_passphrase(passphrase_file=backup_passphrase_file, environ={})
                if backup_passphrase_file
                else None
            )
            data = migrate.decrypt_age(data, identities=identities, passphrase=secret)
        materials = migrate.read_key_material(data, source=str(key_file))
        with open_registry(_settings(config_file)) as opened:
            if opened.registry.private_keys == "token":
                raise CLIError(
                    "seal.privateKeys is token: imported keys would have to leave the token's rules; "
                    "use a wrapped registry for imported keys"
                )
            added = skipped = 0
            for material in materials:
                if material.state != "active" and not include_compromised:
                    click.echo(f"skipped {material.where}: labelled {material.state!r}", err=True)
                    skipped += 1
                    continue
                if not material.certificates:
                    raise CLIError(f"{material.where}: no certificate (tls.crt) to import with the key")
                record = opened.registry.add_private_key(material.private_key, material.certificates[0])
                if record is None:
                    click.echo(f"already present: {material.fingerprint}")
                else:
                    added += 1
                    click.echo(f"imported {record.fingerprint} (notBefore {_rfc3339(record.not_before)})")
    click.echo(f"Imported {added} key(s); {skipped} skipped")


# --- unseal ----------------------------------------------------------------------------------------------


@group.command("unseal")
@option("-f", "--file", "in_file", type=_PATH, help="SealedSecret(s), YAML or JSON; default stdin.")
@_config_option
@option("-o", "--output", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
@option("--audit-log", type=_PATH, help="Also append the audit record (JSON line) to this file.")
def unseal_command(in_file: Path | None, config_file: Path, fmt: str, audit_log: Path | None) -> None:
    """Unseal with the kubeshield-held keys and print the Secret as Kubernetes stores it (for operators).

    Every run writes an audit record (who, when, which objects, which keys; never a value) to stderr and,
    with --audit-log, appends it to that file. Exit 1 if any value does not unseal.
    """
    with _errors():
        data, source = _read_input(in_file)
        docs = load_documents(data, source=source)
        sealed = [parse_sealed_secret(d) for d in docs]
        results = []
        outcome = "ok"
        try:
            with open_registry(_settings(config_file)) as opened:
                keys = opened.registry.keyset()
                for ss in sealed:
                    results.append(unseal(ss, keys))
        except BaseException:
            outcome = "failed"
            raise
        finally:
            record = {
                "audit": "kubeshield.seal.unseal",
                "time": _rfc3339(time.time()),
                "uid": os.getuid(),
                "user": getpass.getuser(),
                "source": source,
                "objects": [f"{ss.namespace}/{ss.name}" for ss in sealed],
                "keys": sorted({fp for r in results for fp in r.fingerprints}),
                "outcome": outcome,
            }
            line = json.dumps(record, sort_keys=True)
            click.echo(line, err=True)
            if audit_log is not None:
                fd = os.open(audit_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                with os.fdopen(fd, "a", encoding="utf-8") as fh:
                    fh.write(line + "\n")
    _output([r.secret for r in results], fmt, None)


@group.command("controller")
@_config_option
@option("--kubeconfig", type=_READABLE, help="kubeconfig (default: in-cluster, then $KUBECONFIG).")
@option(
    "--listen",
    default="0.0.0.0:8080",
    show_default=True,
    help="HTTP API: /healthz, /v1/cert.pem, /v1/verify, /v1/rotate.",
)
@option("--metrics-listen", default="0.0.0.0:8081", show_default=True, help="Prometheus /metrics.")
@option("--namespaces", help="Comma-separated namespaces to watch (default: all).")
@option(
    "--rate-limit",
    type=float,
    default=2.0,
    show_default=True,
    help="/v1/verify and /v1/rotate requests per second.",
)
@option("--rate-limit-burst", type=int, default=2, show_default=True, help="Burst for the rate limit.")
def controller_command(**kw: Any) -> None:
    """Run the controller: watch SealedSecrets and keep their Secrets, and serve the HTTP API."""
    import importlib

    try:
        _controller = importlib.import_module("kubeshield.seal.controller")
    except ModuleNotFoundError as exc:
        raise CLIError(f"the controller needs the Kubernetes client: {exc.name} is missing") from None
    with _errors():
        _controller.run_from_cli(settings=_settings(kw.pop("config_file")), **kw)
