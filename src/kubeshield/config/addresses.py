"""Addresses that credentials travel to: https, or http only to a loopback address."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from kubeshield.errors import ConfigError

__all__ = ["check_credential_url", "is_loopback"]


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP literal (127.0.0.0/8, ::1); a name that merely resolves there is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_credential_url(address: str, *, field: str, carries: str) -> None:
    """``address`` must be ``https://HOST[:PORT]...`` or ``http://`` to a loopback address.

    ``field`` names the setting in the error; ``carries`` says what would cross the network in clear
    over http (e.g. "the token and every DEK seed").
    """
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{field}: {address!r} must be https://HOST[:PORT] (or http:// on loopback)")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ConfigError(
            f"{field}: http:// is allowed for loopback addresses only, not {parts.hostname!r}: "
            f"{carries} would cross the network in clear; use https://"
        )
