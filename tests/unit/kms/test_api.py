"""The generated stubs register exactly the wire identity kube-apiserver calls (contract §1)."""

from __future__ import annotations

import grpc

from kubeshield.kms.api.v1beta1 import api_pb2 as v1_pb2
from kubeshield.kms.api.v1beta1 import api_pb2_grpc as v1_grpc
from kubeshield.kms.api.v2 import api_pb2 as v2_pb2
from kubeshield.kms.api.v2 import api_pb2_grpc as v2_grpc


class _RecordingServer:
    """Collects the full method names a generated ``add_*_to_server`` registers."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        for handler in handlers:
            for method in ("Status", "Encrypt", "Decrypt", "Version", "Nope"):
                for service in ("v2.KeyManagementService", "v1beta1.KeyManagementService"):
                    details = _Details(f"/{service}/{method}")
                    if handler.service(details) is not None:
                        self.names.add(details.method)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, object]) -> None:
        self.names.update(f"/{service}/{name}" for name in handlers)


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def test_v2_full_method_names() -> None:
    server = _RecordingServer()
    v2_grpc.add_KeyManagementServiceServicer_to_server(v2_grpc.KeyManagementServiceServicer(), server)
    assert server.names == {
        "/v2.KeyManagementService/Status",
        "/v2.KeyManagementService/Decrypt",
        "/v2.KeyManagementService/Encrypt",
    }


def test_v1beta1_full_method_names() -> None:
    server = _RecordingServer()
    v1_grpc.add_KeyManagementServiceServicer_to_server(v1_grpc.KeyManagementServiceServicer(), server)
    assert server.names == {
        "/v1beta1.KeyManagementService/Version",
        "/v1beta1.KeyManagementService/Decrypt",
        "/v1beta1.KeyManagementService/Encrypt",
    }


def _fields(message: object) -> dict[str, tuple[int, int]]:
    descriptor = message.DESCRIPTOR  # type: ignore[attr-defined]
    return {f.name: (f.number, f.type) for f in descriptor.fields}


B, S, M = 12, 9, 11  # FieldDescriptor.TYPE_BYTES, TYPE_STRING, TYPE_MESSAGE (map entries)


def test_v2_messages_match_the_contract() -> None:
    assert v2_pb2.DESCRIPTOR.package == "v2"
    assert v2_pb2.DESCRIPTOR.services_by_name["KeyManagementService"].full_name == "v2.KeyManagementService"
    assert _fields(v2_pb2.StatusRequest) == {}
    assert _fields(v2_pb2.StatusResponse) == {"version": (1, S), "healthz": (2, S), "key_id": (3, S)}
    assert _fields(v2_pb2.EncryptRequest) == {"plaintext": (1, B), "uid": (2, S)}
    assert _fields(v2_pb2.EncryptResponse) == {"ciphertext": (1, B), "key_id": (2, S), "annotations": (3, M)}
    assert _fields(v2_pb2.DecryptRequest) == {
        "ciphertext": (1, B),
        "uid": (2, S),
        "key_id": (3, S),
        "annotations": (4, M),
    }
    assert _fields(v2_pb2.DecryptResponse) == {"plaintext": (1, B)}
    entry = v2_pb2.EncryptResponse.DESCRIPTOR.fields_by_name["annotations"].message_type
    assert entry is not None
    assert entry.GetOptions().map_entry
    assert {f.name: (f.number, f.type) for f in entry.fields} == {"key": (1, S), "value": (2, B)}


def test_v1beta1_messages_match_the_contract() -> None:
    assert v1_pb2.DESCRIPTOR.package == "v1beta1"
    assert _fields(v1_pb2.VersionRequest) == {"version": (1, S)}
    assert _fields(v1_pb2.VersionResponse) == {
        "version": (1, S),
        "runtime_name": (2, S),
        "runtime_version": (3, S),
    }
    assert _fields(v1_pb2.EncryptRequest) == {"version": (1, S), "plain": (2, B)}
    assert _fields(v1_pb2.EncryptResponse) == {"cipher": (1, B)}
    assert _fields(v1_pb2.DecryptRequest) == {"version": (1, S), "cipher": (2, B)}
    assert _fields(v1_pb2.DecryptResponse) == {"plain": (1, B)}


def test_v2_wire_bytes_are_the_go_encoding() -> None:
    # field 1 (LEN) "v2", field 2 "ok", field 3 "k": hand-assembled proto3 bytes
    wire = b"\x0a\x02v2\x12\x02ok\x1a\x01k"
    assert v2_pb2.StatusResponse(version="v2", healthz="ok", key_id="k").SerializeToString() == wire
