"""Error -> gRPC status mapping, JSON log lines that hold no secrets, and metric labels."""

from __future__ import annotations

import io
import json
import logging

import grpc
import pytest

from kubeshield.errors import (
    BackendAuthError,
    BackendTimeout,
    BackendUnavailable,
    ContractViolation,
    InvalidCiphertext,
    InvalidRequest,
    KeyNotFound,
    PolicyDenied,
)
from kubeshield.kms.logging import JsonFormatter, configure_logging, fields, get_logger, safe_value
from kubeshield.kms.metrics import KMSMetrics, key_id_hash
from kubeshield.kms.server import map_error


@pytest.mark.parametrize(
    ("exc", "code", "details"),
    [
        (InvalidRequest("plaintext is empty"), grpc.StatusCode.INVALID_ARGUMENT, "plaintext is empty"),
        (InvalidCiphertext(), grpc.StatusCode.INVALID_ARGUMENT, "invalid ciphertext"),
        (KeyNotFound("unknown key_id"), grpc.StatusCode.NOT_FOUND, "unknown key_id"),
        (BackendUnavailable("down"), grpc.StatusCode.UNAVAILABLE, "down"),
        (BackendTimeout("slow"), grpc.StatusCode.DEADLINE_EXCEEDED, "slow"),
        (BackendAuthError("revoked"), grpc.StatusCode.PERMISSION_DENIED, "revoked"),
        (PolicyDenied("no"), grpc.StatusCode.PERMISSION_DENIED, "no"),
        (ContractViolation("key_id is empty"), grpc.StatusCode.INTERNAL, "internal error"),
        (RuntimeError("secret-bytes-here"), grpc.StatusCode.INTERNAL, "internal error"),
    ],
)
def test_map_error(exc: Exception, code: grpc.StatusCode, details: str) -> None:
    assert map_error(exc) == (code, details)


def test_safe_value_never_writes_bytes() -> None:
    assert safe_value(b"\x00secret") == "<7 bytes>"
    assert safe_value(bytearray(3)) == "<3 bytes>"
    assert safe_value({"k": b"v"}) == "<dict>"
    assert safe_value("key-id") == "key-id"
    assert safe_value(3) == 3


def test_json_log_line_shape_and_no_bytes() -> None:
    stream = io.StringIO()
    configure_logging("debug", stream=stream)
    try:
        get_logger("test").info("encrypt", extra=fields(uid="u-1", plaintext=b"TOPSECRET", size=32))
    finally:
        configure_logging("info")
    line = json.loads(stream.getvalue().strip())
    assert set(line) >= {"ts", "level", "msg", "fields"}
    assert line["level"] == "info" and line["msg"] == "encrypt"
    assert line["fields"] == {"uid": "u-1", "plaintext": "<9 bytes>", "size": 32}
    assert "TOPSECRET" not in stream.getvalue()


def test_formatter_includes_traceback_locally() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "kubeshield.x", logging.ERROR, __file__, 1, "internal", None, sys.exc_info()
        )
    out = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in out["traceback"]


def test_unknown_log_level() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("chatty")


def test_metric_names_and_hashed_key_id() -> None:
    metrics = KMSMetrics()
    metrics.observe_operation("v2.Decrypt", "OK", 0.001)
    metrics.set_current_key_id("local:v1:abcdef")
    text = metrics.render().decode()
    assert 'kubeshield_kms_operations_total{code="OK",operation="v2.Decrypt"} 1.0' in text
    assert "kubeshield_kms_operation_duration_seconds_bucket" in text
    assert f'kubeshield_kms_current_key_id_info{{key_id_hash="{key_id_hash("local:v1:abcdef")}"}} 1.0' in text
    assert "local:v1:abcdef" not in text
    assert len(key_id_hash("x")) == 16
    assert key_id_hash("a") != key_id_hash("b")
