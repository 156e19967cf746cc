"""The ``kubeshield`` command line. ``main(argv) -> int`` does the work; ``run()`` is the console script.

Command groups live in their own modules (``keys``, ``kms``, ``etcd``) and only parse, call the library
and render: the logic lives in the feature packages.

The groups are imported lazily (:class:`_LazyGroup`): ``kubeshield sops decrypt`` imports the ``sops``
group and what it needs, not the KMS plugin, the attestation verifiers or the posture rules. Start-up is
most of the wall time of a short command (the sops benchmark compares whole processes with the Go
binary), and importing every group cost ~0.6 s. ``--help``, a mistyped command and ``cli.commands`` still
load every group, so the listing and the suggestions are complete.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import MutableMapping, Sequence
from typing import Any

import click

from kubeshield import __version__
from kubeshield.cli._common import EXIT_FAILURE, EXIT_USAGE
from kubeshield.errors import KubeshieldError

__all__ = ["cli", "main", "run"]

_GROUPS = ("keys", "kms", "etcd", "custody", "attest", "sops", "seal", "posture", "node", "access")


class _LazyGroup(click.Group):
    """A group whose subgroups (the modules ``kubeshield.cli.<name>`` for ``_GROUPS``) load on first use.

    ``get_command`` imports only the named group; ``list_commands`` finds which modules exist without
    importing them; reading ``commands`` (click's suggestions for a mistyped name, tests walking the
    tree) loads them all first, so it always holds every group.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._loaded: MutableMapping[str, click.Command] = {}
        super().__init__(*args, **kwargs)

    @property
    def commands(self) -> MutableMapping[str, click.Command]:
        for name in self._available():
            self._load(name)
        return self._loaded

    @commands.setter
    def commands(self, value: MutableMapping[str, click.Command]) -> None:
        self._loaded = value

    @staticmethod
    def _available() -> list[str]:
        return [n for n in _GROUPS if importlib.util.find_spec(f"kubeshield.cli.{n}") is not None]

    def _load(self, name: str) -> click.Command | None:
        if name in self._loaded:
            return self._loaded[name]
        if name not in _GROUPS:
            return None
        try:
            module = importlib.import_module(f"kubeshield.cli.{name}")
        except ModuleNotFoundError as exc:  # a group not built yet
            if exc.name != f"kubeshield.cli.{name}":
                raise
            return None
        group: click.Command = module.group
        self._loaded[name] = group
        return group

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load(cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self._loaded, *self._available()})


@click.group(
    cls=_LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
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
