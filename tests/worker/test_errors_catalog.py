"""The worker's error catalog comes from the one generated table (proto/asr/v1/errors.toml)."""

from __future__ import annotations

import grpc

from asr.v1 import asr_pb2
from asr.v1.errors_catalog import CLIENT_ERRORS, WORKER_ERRORS
from asr_worker.errors import CATALOG, Draining, InferenceFailed, InvalidAudio, Overloaded


def test_every_error_code_has_a_catalog_entry() -> None:
    codes = {v.number for v in asr_pb2.DESCRIPTOR.enum_types_by_name["ErrorCode"].values} - {0}
    assert set(CATALOG) == codes == set(WORKER_ERRORS)
    assert all(row[3] in CLIENT_ERRORS for row in WORKER_ERRORS.values())


def test_exceptions_report_what_the_table_says() -> None:
    assert Overloaded().status == grpc.StatusCode.RESOURCE_EXHAUSTED and Overloaded().retryable
    assert Draining().status == grpc.StatusCode.UNAVAILABLE
    assert not InvalidAudio().retryable
    err = InferenceFailed(segment_id=3).to_proto()
    assert err.code == asr_pb2.ERROR_CODE_INFERENCE_FAILED and err.retryable and err.segment_id == 3
    assert err.message == WORKER_ERRORS[asr_pb2.ERROR_CODE_INFERENCE_FAILED][2]
