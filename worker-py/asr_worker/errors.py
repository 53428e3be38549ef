"""The worker's side of the ONE error catalog (proto/asr/v1/errors.toml).

Every failure the worker reports, in-band (`asr.v1.Error`) or as a call-ending
gRPC status, is an `AsrError` subclass whose `code` is an `asr.v1.ErrorCode`.
`CATALOG` maps each code to its gRPC status, whether a retry (elsewhere, with
`StreamingConfig.resume`) may succeed, and a default message. It is built from
`asr.v1.errors_catalog`, which scripts/gen-proto.sh generates from the same
table as the gateway's catalog, so the two sides cannot drift apart.

Start-up failures (bad model directory, unknown device) are `StartupError`s:
they never reach the wire; the CLI prints them as one line and exits with 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from asr.v1 import asr_pb2
from asr.v1.errors_catalog import WORKER_ERRORS


@dataclass(frozen=True)
class ErrorSpec:
    """How one ErrorCode is reported."""

    #: gRPC status that ends a call failing with this code.
    status: grpc.StatusCode
    #: Whether the same request may succeed when retried elsewhere.
    retryable: bool
    #: Message used when the raiser gives none.
    default_message: str


#: ErrorCode -> how it is reported, from the generated catalog.
CATALOG: dict[int, ErrorSpec] = {
    code: ErrorSpec(grpc.StatusCode[status], retryable, message)
    for code, (status, retryable, message, _client_code) in WORKER_ERRORS.items()
}


class AsrError(Exception):
    """A failure with a machine code from asr.v1.ErrorCode."""

    #: The asr.v1.ErrorCode of this class.
    code: int = asr_pb2.ERROR_CODE_INTERNAL

    def __init__(self, message: str | None = None, *, segment_id: int | None = None) -> None:
        self.message = message or CATALOG[self.code].default_message
        #: The segment concerned, for in-band errors about one segment.
        self.segment_id = segment_id
        super().__init__(self.message)

    @property
    def spec(self) -> ErrorSpec:
        """The catalog entry of this error's code."""
        return CATALOG[self.code]

    @property
    def status(self) -> grpc.StatusCode:
        """The gRPC status that ends a call failing with this error."""
        return self.spec.status

    @property
    def retryable(self) -> bool:
        """Whether a retry elsewhere may succeed."""
        return self.spec.retryable

    def to_proto(self) -> asr_pb2.Error:
        """The in-band asr.v1.Error for this failure."""
        err = asr_pb2.Error(code=self.code, message=self.message, retryable=self.retryable)
        if self.segment_id is not None:
            err.segment_id = self.segment_id
        return err


class InvalidConfig(AsrError):
    """The StreamingConfig is invalid or arrived out of order."""

    code = asr_pb2.ERROR_CODE_INVALID_CONFIG


#: Alias: the name used in design notes.
ConfigError = InvalidConfig


class InvalidAudio(AsrError):
    """Audio is malformed: odd byte count, wrong rate, oversized."""

    code = asr_pb2.ERROR_CODE_INVALID_AUDIO


class Overloaded(AsrError):
    """The worker (stream slots or inference queue) is at capacity."""

    code = asr_pb2.ERROR_CODE_OVERLOADED


class InferenceFailed(AsrError):
    """The engine failed on a batch; every member of the batch gets this."""

    code = asr_pb2.ERROR_CODE_INFERENCE_FAILED


class Draining(AsrError):
    """The worker is draining and admits or continues no streams."""

    code = asr_pb2.ERROR_CODE_DRAINING


class InternalError(AsrError):
    """A bug."""

    code = asr_pb2.ERROR_CODE_INTERNAL


def spec_for(code: int) -> ErrorSpec:
    """The catalog entry of an asr.v1.ErrorCode (INTERNAL for unknown codes)."""
    return CATALOG.get(code, CATALOG[asr_pb2.ERROR_CODE_INTERNAL])


class StartupError(Exception):
    """A misconfiguration found at start; printed as one line, exit code 2."""


class ModelLoadError(StartupError):
    """The model directory is missing, incomplete or cannot be loaded."""


class DeviceError(StartupError):
    """The requested device is unknown or not available."""
