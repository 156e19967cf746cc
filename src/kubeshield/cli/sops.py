"""``kubeshield sops``: SOPS-compatible encrypted files (the real ``sops`` binary reads what this writes).

Only flags and output live here; the work is in :mod:`kubeshield.sops`. Exit codes are sops' own
(MAC mismatch 51, no key 128, already encrypted 203, file not modified 200, ...). Secret values are
never taken from flag values: ``set`` reads them from ``--value-file`` or ``--value-stdin``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from kubeshield.cli._common import option
from kubeshield.sops import edit as editing
from kubeshield.sops import gitops, ops
from kubeshield.sops.errors import ExitCode, SopsError
from kubeshield.sops.masterkeys import kubeshield as ks
from kubeshield.sops.masterkeys.awskms import parse_encryption_context
from kubeshield.sops.masterkeys.base import KeyEnv, MasterKey
from kubeshield.sops.selection import RULE_NAMES
from kubeshield.sops.stores import FORMATS, format_for_path

__all__ = ["group", "run_age_plugin"]

F = TypeVar("F", bound=Callable[..., Any])
_FORMAT = click.Choice(FORMATS)


class SopsExit(click.ClickException):
    """A failure reported with sops' exit code (one subclass per code: click reads ``exit_code``)."""

    @classmethod
    def with_code(cls, message: str, code: int) -> SopsExit:
        sub = type(f"SopsExit{code}", (cls,), {"exit_code": code})
        error: SopsExit = sub(message)
        return error


@contextmanager
def _errors(env: KeyEnv | None = None) -> Iterator[None]:
    try:
        yield
    except SopsError as exc:
        raise SopsExit.with_code(str(exc), int(exc.code)) from exc
    finally:
        if env is not None:
            env.close()


def _key_flags(func: F) -> F:
    for flag, name, text in reversed(
        [
            ("--age", "age", "age recipients (age1..., ssh-ed25519 ...), comma-separated"),
            ("--pgp", "pgp", "PGP fingerprints, comma-separated (uses gpg)"),
            ("--kms", "kms", "AWS KMS key ARNs (ARN[+ROLE_ARN]), comma-separated"),
            (
                "--hc-vault-transit",
                "hc_vault",
                "Vault/OpenBao Transit key URIs (https://host:8200/v1/transit/keys/NAME)",
            ),
            (
                "--kubeshield",
                "kubeshield",
                "kubeshield.yaml files whose key backend wraps the data key (age plugin recipient)",
            ),
        ]
    ):
        func = option(flag, name, multiple=True, help=text)(func)
    func = option("--encryption-context", default="", help="AWS KMS encryption context, key:value,key:value")(
        func
    )
    func = option("--aws-profile", default="", help="AWS profile for the --kms keys")(func)
    return func


def _selection_flags(func: F) -> F:
    for name in reversed(RULE_NAMES):
        func = option(
            f"--{name.replace('_', '-')}", name, default="", help=f"set {name} (only one rule per file)"
        )(func)
    func = option("--mac-only-encrypted", is_flag=True, help="compute the MAC over encrypted values only")(
        func
    )
    func = option(
        "--shamir-secret-sharing-threshold",
        "threshold",
        type=int,
        default=0,
        help="key groups needed to decrypt",
    )(func)
    return func


def _io_flags(func: F) -> F:
    func = option(
        "--input-type", type=_FORMAT, default=None, help="file format (default: from the extension)"
    )(func)
    func = option(
        "--output-type", type=_FORMAT, default=None, help="output format (default: the input format)"
    )(func)
    func = option("-i", "--in-place", is_flag=True, help="write the result back to FILE (atomically)")(func)
    func = option(
        "--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="write to this file"
    )(func)
    func = option(
        "--filename-override", default=None, help="use this name to pick the format and .sops.yaml rule"
    )(func)
    return func


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SopsError(f"{path}: file not found", code=ExitCode.COULD_NOT_READ_INPUT_FILE) from None
    except OSError as exc:
        raise SopsError(
            f"{path}: cannot read: {exc.strerror}", code=ExitCode.COULD_NOT_READ_INPUT_FILE
        ) from None


def _formats(
    path: Path, input_type: str | None, output_type: str | None, override: str | None
) -> tuple[str, str]:
    fmt_in = input_type or format_for_path(override or str(path))
    return fmt_in, output_type or fmt_in


