from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecognitionMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECOGNITION_MODE_UNSPECIFIED: _ClassVar[RecognitionMode]
    RECOGNITION_MODE_OFFLINE: _ClassVar[RecognitionMode]
    RECOGNITION_MODE_ONLINE: _ClassVar[RecognitionMode]
    RECOGNITION_MODE_TWO_PASS: _ClassVar[RecognitionMode]

class ControlType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTROL_TYPE_UNSPECIFIED: _ClassVar[ControlType]
    CONTROL_TYPE_END_OF_INPUT: _ClassVar[ControlType]
    CONTROL_TYPE_COMMIT: _ClassVar[ControlType]

class SpeechEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPEECH_EVENT_TYPE_UNSPECIFIED: _ClassVar[SpeechEventType]
    SPEECH_EVENT_TYPE_START: _ClassVar[SpeechEventType]
    SPEECH_EVENT_TYPE_END: _ClassVar[SpeechEventType]

class EndpointReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENDPOINT_REASON_UNSPECIFIED: _ClassVar[EndpointReason]
    ENDPOINT_REASON_VAD: _ClassVar[EndpointReason]
    ENDPOINT_REASON_END_OF_INPUT: _ClassVar[EndpointReason]
    ENDPOINT_REASON_COMMIT: _ClassVar[EndpointReason]
    ENDPOINT_REASON_MAX_LENGTH: _ClassVar[EndpointReason]

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID_CONFIG: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID_AUDIO: _ClassVar[ErrorCode]
    ERROR_CODE_OVERLOADED: _ClassVar[ErrorCode]
    ERROR_CODE_INFERENCE_FAILED: _ClassVar[ErrorCode]
    ERROR_CODE_DRAINING: _ClassVar[ErrorCode]
    ERROR_CODE_INTERNAL: _ClassVar[ErrorCode]
RECOGNITION_MODE_UNSPECIFIED: RecognitionMode
RECOGNITION_MODE_OFFLINE: RecognitionMode
RECOGNITION_MODE_ONLINE: RecognitionMode
RECOGNITION_MODE_TWO_PASS: RecognitionMode
CONTROL_TYPE_UNSPECIFIED: ControlType
CONTROL_TYPE_END_OF_INPUT: ControlType
CONTROL_TYPE_COMMIT: ControlType
SPEECH_EVENT_TYPE_UNSPECIFIED: SpeechEventType
SPEECH_EVENT_TYPE_START: SpeechEventType
SPEECH_EVENT_TYPE_END: SpeechEventType
ENDPOINT_REASON_UNSPECIFIED: EndpointReason
ENDPOINT_REASON_VAD: EndpointReason
ENDPOINT_REASON_END_OF_INPUT: EndpointReason
ENDPOINT_REASON_COMMIT: EndpointReason
ENDPOINT_REASON_MAX_LENGTH: EndpointReason
ERROR_CODE_UNSPECIFIED: ErrorCode
ERROR_CODE_INVALID_CONFIG: ErrorCode
ERROR_CODE_INVALID_AUDIO: ErrorCode
ERROR_CODE_OVERLOADED: ErrorCode
ERROR_CODE_INFERENCE_FAILED: ErrorCode
ERROR_CODE_DRAINING: ErrorCode
ERROR_CODE_INTERNAL: ErrorCode

class StreamingRecognizeRequest(_message.Message):
    __slots__ = ("config", "audio", "control")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    config: StreamingConfig
    audio: AudioChunk
    control: Control
    def __init__(self, config: _Optional[_Union[StreamingConfig, _Mapping]] = ..., audio: _Optional[_Union[AudioChunk, _Mapping]] = ..., control: _Optional[_Union[Control, _Mapping]] = ...) -> None: ...

