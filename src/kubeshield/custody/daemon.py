"""Start-up of the custody process (the library half of ``kubeshield custody serve``).

Order matters and is fixed here: load the policy (a bad policy refuses to start) -> bind the socket
(as the starting user, usually root) -> harden (no core, not dumpable, fds closed, memory locked) ->
load the KEK versions into locked memory -> drop to ``user`` -> serve until SIGTERM/SIGINT.
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from kubeshield.custody.harden import drop_privileges, harden_process, hardening_report
from kubeshield.custody.policy import load_policy
from kubeshield.custody.server import CustodyServer, bind_unix_socket
from kubeshield.errors import ConfigError
from kubeshield.keys.base import KeyBackend

__all__ = ["BackendFactory", "ServeOptions", "load_backend_factory", "serve"]

log = logging.getLogger("kubeshield.custody")

BackendFactory = Callable[..., KeyBackend]


@dataclass(frozen=True, slots=True)
class ServeOptions:
    socket: str
    policy: str
    keyring: str
    passphrase: bytes | None = None
    user: str | None = None
    require_mlock: bool = False
    socket_mode: int = 0o660
    close_fds: bool = True


def _local_factory(*, keyring: str, passphrase: bytes | None) -> KeyBackend:
    try:
        module = importlib.import_module("kubeshield.keys.local")
    except ModuleNotFoundError as exc:
        raise ConfigError("the local keyring backend (kubeshield.keys.local) is not available") from exc
    backend: KeyBackend = module.LocalKeyBackend(path=keyring, passphrase=passphrase)
    return backend


def load_backend_factory(spec: str | None) -> BackendFactory:
    """``None`` -> the local keyring backend; ``"module:callable"`` -> that callable (for tests/plugins).

    The callable is called as ``factory(keyring=PATH, passphrase=BYTES_OR_NONE)``.
    """
    if spec is None:
        return _local_factory
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError("--backend-factory must look like 'package.module:callable'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--backend-factory: cannot load {spec!r}: {type(exc).__name__}") from None
    if not callable(factory):
        raise ConfigError(f"--backend-factory: {spec!r} is not callable")
    return factory  # type: ignore[no-any-return]


def serve(
    options: ServeOptions,
    *,
    factory: BackendFactory = _local_factory,
    ready: Callable[[str], None] | None = None,
) -> int:
    """Run the custody process until a signal. Returns the exit code."""
    policy = load_policy(options.policy)
    listener = bind_unix_socket(options.socket, mode=options.socket_mode)
    try:
        harden_process(
            require_mlock=options.require_mlock, keep_fds=[listener.fileno()], close_fds=options.close_fds
        )
        backend = factory(keyring=options.keyring, passphrase=options.passphrase)
        drop_privileges(options.user)
        report = hardening_report()
        log.info(
            "custody: serving key_id=%s on %s (mlocked=%s dumpable=%d core=%d uid=%d)",
            backend.key_id(),
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
        try:
            server.serve_forever()
        finally:
            backend.close()
    finally:
        listener.close()
    return 0