def _write(result: bytes, *, path: Path, in_place: bool, output: Path | None) -> None:
    if in_place and output is not None:
        raise SopsError("cannot use both --output and --in-place", code=ExitCode.ERROR_CONFLICTING_PARAMETERS)
    target = path if in_place else output
    if target is None:
        sys.stdout.buffer.write(result)
        sys.stdout.buffer.flush()
        return
    try:
        ops.write_atomic(target, result)
    except OSError as exc:
        raise SopsError(
            f"{target}: cannot write: {exc.strerror}", code=ExitCode.COULD_NOT_WRITE_OUTPUT_FILE
        ) from None


def _flags(kw: dict[str, Any]) -> ops.KeyFlags:
    return ops.KeyFlags(
        age=list(kw["age"]),
        pgp=list(kw["pgp"]),
        kms=list(kw["kms"]),
        hc_vault=list(kw["hc_vault"]),
        kubeshield=list(kw["kubeshield"]),
        encryption_context=parse_encryption_context(kw["encryption_context"]),
        aws_profile=kw["aws_profile"],
    )


@click.group("sops")
def group() -> None:
    """SOPS-compatible encrypted files: what kubeshield writes, the sops binary reads, and back.

    \b
    encrypt     encrypt a YAML/JSON/dotenv/INI/binary file (keys from flags or .sops.yaml)
    decrypt     print the plaintext (exactly what sops prints); --extract one value
    edit        decrypt into a private temp file, run $EDITOR, re-encrypt what changed
    rotate      new data key for the file (-r); --add-*/--rm-* change master keys
    updatekeys  re-wrap the data key for the keys .sops.yaml lists now
    set/unset   change or remove one value (value from --value-file or --value-stdin)
    exec-env    run a command with the file's values as environment variables
    exec-file   run a command with the decrypted file at {}
    kustomize   kustomize exec KRM function decrypting SOPS Secret manifests (like KSOPS)
    diff-helper git textconv: show decrypted diffs
    check       pre-commit check: refuse Secret manifests with plaintext values
    recipient   print the age recipient/identity of a kubeshield key backend

    \b
    Examples:
      kubeshield sops encrypt --age age1... -i secret.yaml
      kubeshield sops encrypt --kubeshield /etc/kubeshield/kubeshield.yaml secret.yaml > secret.enc.yaml
      kubeshield sops decrypt secret.enc.yaml
    """


@group.command("encrypt")
@_key_flags
@_selection_flags
@_io_flags
@option(
    "--config", type=click.Path(dir_okay=False, path_type=Path), default=None, help="the .sops.yaml to use"
)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def encrypt_cmd(file: Path, **kw: Any) -> None:
    """Encrypt FILE. A Kubernetes Secret gets encrypted_regex ^(data|stringData)$ unless you choose a rule.

    \b
    Examples:
      kubeshield sops encrypt --age age1qz... secret.yaml > secret.enc.yaml
      kubeshield sops encrypt -i --hc-vault-transit https://bao:8200/v1/transit/keys/team app.env
    """
    env = KeyEnv.from_os()
    with _errors(env):
        fmt_in, fmt_out = _formats(file, kw["input_type"], kw["output_type"], kw["filename_override"])
        creation = ops.resolve_creation(
            file_path=kw["filename_override"] or str(file),
            flags=_flags(kw),
            selection_flags={name: kw[name] for name in RULE_NAMES},
            mac_only_encrypted=kw["mac_only_encrypted"],
            shamir_threshold=kw["threshold"],
            config=kw["config"],
            cwd=Path.cwd(),
        )
        result, warnings = ops.encrypt_bytes(
            _read(file), where=str(file), in_format=fmt_in, out_format=fmt_out, creation=creation, env=env
        )
        for warning in warnings:
            click.echo(f"warning: {warning}", err=True)
        _write(result, path=file, in_place=kw["in_place"], output=kw["output"])


@group.command("decrypt")
@_io_flags
@option("--extract", default=None, help='print only this value, e.g. \'["data"]["password"]\'')
@option("--ignore-mac", is_flag=True, help="do not check the MAC (a tampered file will decrypt)")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def decrypt_cmd(file: Path, **kw: Any) -> None:
    """Decrypt FILE and print what sops prints (exit 51 if the MAC does not match).

    \b
    Examples:
      kubeshield sops decrypt secret.enc.yaml
      kubeshield sops decrypt --extract '["stringData"]["password"]' secret.enc.yaml
    """
    env = KeyEnv.from_os()
    with _errors(env):
        fmt_in, fmt_out = _formats(file, kw["input_type"], kw["output_type"], kw["filename_override"])
        result = ops.decrypt_bytes(
            _read(file),
            where=str(file),
            in_format=fmt_in,
            out_format=fmt_out,
            env=env,
            ignore_mac=kw["ignore_mac"],
            extract=kw["extract"],
        )
        _write(result, path=file, in_place=kw["in_place"], output=kw["output"])