class StreamingConfig(_message.Message):
    __slots__ = ("session_id", "wav_name", "mode", "sample_rate_hz", "hotwords", "itn", "language", "partial_interval_ms", "resume")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    WAV_NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    HOTWORDS_FIELD_NUMBER: _ClassVar[int]
    ITN_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    wav_name: str
    mode: RecognitionMode
    sample_rate_hz: int
    hotwords: _containers.RepeatedCompositeFieldContainer[Hotword]
    itn: bool
    language: str
    partial_interval_ms: int
    resume: ResumeState
    def __init__(self, session_id: _Optional[str] = ..., wav_name: _Optional[str] = ..., mode: _Optional[_Union[RecognitionMode, str]] = ..., sample_rate_hz: _Optional[int] = ..., hotwords: _Optional[_Iterable[_Union[Hotword, _Mapping]]] = ..., itn: _Optional[bool] = ..., language: _Optional[str] = ..., partial_interval_ms: _Optional[int] = ..., resume: _Optional[_Union[ResumeState, _Mapping]] = ...) -> None: ...

class Hotword(_message.Message):
    __slots__ = ("phrase", "weight")
    PHRASE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    phrase: str
    weight: float
    def __init__(self, phrase: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class ResumeState(_message.Message):
    __slots__ = ("audio_offset_ms", "finalized_segments")
    AUDIO_OFFSET_MS_FIELD_NUMBER: _ClassVar[int]
    FINALIZED_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    audio_offset_ms: int
    finalized_segments: int
    def __init__(self, audio_offset_ms: _Optional[int] = ..., finalized_segments: _Optional[int] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("pcm16le", "sample_rate_hz")
    PCM16LE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    pcm16le: bytes
    sample_rate_hz: int
    def __init__(self, pcm16le: _Optional[bytes] = ..., sample_rate_hz: _Optional[int] = ...) -> None: ...

class Control(_message.Message):
    __slots__ = ("type",)
    TYPE_FIELD_NUMBER: _ClassVar[int]
    type: ControlType
    def __init__(self, type: _Optional[_Union[ControlType, str]] = ...) -> None: ...

class StreamingRecognizeResponse(_message.Message):
    __slots__ = ("speech_event", "partial", "final", "end_of_input", "error")
    SPEECH_EVENT_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    END_OF_INPUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    speech_event: SpeechEvent
    partial: PartialResult
    final: FinalResult
    end_of_input: EndOfInputAck
    error: Error
    def __init__(self, speech_event: _Optional[_Union[SpeechEvent, _Mapping]] = ..., partial: _Optional[_Union[PartialResult, _Mapping]] = ..., final: _Optional[_Union[FinalResult, _Mapping]] = ..., end_of_input: _Optional[_Union[EndOfInputAck, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class SpeechEvent(_message.Message):
    __slots__ = ("type", "segment_id", "offset_ms")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_MS_FIELD_NUMBER: _ClassVar[int]
    type: SpeechEventType
    segment_id: int
    offset_ms: int
    def __init__(self, type: _Optional[_Union[SpeechEventType, str]] = ..., segment_id: _Optional[int] = ..., offset_ms: _Optional[int] = ...) -> None: ...

class PartialResult(_message.Message):
    __slots__ = ("segment_id", "text", "delta", "stability", "audio_end_ms")
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    STABILITY_FIELD_NUMBER: _ClassVar[int]
    AUDIO_END_MS_FIELD_NUMBER: _ClassVar[int]
    segment_id: int
    text: str
    delta: str
    stability: float
    audio_end_ms: int
    def __init__(self, segment_id: _Optional[int] = ..., text: _Optional[str] = ..., delta: _Optional[str] = ..., stability: _Optional[float] = ..., audio_end_ms: _Optional[int] = ...) -> None: ...

class FinalResult(_message.Message):
    __slots__ = ("segment_id", "text", "start_ms", "end_ms", "tokens", "reason")
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_MS_FIELD_NUMBER: _ClassVar[int]
    END_MS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    segment_id: int
    text: str
    start_ms: int
    end_ms: int
    tokens: _containers.RepeatedCompositeFieldContainer[TokenTimestamp]
    reason: EndpointReason
    def __init__(self, segment_id: _Optional[int] = ..., text: _Optional[str] = ..., start_ms: _Optional[int] = ..., end_ms: _Optional[int] = ..., tokens: _Optional[_Iterable[_Union[TokenTimestamp, _Mapping]]] = ..., reason: _Optional[_Union[EndpointReason, str]] = ...) -> None: ...

class TokenTimestamp(_message.Message):
    __slots__ = ("text", "start_ms", "end_ms")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_MS_FIELD_NUMBER: _ClassVar[int]
    END_MS_FIELD_NUMBER: _ClassVar[int]
    text: str
    start_ms: int
    end_ms: int
    def __init__(self, text: _Optional[str] = ..., start_ms: _Optional[int] = ..., end_ms: _Optional[int] = ...) -> None: ...

class EndOfInputAck(_message.Message):
    __slots__ = ("finalized_segments", "audio_received_ms")
    FINALIZED_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_RECEIVED_MS_FIELD_NUMBER: _ClassVar[int]
    finalized_segments: int
    audio_received_ms: int
    def __init__(self, finalized_segments: _Optional[int] = ..., audio_received_ms: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "retryable", "segment_id")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    retryable: bool
    segment_id: int
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., retryable: _Optional[bool] = ..., segment_id: _Optional[int] = ...) -> None: ...

class StreamingRecognizeMuxRequest(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[MuxFrame]
    def __init__(self, frames: _Optional[_Iterable[_Union[MuxFrame, _Mapping]]] = ...) -> None: ...

class MuxFrame(_message.Message):
    __slots__ = ("session", "request", "half_close", "cancel")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    HALF_CLOSE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    session: int
    request: StreamingRecognizeRequest
    half_close: bool
    cancel: bool
    def __init__(self, session: _Optional[int] = ..., request: _Optional[_Union[StreamingRecognizeRequest, _Mapping]] = ..., half_close: _Optional[bool] = ..., cancel: _Optional[bool] = ...) -> None: ...

class StreamingRecognizeMuxResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[MuxEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[MuxEvent, _Mapping]]] = ...) -> None: ...

class MuxEvent(_message.Message):
    __slots__ = ("session", "response", "end", "flow")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    FLOW_FIELD_NUMBER: _ClassVar[int]
    session: int
    response: StreamingRecognizeResponse
    end: SessionEnd
    flow: FlowControl
    def __init__(self, session: _Optional[int] = ..., response: _Optional[_Union[StreamingRecognizeResponse, _Mapping]] = ..., end: _Optional[_Union[SessionEnd, _Mapping]] = ..., flow: _Optional[_Union[FlowControl, _Mapping]] = ...) -> None: ...

class SessionEnd(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class FlowControl(_message.Message):
    __slots__ = ("paused",)
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    paused: bool
    def __init__(self, paused: _Optional[bool] = ...) -> None: ...

class WatchLoadRequest(_message.Message):
    __slots__ = ("interval_ms",)
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    interval_ms: int
    def __init__(self, interval_ms: _Optional[int] = ...) -> None: ...

class LoadReport(_message.Message):
    __slots__ = ("worker_id", "active_streams", "max_streams", "queued_audio_seconds", "accepting", "engine", "recent_rtf", "front_id", "front_streams", "engine_stalled", "mux")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_STREAMS_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAMS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_AUDIO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTING_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    RECENT_RTF_FIELD_NUMBER: _ClassVar[int]
    FRONT_ID_FIELD_NUMBER: _ClassVar[int]
    FRONT_STREAMS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_STALLED_FIELD_NUMBER: _ClassVar[int]
    MUX_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    active_streams: int
    max_streams: int
    queued_audio_seconds: float
    accepting: bool
    engine: str
    recent_rtf: float
    front_id: int
    front_streams: _containers.RepeatedScalarFieldContainer[int]
    engine_stalled: bool
    mux: bool
    def __init__(self, worker_id: _Optional[str] = ..., active_streams: _Optional[int] = ..., max_streams: _Optional[int] = ..., queued_audio_seconds: _Optional[float] = ..., accepting: _Optional[bool] = ..., engine: _Optional[str] = ..., recent_rtf: _Optional[float] = ..., front_id: _Optional[int] = ..., front_streams: _Optional[_Iterable[int]] = ..., engine_stalled: _Optional[bool] = ..., mux: _Optional[bool] = ...) -> None: ...
