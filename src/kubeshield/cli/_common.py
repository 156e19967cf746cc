"""Shared pieces of the CLI: env-var aware options, durations, etcd TLS flags, errors with exit codes.

Every flag can also come from ``KUBESHIELD_<FLAG>`` (``--health-addr`` -> ``KUBESHIELD_HEALTH_ADDR``);
the command line wins. Exit codes: 0 ok, 1 findings or failure, 2 usage error.

Durations (every timeout and interval flag) accept Go-style text (``3s``, ``500ms``, ``1m30s``) and plain
seconds (``3``, ``0.5``), so one ``KUBESHIELD_TIMEOUT=3s`` works for every command.

etcd TLS is always ``--cacert --cert --key`` as etcdctl spells them (``KUBESHIELD_CACERT``,
``KUBESHIELD_CERT``, ``KUBESHIELD_KEY``); the older ``--client-key`` (``KUBESHIELD_CLIENT_KEY``) of
``etcd decrypt`` still works everywhere, with a deprecation warning.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from kubeshield.errors import KubeshieldError

__all__ = [
    "DURATION",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "CLIError",
    "Duration",
    "EtcdTLS",
    "envvar_for",
    "etcd_tls",
    "etcd_tls_options",
    "option",
    "raise_cli_error",
    "warn",
]

EXIT_FAILURE = 1
EXIT_USAGE = 2

F = TypeVar("F", bound=Callable[..., Any])
_SECONDS = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)")


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


def warn(message: str) -> None:
    """One warning line on stderr."""
    click.echo(f"warning: {message}", err=True)


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic only since click 8.5
    """A duration in seconds, from Go-style text (``3s``, ``250ms``, ``1m30s``) or plain seconds (``3``).

    ``allow_zero`` admits ``0``; negative values, ``inf`` and ``nan`` are always refused.
    """

    name = "duration"

    def __init__(self, *, allow_zero: bool = False) -> None:
        self.allow_zero = allow_zero

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, bool):
            self.fail(f"{value!r} is not a duration", param, ctx)
        if isinstance(value, int | float):
            seconds = float(value)
        else:
            text = str(value).strip()
            if _SECONDS.fullmatch(text):
                seconds = float(text)
            else:
                # imported here: kubeshield.config is ~35 ms of start-up that most commands never need
                from kubeshield.config.duration import parse_duration

                try:
                    seconds = parse_duration(text)
                except ValueError:
                    self.fail(
                        f"{text[:64]!r} is not a duration: use e.g. 3s, 500ms, 1m30s, or plain seconds (3)",
                        param,
                        ctx,
                    )
        if not seconds == seconds or seconds in (float("inf"), float("-inf")) or seconds < 0:
            self.fail(f"{value!r} is not a finite, non-negative duration", param, ctx)
        if seconds == 0 and not self.allow_zero:
            self.fail("must be greater than zero", param, ctx)
        return seconds

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "DURATION"


#: the type of every timeout/interval flag
DURATION = Duration()


class CLIError(click.ClickException):
    """A failure reported to the user as one line, with exit code 1."""

    exit_code = EXIT_FAILURE


def raise_cli_error(exc: KubeshieldError) -> None:
    """Turn a kubeshield error into a CLI error (its message is safe by contract)."""
    raise CLIError(f"{type(exc).__name__}: {exc}") from exc


# -- etcd TLS flags, as etcdctl spells them -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EtcdTLS:
    """The etcd client TLS files, and the flag each came from (for error messages)."""

    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    key_flag: str = "--key"

    @property
    def flags(self) -> tuple[str, str, str]:
        return ("--cacert", "--cert", self.key_flag)


def etcd_tls_options(*, key_option: bool = True) -> Callable[[F], F]:
    """``--cacert --cert --key`` (etcdctl's names) and the deprecated ``--client-key``.

    ``key_option=False`` leaves ``--key`` out, for a command that declares it itself (``etcd decrypt``,
    where ``--key ETCDKEY`` was the object selector).
    """

    def decorate(func: F) -> F:
        opts = [
            option(
                "--cacert",
                type=click.Path(dir_okay=False),
                help="CA bundle that signed etcd's certificate (etcdctl --cacert).",
            ),
            option(
                "--cert",
                type=click.Path(dir_okay=False),
                help="Client certificate for etcd (etcdctl --cert).",
            ),
        ]
        if key_option:
            opts.append(
                option(
                    "--key",
                    "key",
                    type=click.Path(dir_okay=False),
                    help="Client private key for etcd (etcdctl --key).",
                )
            )
        opts.append(
            option(
                "--client-key",
                "client_key",
                type=click.Path(dir_okay=False),
                hidden=True,
                help="Deprecated spelling of --key.",
            )
        )
        for opt in reversed(opts):
            func = opt(func)
        return func

    return decorate


def etcd_tls(params: Mapping[str, Any], *, key: str | None = None) -> EtcdTLS:
    """The TLS files from the parsed flags; ``key`` overrides ``params["key"]`` (decrypt resolves it).

    ``--client-key`` / ``$KUBESHIELD_CLIENT_KEY`` is the old name of ``--key``: accepted with a warning,
    and refused when it disagrees with ``--key``.
    """
    tls_key = params.get("key") if key is None else key
    old = params.get("client_key")
    key_flag = "--key"
    if old:
        warn(
            "--client-key ($KUBESHIELD_CLIENT_KEY) is deprecated: use --key ($KUBESHIELD_KEY), "
            "as etcdctl does"
        )
        if tls_key and tls_key != old:
            raise click.UsageError(f"--key {tls_key!r} and the deprecated --client-key {old!r} disagree")
        if not tls_key:
            tls_key, key_flag = old, "--client-key"
    return EtcdTLS(cacert=params.get("cacert"), cert=params.get("cert"), key=tls_key, key_flag=key_flag)