@group.command("edit")
@option("--input-type", type=_FORMAT, default=None, help="file format (default: from the extension)")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
def edit_cmd(file: Path, input_type: str | None) -> None:
    """Edit FILE in $SOPS_EDITOR/$EDITOR; the plaintext lives in a 0600 file on /dev/shm, removed after.

    Exit 200 when nothing changed. Unchanged values keep their ciphertext.
    """
    env = KeyEnv.from_os()
    with _errors(env):
        fmt = input_type or format_for_path(str(file))
        command = editing.editor_command(dict(os.environ))
        result = editing.edit_bytes(
            _read(file),
            where=str(file),
            in_format=fmt,
            env=env,
            run_editor=editing.run_editor_process(command),
        )
        _write(result, path=file, in_place=True, output=None)


def _rotate_keys(values: tuple[str, ...], make: Callable[[str], MasterKey]) -> list[MasterKey]:
    return [make(v.strip()) for value in values for v in value.split(",") if v.strip()]


@group.command("rotate")
@_io_flags
@option("--add-age", multiple=True, help="add age recipients")
@option("--rm-age", multiple=True, help="remove age recipients")
@option("--add-pgp", multiple=True, help="add PGP fingerprints")
@option("--rm-pgp", multiple=True, help="remove PGP fingerprints")
@option("--add-kms", multiple=True, help="add AWS KMS ARNs")
@option("--rm-kms", multiple=True, help="remove AWS KMS ARNs")
@option("--add-hc-vault-transit", multiple=True, help="add Transit key URIs")
@option("--rm-hc-vault-transit", multiple=True, help="remove Transit key URIs")
@option("--add-kubeshield", multiple=True, help="add kubeshield.yaml backends")
@option("--rm-kubeshield", multiple=True, help="remove kubeshield.yaml backends")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def rotate_cmd(file: Path, **kw: Any) -> None:
    """Generate a new data key for FILE and re-encrypt it (sops -r); --add-*/--rm-* change the keys."""
    from kubeshield.sops.masterkeys.age import AgeKey
    from kubeshield.sops.masterkeys.awskms import KmsKey
    from kubeshield.sops.masterkeys.hcvault import VaultKey
    from kubeshield.sops.masterkeys.pgp import PgpKey

    env = KeyEnv.from_os()
    with _errors(env):
        fmt_in, fmt_out = _formats(file, kw["input_type"], kw["output_type"], kw["filename_override"])
        add = (
            _rotate_keys(kw["add_age"], AgeKey)
            + _rotate_keys(kw["add_pgp"], PgpKey)
            + _rotate_keys(kw["add_kms"], KmsKey.from_flag)
            + _rotate_keys(kw["add_hc_vault_transit"], VaultKey.from_uri)
            + _rotate_keys(kw["add_kubeshield"], lambda c: AgeKey(ks.recipient_for(c)))
        )
        remove = (
            _rotate_keys(kw["rm_age"], AgeKey)
            + _rotate_keys(kw["rm_pgp"], PgpKey)
            + _rotate_keys(kw["rm_kms"], KmsKey.from_flag)
            + _rotate_keys(kw["rm_hc_vault_transit"], VaultKey.from_uri)
            + _rotate_keys(kw["rm_kubeshield"], lambda c: AgeKey(ks.recipient_for(c)))
        )
        result = ops.rotate_bytes(
            _read(file),
            where=str(file),
            in_format=fmt_in,
            out_format=fmt_out,
            env=env,
            add=add,
            remove=remove,
        )
        _write(result, path=file, in_place=kw["in_place"], output=kw["output"])


