"""Shared pieces of the CLI: env-var aware options, errors with exit codes, output helpers.

Every flag can also come from ``KUBESHIELD_<FLAG>`` (``--health-addr`` -> ``KUBESHIELD_HEALTH_ADDR``);
the command line wins. Exit codes: 0 ok, 1 findings or failure, 2 usage error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from kubeshield.errors import KubeshieldError

__all__ = ["EXIT_FAILURE", "EXIT_USAGE", "CLIError", "envvar_for", "option", "raise_cli_error"]

EXIT_FAILURE = 1
EXIT_USAGE = 2

F = TypeVar("F", bound=Callable[..., Any])


def envvar_for(flag: str) -> str:
    """``--health-addr`` -> ``KUBESHIELD_HEALTH_ADDR``."""
    return "KUBESHIELD_" + flag.lstrip("-").replace("-", "_").upper()


def option(*param_decls: str, **attrs: Any) -> Callable[[F], F]:
    """``click.option`` that also reads ``KUBESHIELD_<FLAG>`` and shows it in ``--help``."""
    long_flags = [d for d in param_decls if d.startswith("--")]
    if long_flags and "envvar" not in attrs:
        attrs["envvar"] = envvar_for(long_flags[0].split("/")[0])
        attrs.setdefault("show_envvar", True)
    return click.option(*param_decls, **attrs)


class CLIError(click.ClickException):
    """A failure reported to the user as one line, with exit code 1."""

    exit_code = EXIT_FAILURE


def raise_cli_error(exc: KubeshieldError) -> None:
    """Turn a kubeshield error into a CLI error (its message is safe by contract)."""
    raise CLIError(f"{type(exc).__name__}: {exc}") from exc
