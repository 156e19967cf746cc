"""The ``kubeshield`` command line. ``main(argv) -> int`` does the work; ``run()`` is the console script.

Command groups live in their own modules (``keys``, ``kms``, ``etcd``) and only parse, call the library
and render: the logic lives in the feature packages.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

import click

from kubeshield import __version__
from kubeshield.cli._common import EXIT_FAILURE, EXIT_USAGE
from kubeshield.errors import KubeshieldError

__all__ = ["cli", "main", "run"]

_GROUPS = ("keys", "kms", "etcd", "custody", "attest", "sops", "seal", "posture", "node", "access")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="kubeshield")
def cli() -> None:
    """kubeshield: an invisible shield for Kubernetes Secrets.

    \b
    keys     create, rotate and list key-encryption keys (KEKs)
    kms      the KMS v2/v1 plugin for kube-apiserver, its status and its EncryptionConfiguration
    etcd     prove encryption at rest, recover Secrets from etcd or a backup, migrate keys
    custody  an isolated key-custody process that checks who calls it
    attest   verify SGX/TDX/SEV-SNP/TPM evidence; release keys only to attested software
    sops     SOPS-compatible encrypted files (the sops binary reads what kubeshield writes)
    seal     sealed secrets for Git (kubeseal-compatible), their keys, unseal, the controller
    posture  every way Secrets can leak (config, RBAC, pods, Git); Pod Security admission
    node     values sealed per ServiceAccount, released only to the pod (CSI provider, injector)
    access   secure kubectl: credentials only in memory, behind a local https proxy

    Every flag can also be set with KUBESHIELD_<FLAG> (for example KUBESHIELD_SOCKET); the command
    line wins. Exit codes: 0 ok, 1 findings or failure, 2 usage error.
    """


for _name in _GROUPS:
    try:
        _module = importlib.import_module(f"kubeshield.cli.{_name}")
    except ModuleNotFoundError as _exc:  # a group not built yet
        if _exc.name != f"kubeshield.cli.{_name}":
            raise
        continue
    cli.add_command(_module.group)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code instead of exiting."""
    try:
        result = cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return EXIT_FAILURE
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KubeshieldError as exc:
        click.echo(f"Error: {type(exc).__name__}: {exc}", err=True)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    if isinstance(result, int):
        return result
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if EXIT_USAGE != click.UsageError.exit_code:  # pragma: no cover - guards our documented exit codes
    raise RuntimeError("click changed its usage exit code")