@group.command("updatekeys")
@option("-y", "--yes", is_flag=True, help="apply without asking")
@option("--input-type", type=_FORMAT, default=None, help="file format (default: from the extension)")
@option(
    "--config", type=click.Path(dir_okay=False, path_type=Path), default=None, help="the .sops.yaml to use"
)
@option(
    "--shamir-secret-sharing-threshold",
    "threshold",
    type=int,
    default=0,
    help="override the rule's threshold",
)
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path)
)
def updatekeys_cmd(
    files: tuple[Path, ...], yes: bool, input_type: str | None, config: Path | None, threshold: int
) -> None:
    """Re-wrap each FILE's data key for the master keys its .sops.yaml rule lists now."""
    env = KeyEnv.from_os()
    with _errors(env):
        for file in files:
            creation = ops.resolve_creation(
                file_path=str(file),
                flags=ops.KeyFlags(),
                selection_flags={},
                mac_only_encrypted=False,
                shamir_threshold=threshold,
                config=config,
                cwd=Path.cwd(),
            )
            fmt = input_type or format_for_path(str(file))
            result, changes = ops.updatekeys_bytes(
                _read(file), where=str(file), in_format=fmt, env=env, creation=creation
            )
            if result is None:
                click.echo(f"{file}: already up to date", err=True)
                continue
            click.echo(f"The following changes will be made to the file's groups ({file}):", err=True)
            for line in changes:
                click.echo(line, err=True)
            if not yes and not click.confirm("Is this okay?", err=True):
                continue
            _write(result, path=file, in_place=True, output=None)
            click.echo(f"{file}: file updated", err=True)


@group.command("set")
@option("--input-type", type=_FORMAT, default=None, help="file format (default: from the extension)")
@option(
    "--value-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="read the JSON value from this file",
)
@option("--value-stdin", is_flag=True, help="read the JSON value from standard input")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.argument("index")
@click.argument("value", required=False)
def set_cmd(
    file: Path,
    index: str,
    value: str | None,
    input_type: str | None,
    value_file: Path | None,
    value_stdin: bool,
) -> None:
    """Set the value at INDEX (e.g. '["data"]["password"]') to a JSON value read from a file or stdin.

    \b
    Example:
      printf '"s3cr3t"' | kubeshield sops set --value-stdin secret.enc.yaml '["stringData"]["password"]'
    """
    env = KeyEnv.from_os()
    with _errors(env):
        if value is not None:
            raise SopsError(
                "kubeshield never takes a secret from the command line: pass the value with --value-file or "
                "--value-stdin",
                code=ExitCode.ERROR_INVALID_SET_FORMAT,
            )
        if value_file is not None and value_stdin:
            raise SopsError(
                "cannot use both --value-file and --value-stdin", code=ExitCode.ERROR_CONFLICTING_PARAMETERS
            )
        if value_file is not None:
            text = value_file.read_text(encoding="utf-8")
        elif value_stdin:
            text = sys.stdin.read()
        else:
            raise SopsError(
                "give the value with --value-file or --value-stdin", code=ExitCode.ERROR_INVALID_SET_FORMAT
            )
        fmt = input_type or format_for_path(str(file))
        result = ops.set_bytes(
            _read(file), where=str(file), in_format=fmt, path=index, value_json=text, env=env
        )
        _write(result, path=file, in_place=True, output=None)


@group.command("unset")
@option("--input-type", type=_FORMAT, default=None, help="file format (default: from the extension)")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.argument("index")
def unset_cmd(file: Path, index: str, input_type: str | None) -> None:
    """Remove the value at INDEX from FILE."""
    env = KeyEnv.from_os()
    with _errors(env):
        fmt = input_type or format_for_path(str(file))
        _write(
            ops.unset_bytes(_read(file), where=str(file), in_format=fmt, path=index, env=env),
            path=file,
            in_place=True,
            output=None,
        )


def _flat_env(data: bytes, fmt: str) -> dict[str, str]:
    from kubeshield.sops.stores import store_for
    from kubeshield.sops.tree import Branch, Comment

    branches = store_for(fmt).load_plain(data, where="decrypted")
    out: dict[str, str] = {}
    for key, value in branches[0] if branches else ():
        if isinstance(key, Comment) or isinstance(value, Branch | list) or value is None:
            continue
        out[str(key)] = "true" if value is True else "false" if value is False else str(value)
    return out


@group.command("exec-env", context_settings={"ignore_unknown_options": True})
@option("--pristine", is_flag=True, help="start the command with only the file's variables")
@option("--input-type", type=_FORMAT, default=None, help="file format (default: from the extension)")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.argument("command")
def exec_env_cmd(file: Path, command: str, pristine: bool, input_type: str | None) -> None:
    """Run COMMAND (with /bin/sh) with FILE's top-level values as environment variables; exit as it does."""
    env = KeyEnv.from_os()
    with _errors(env):
        fmt = input_type or format_for_path(str(file))
        plain = ops.decrypt_bytes(_read(file), where=str(file), in_format=fmt, out_format=fmt, env=env)
        variables = _flat_env(plain, fmt)
    child_env = {} if pristine else dict(os.environ)
    child_env.update(variables)
    raise SystemExit(subprocess.call(["/bin/sh", "-c", command], env=child_env))


