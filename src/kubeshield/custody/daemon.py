"""Start-up of the custody process (the library half of ``kubeshield custody serve``).

Order matters and is fixed here: load the policy (a bad policy refuses to start) -> bind the socket
(as the starting user, usually root; a live socket of another custody process, a file that is not a
socket or a missing directory refuses to start with one line, as ``kms serve`` does) -> harden (no
core, not dumpable, fds closed, memory locked) -> open the key store into locked memory -> drop to
``user`` -> serve until SIGTERM/SIGINT -> remove the socket file if it is still ours.

The key store is a real :mod:`kubeshield.keys` backend built from a ``keys:`` settings section by
:func:`kubeshield.keys.registry.open_primary`: ``local`` (a keyring file, plain or passphrase-sealed)
or ``tpm`` (a TPM-sealed keyring), or any other backend except ``custody`` itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from kubeshield.config.settings import KeysSettings
from kubeshield.custody.harden import drop_privileges, harden_process, hardening_report
from kubeshield.custody.policy import load_policy
from kubeshield.custody.server import CustodyServer, bind_unix_socket
from kubeshield.errors import ConfigError
from kubeshield.keys.base import KeyBackend
from kubeshield.keys.registry import open_primary

__all__ = ["ServeOptions", "serve"]

log = logging.getLogger("kubeshield.custody")


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """What ``custody serve`` needs. ``keys`` selects and configures the key store."""

    socket: str
    policy: str
    keys: KeysSettings
    user: str | None = None
    require_mlock: bool = False
    socket_mode: int = 0o660
    close_fds: bool = True

    def __post_init__(self) -> None:
        if self.keys.backend == "custody":
            raise ConfigError(
                "keys.backend: custody serve holds the keys itself; choose local or tpm, not custody"
            )


def serve(
    options: ServeOptions,
    *,
    ready: Callable[[str], None] | None = None,
    open_backend: Callable[[KeysSettings], KeyBackend] = open_primary,
) -> int:
    """Run the custody process until a signal. Returns the exit code.

    ``open_backend`` builds the key store from ``options.keys`` (default: the backend registry).
    """
    policy = load_policy(options.policy)
    listener = bind_unix_socket(options.socket, mode=options.socket_mode)
    inode = os.lstat(options.socket).st_ino
    try:
        harden_process(
            require_mlock=options.require_mlock, keep_fds=[listener.fileno()], close_fds=options.close_fds
        )
        backend = open_backend(options.keys)
        try:
            drop_privileges(options.user)
            report = hardening_report()
            log.info(
                "custody: serving key_id=%s (%s backend) on %s (mlocked=%s dumpable=%d core=%d uid=%d)",
                backend.key_id(),
                options.keys.backend,
                options.socket,
                report.mlocked,
                report.dumpable,
                report.core_limit,
                report.uid,
            )
            server = CustodyServer(backend=backend, policy=policy, listener=listener)

            def _stop(signum: int, frame: FrameType | None) -> None:
                server.shutdown()

            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, _stop)
                signal.signal(signal.SIGINT, _stop)
            if ready is not None:
                ready(backend.key_id())
            server.serve_forever()
        finally:
            backend.close()
    finally:
        listener.close()
        _remove_own_socket(options.socket, inode)
    return 0


def _remove_own_socket(path: str, inode: int) -> None:
    """Unlink the socket file if it is still the one we bound (never another server's)."""
    with contextlib.suppress(OSError):
        info = os.lstat(path)
        if stat.S_ISSOCK(info.st_mode) and info.st_ino == inode:
            os.unlink(path)