@group.command("exec-file")
@option("--input-type", type=_FORMAT, default=None, help="file format (default: from the extension)")
@option("--output-type", type=_FORMAT, default=None, help="format of the decrypted file")
@option("--filename", default="tmp-file", help="name of the decrypted file (in a private temp directory)")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.argument("command")
def exec_file_cmd(
    file: Path, command: str, input_type: str | None, output_type: str | None, filename: str
) -> None:
    """Run COMMAND with {} replaced by the path of FILE decrypted into a 0600 file on /dev/shm.

    The file is removed when COMMAND exits (kubeshield uses a private file, not a FIFO).
    """
    env = KeyEnv.from_os()
    with _errors(env):
        fmt_in = input_type or format_for_path(str(file))
        plain = ops.decrypt_bytes(
            _read(file), where=str(file), in_format=fmt_in, out_format=output_type or fmt_in, env=env
        )
    with editing.private_tempdir() as directory:
        path = directory / Path(filename).name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(plain)
        status = subprocess.call(["/bin/sh", "-c", command.replace("{}", str(path))])
    raise SystemExit(status)


@group.command("kustomize")
@click.argument("config", required=False, type=click.Path(dir_okay=False, exists=True, path_type=Path))
def kustomize_cmd(config: Path | None) -> None:
    """kustomize exec KRM function (ResourceList on stdin) or legacy exec generator (CONFIG argument).

    \b
    The function config lists the SOPS files:
      apiVersion: kubeshield.io/v1alpha1
      kind: SopsGenerator
      metadata:
        name: secrets
        annotations:
          config.kubernetes.io/function: |
            exec:
              path: ./kubeshield-sops-kustomize
      files: [secret.enc.yaml]
    """
    env = KeyEnv.from_os()
    with _errors(env):
        if config is not None:
            click.echo(gitops.kustomize_legacy(config, env=env, base=Path.cwd()), nl=False)
            return
        click.echo(gitops.kustomize_resource_list(sys.stdin.read(), env=env, base=Path.cwd()), nl=False)


@group.command("diff-helper")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
def diff_helper_cmd(file: Path) -> None:
    """git textconv: print FILE decrypted (or as it is, when it cannot be decrypted).

    \b
    Set up:
      git config diff.sopsdiffer.textconv "kubeshield sops diff-helper"
      echo '*.enc.yaml diff=sopsdiffer' >> .gitattributes
    """
    env = KeyEnv.from_os()
    with _errors(env):
        shown, note = gitops.textconv(file, env=env)
    if note:
        click.echo(note, err=True)
    sys.stdout.buffer.write(shown)


@group.command("check")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, exists=True, path_type=Path))
def check_cmd(files: tuple[Path, ...]) -> int:
    """Exit 1 when a Kubernetes Secret manifest among FILES has plaintext data/stringData (pre-commit)."""
    findings = gitops.check_paths(list(files))
    for finding in findings:
        click.echo(finding, err=True)
    return 1 if findings else 0


@group.command("recipient")
@option(
    "--kubeshield",
    "config",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="the kubeshield.yaml whose keys section wraps the data key",
)
def recipient_cmd(config: Path) -> None:
    """Print the age recipient (for .sops.yaml) and the identity line (for keys.txt) of a key backend."""
    click.echo(f"# recipient (public; use with --age or in .sops.yaml): {ks.recipient_for(config)}")
    click.echo(ks.identity_for(config))


def run_age_plugin() -> None:
    """Console script ``age-plugin-kubeshield`` (started by sops/age with ``--age-plugin=...``)."""
    from kubeshield.sops.masterkeys.plugin import Channel, run_plugin

    args = sys.argv[1:]
    machine = next((a.split("=", 1)[1] for a in args if a.startswith("--age-plugin=")), None)
    if machine is None:
        sys.stderr.write("age-plugin-kubeshield is started by age or sops; use 'kubeshield sops recipient'\n")
        raise SystemExit(1)
    raise SystemExit(run_plugin(machine, Channel(sys.stdin.buffer, sys.stdout.buffer)))
