"""One StreamingRecognize call: audio in, ordered speech events and results out.

A Session owns everything per stream: the validated config, PCM conversion and
resampling, the VAD stream and endpointer, the segment buffer, the partial
schedule and the stable-delta state.

Audio in does no model work: `feed_audio` converts a chunk and queues its VAD
windows with the front's `VadBatcher`, which scores all streams' windows in one
call per tick and calls back `vad_scored`; segmentation, partials, finals and
the audio sent to the engine all happen there, once per tick for every stream
of the front (so a front sends the engine one message per tick, not one per
chunk). A control request first scores its stream's pending windows
(`VadBatcher.settle`), so it always sees all the audio before it. It talks to the engine side only through
its `StreamPort`: the audio of each open segment is appended as it arrives (the
engine keeps it), and decodes name a (segment, range), never carry samples.

At most one partial per stream (this module is the only place that rule lives):
a partial is submitted only when no partial of the stream's open segment is in
flight; one that falls due meanwhile is submitted, on the newest audio, when the
in-flight one resolves (a closed segment's partial stops counting: its result is
dropped, and the next segment's opening partial does not wait for it). A
partial not yet emitted is dropped when its segment closes (the final follows
and supersedes it) or when a newer partial is submitted (a slow client gets the
newest hypothesis, not a backlog). The engine's queue needs no
replace rule. Partials carry the segment's emitted (agreed) text as
`DecodeRequest.prefix`, so the decoder generates only the unstable tail.

Ordering. Everything the session produces goes through one ordered list of
output slots: ready responses (speech events, the end-of-input ack) and decode
slots whose response is rendered when the ticket resolves. `responses()` emits
slots strictly in order, so for every segment the client sees its partials,
then SPEECH_END, then exactly one final (or an in-band INFERENCE_FAILED error),
and an EndOfInputAck only after every final before it. A partial whose segment
closed before the partial's result was emitted is dropped, as is a partial
superseded by a newer one of the same stream.

Stable deltas (LocalAgreement-2). Partials re-decode the open segment (its last
`partial_window_ms` at most): the first as soon as the segment opens (the VAD
has already heard `min_speech_ms` of speech), the second half an interval later
(two hypotheses must agree before the first delta is visible), then every
`partial_interval_ms` of audio. The delta of a
partial is the part of the longest common prefix of the last two hypotheses
beyond what earlier deltas already emitted; an emitted delta is never revised
(if a hypothesis contradicts emitted text, no delta is emitted until the final,
whose text replaces everything). Once the segment is longer than the window the
hypothesis covers only the tail; it is aligned to the emitted text by their
overlap.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, field

import numpy as np

from asr.v1 import asr_pb2

from .audio import SUPPORTED_RATES, AudioBuffer, Upsampler2x, pcm16le_to_float
from .engine.base import MODEL_SAMPLE_RATE, DecodeOptions, DecodeRequest, DecodeResult
from .engine_core import request_fields
from .engine_link import StreamPort
from .errors import (
    AsrError,
    InferenceFailed,
    InternalError,
    InvalidAudio,
    InvalidConfig,
    Overloaded,
)
from .vad import WINDOW_SAMPLES, Endpointer, EventKind, VadBatcher, VadConfig, VadEvent, VadModel

#: Most hotword phrases per session, and characters per phrase (see asr.proto).
MAX_HOTWORDS = 256
MAX_HOTWORD_CHARS = 64

#: VAD windows a stream may have waiting to be scored before its input is paused
#: (2 s of audio: a client sending faster than real time waits for the VAD, not memory).
MAX_VAD_BACKLOG = 64

#: Placeholder audio of the request templates sessions send (the engine supplies the audio).
_NO_AUDIO = np.zeros(0, dtype=np.float32)

_REASONS = {
    "vad": asr_pb2.ENDPOINT_REASON_VAD,
    "max_length": asr_pb2.ENDPOINT_REASON_MAX_LENGTH,
    "end_of_input": asr_pb2.ENDPOINT_REASON_END_OF_INPUT,
    "commit": asr_pb2.ENDPOINT_REASON_COMMIT,
}


@dataclass(frozen=True)
class SessionOptions:
    """Worker-wide session settings (from the CLI)."""

    #: Partial cadence used when the config asks for 0, in ms of audio.
    partial_interval_ms: int = 600
    #: Allowed range of the partial cadence; requests are clamped into it.
    min_partial_interval_ms: int = 480
    max_partial_interval_ms: int = 1200
    #: Partials decode at most this much of the end of the open segment.
    partial_window_ms: int = 12_000
    #: Finals of one stream that may wait for inference before its input is
    #: paused (backpressure through gRPC flow control).
    max_outstanding_finals: int = 2
    #: Endpointing parameters.
    vad: VadConfig = field(default_factory=VadConfig)


@dataclass(frozen=True)
class SessionSettings:
    """A validated StreamingConfig."""

    session_id: str
    wav_name: str
    mode: int
    sample_rate_hz: int
    options: DecodeOptions
    partial_interval_ms: int
    resume_offset_ms: int
    resume_segments: int

    @property
    def partials(self) -> bool:
        """Whether this mode produces partials."""
        return self.mode != asr_pb2.RECOGNITION_MODE_OFFLINE


def validate_config(cfg: asr_pb2.StreamingConfig, options: SessionOptions) -> SessionSettings:
    """Check a StreamingConfig; raises InvalidConfig naming the violated rule."""
    mode = cfg.mode or asr_pb2.RECOGNITION_MODE_TWO_PASS
    if mode not in (
        asr_pb2.RECOGNITION_MODE_OFFLINE,
        asr_pb2.RECOGNITION_MODE_ONLINE,
        asr_pb2.RECOGNITION_MODE_TWO_PASS,
    ):
        raise InvalidConfig(f"config.mode {cfg.mode} is not a RecognitionMode")
    if cfg.sample_rate_hz not in SUPPORTED_RATES:
        raise InvalidConfig(
            f"config.sample_rate_hz must be 8000 or 16000, got {cfg.sample_rate_hz}"
        )
    if len(cfg.hotwords) > MAX_HOTWORDS:
        raise InvalidConfig(
            f"config.hotwords has {len(cfg.hotwords)} phrases; at most {MAX_HOTWORDS} allowed"
        )
    phrases: list[str] = []
    for hw in cfg.hotwords:
        phrase = hw.phrase.strip()
        if len(phrase) > MAX_HOTWORD_CHARS:
            raise InvalidConfig(
                f"config.hotwords phrase of {len(phrase)} characters; "
                f"at most {MAX_HOTWORD_CHARS} allowed"
            )
        if phrase and phrase not in phrases:
            phrases.append(phrase)
    # Passed through as the client gave it: the engine is the one place that maps codes
    # to its prompt's names and decides which languages the loaded model knows.
    language = cfg.language.strip() or None
    itn = cfg.itn if cfg.HasField("itn") else True
    interval = cfg.partial_interval_ms or options.partial_interval_ms
    interval = min(max(interval, options.min_partial_interval_ms), options.max_partial_interval_ms)
    return SessionSettings(
        session_id=cfg.session_id,
        wav_name=cfg.wav_name,
        mode=mode,
        sample_rate_hz=cfg.sample_rate_hz,
        options=DecodeOptions(hotwords=tuple(phrases), language=language, itn=itn),
        partial_interval_ms=interval,
        resume_offset_ms=cfg.resume.audio_offset_ms if cfg.HasField("resume") else 0,
        resume_segments=cfg.resume.finalized_segments if cfg.HasField("resume") else 0,
    )


@dataclass(eq=False)
class _Segment:
    id: int
    start: int  # 16 kHz samples since stream start
    last_partial_pos: int = 0
    sent: int = 0  # audio before this position is already with the engine
    partials: int = 0  # partials due so far
    closed: bool = False
    # Stable-delta state.
    emitted: str = ""
    prev_hyp: str | None = None


@dataclass(eq=False)
class _Slot:
    """One output position: a ready response or a pending decode."""

    response: asr_pb2.StreamingRecognizeResponse | None = None
    #: The decode outcome. A partial's is the session's own future (cancelled = dropped).
    future: asyncio.Future | None = None
    partial: bool = False
    segment: _Segment | None = None
    audio_end_ms: int = 0
    windowed: bool = False
    # Final only.
    start_ms: int = 0
    end_ms: int = 0
    reason: int = 0


class Session:
    """Per-stream state of one StreamingRecognize call.

    Args:
        key: unique key of this stream within its front (not the client's id).
        settings: the validated first config.
        port: this stream's decode port (EngineLink.open_stream).
        vad: the shared VAD weights, SileroVad or FsmnVad (a per-stream state is created here).
        options: worker-wide session settings.
        logger: logger or adapter carrying this session's id.
        vad_batcher: the front's VadBatcher; this session is one of its clients
            (audio in, `vad_scored` back once per tick).
    """

    def __init__(
        self,
        *,
        key: Hashable,
        settings: SessionSettings,
        port: StreamPort,
        vad: VadModel,
        options: SessionOptions,
        logger: logging.Logger | logging.LoggerAdapter,
        vad_batcher: VadBatcher,
    ) -> None:
        self.key = key
        self.settings = settings
        self._port = port
        self._opts = options
        self._log = logger
        self._batcher = vad_batcher
        #: This stream's VAD state (VadClient).
        self.vad_stream = vad.new_stream()
        self._ep = Endpointer(options.vad)
        self._buf = AudioBuffer()
        self._resampler: Upsampler2x | None = None
        self._offset_ms = settings.resume_offset_ms
        self._next_segment = settings.resume_segments
        self._finalized = settings.resume_segments
        self._segment: _Segment | None = None
        self._round_segments = 0
        self._received_ms = 0.0
        self._config_allowed = False
        self._window = options.partial_window_ms * MODEL_SAMPLE_RATE // 1000
        self._keep_silence = (
            (options.vad.speech_pad_ms + options.vad.min_speech_ms) * MODEL_SAMPLE_RATE // 1000
            + 4 * WINDOW_SAMPLES
        )
        self._finals_outstanding = 0
        # Set when a final resolves or the VAD catches up: the reader may read on.
        self._input_ok = asyncio.Event()
        self._slots: collections.deque[_Slot] = collections.deque()
        self._slot_ready = asyncio.Event()
        self._failure: asyncio.Future = asyncio.get_running_loop().create_future()
        self._ended = False
        # The segment whose partial is in flight (submitted, engine not done), and whether
        # another is due. A closed segment's partial no longer counts: its result is dropped
        # anyway, and the next segment's opening partial must not wait for it.
        self._partial_inflight: _Segment | None = None
        self._partial_due = False
        # The newest partial slot not yet emitted; dropped by a newer one or its segment's close.
        self._unemitted_partial: _Slot | None = None
        self.partials_refused = 0

    # -- input -------------------------------------------------------------

    def handle(self, req: asr_pb2.StreamingRecognizeRequest) -> None:
        """Process one request after the first (config) one.

        The caller reads the next request only when `input_paused` is false (or
        after `input_resumed()`): that is this stream's backpressure.
        """
        kind = req.WhichOneof("streaming_request")
        if kind == "audio":
            self.feed_audio(req.audio.pcm16le, req.audio.sample_rate_hz)
        elif kind == "control":
            t = req.control.type
            if t == asr_pb2.CONTROL_TYPE_END_OF_INPUT:
                self.end_of_input()
            elif t == asr_pb2.CONTROL_TYPE_COMMIT:
                self.commit()
            else:
                raise InvalidConfig(
                    f"control.type {t} is not END_OF_INPUT or COMMIT"
                )
        elif kind == "config":
            if not self._config_allowed:
                raise InvalidConfig(
                    "a config is allowed only as the first request or directly after "
                    "an END_OF_INPUT control"
                )
            self.reconfigure(validate_config(req.config, self._opts))
        else:
            raise InvalidConfig("request carries none of config, audio, control")

    def reconfigure(self, settings: SessionSettings) -> None:
        """Apply a config sent between rounds; the timeline and segment ids continue."""
        if settings.sample_rate_hz != self.settings.sample_rate_hz:
            self._resampler = None
        # Resume only applies to the call's first config.
        self.settings = SessionSettings(
            **{
                **settings.__dict__,
                "resume_offset_ms": self.settings.resume_offset_ms,
                "resume_segments": self.settings.resume_segments,
            }
        )
        self._config_allowed = False

    @property
    def input_paused(self) -> bool:
        """Whether this stream has too much work queued to read on: finals waiting for
        inference, or audio waiting for the VAD (gRPC flow control then slows its sender)."""
        return (
            self._finals_outstanding >= self._opts.max_outstanding_finals
            or self._batcher.backlog(self) > MAX_VAD_BACKLOG
        )

    async def input_resumed(self) -> None:
        """Wait until `input_paused` is false."""
        while self.input_paused:
            self._input_ok.clear()
            await self._input_ok.wait()

    def feed_audio(self, pcm: bytes, rate: int = 0) -> None:
        """Validate and convert one chunk of audio and queue its windows for the VAD.

        Segmentation happens when the batcher scores them (`vad_scored`), for all
        of the front's streams at once.
        """
        if rate and rate != self.settings.sample_rate_hz:
            raise InvalidAudio(
                f"audio.sample_rate_hz {rate} differs from config.sample_rate_hz "
                f"{self.settings.sample_rate_hz}"
            )
        x = pcm16le_to_float(pcm)
        self._config_allowed = False
        if len(x) == 0:
            return
        self._received_ms += len(x) * 1000.0 / self.settings.sample_rate_hz
        if self.settings.sample_rate_hz != MODEL_SAMPLE_RATE:
            if self._resampler is None:
                self._resampler = Upsampler2x()
            x = self._resampler.process(x)
        self._buf.append(x)
        self._batcher.audio_in(len(x))
        windows = self.vad_stream.take_windows(x)
        self._batcher.push(self, windows)

    def vad_scored(self, probs: np.ndarray) -> None:
        """The VAD scored this stream's next windows (VadClient; called by the batcher)."""
        if self._ended:
            return
        self._send_segment_audio()
        for p in probs:
            for ev in self._ep.push(float(p)):
                self._on_vad_event(ev)
            self._maybe_partial(self._ep.window_end)
        self._trim()
        if self._batcher.backlog(self) <= MAX_VAD_BACKLOG:
            self._input_ok.set()

    def vad_failed(self, exc: BaseException) -> None:
        """Scoring this stream's windows failed (VadClient): the call ends, others go on."""
        self._log.error("VAD failed", exc_info=exc)
        self.fail(InternalError(f"internal error: VAD failed: {type(exc).__name__}"))

    def _send_segment_audio(self) -> None:
        # The engine keeps each open segment's audio: send the samples received since the
        # last send once. Done per VAD tick, not per chunk, so that a front's audio for
        # all its streams crosses to the engine as one message per tick.
        seg = self._segment
        if seg is not None and seg.sent < self._buf.end:
            self._port.append(seg.id, seg.sent, self._buf.slice(seg.sent, self._buf.end))
            seg.sent = self._buf.end

    def _settle(self) -> None:
        """Score this stream's pending audio now: a control request must see all of it."""
        self._batcher.settle(self)
        self._send_segment_audio()

    def commit(self) -> None:
        """Force an endpoint: finalize the open segment, if any."""
        self._settle()
        self._config_allowed = False
        if self._segment is not None:
            pos = self._buf.end
            self._ep.close(pos, "commit")
            self._close_segment(pos, "commit")

    def end_of_input(self) -> None:
        """END_OF_INPUT: finalize everything of this round, then acknowledge."""
        self._finalize_round()
        if self._round_segments == 0:
            # Nothing was said this round: one empty final so no client hangs.
            seg = _Segment(id=self._next_segment, start=self._buf.end)
            self._next_segment += 1
            self._submit_final(seg, self._buf.end, self._buf.end, "end_of_input", empty=True)
        self._round_segments = 0
        ack = asr_pb2.EndOfInputAck(
            finalized_segments=self._finalized,
            audio_received_ms=self._offset_ms + round(self._received_ms),
        )
        self._emit(asr_pb2.StreamingRecognizeResponse(end_of_input=ack))
        self._config_allowed = True

    def finish(self) -> None:
        """The request stream ended: finalize pending audio and end the output."""
        if not self._ended:
            self._finalize_round()
            self._ended = True
            self._push(None)

    def _finalize_round(self) -> None:
        self._settle()
        pos = self._buf.end
        if self._segment is not None:
            end = self._ep.flush_end(pos)
            self._ep.close(end, "end_of_input")
            self._close_segment(end, "end_of_input")
        else:
            tentative = self._ep.tentative_start
            if tentative is not None:
                # Speech too short to have opened a segment (a stop mid-word).
                self._on_vad_event(self._ep.open(tentative))
                self._ep.close(pos, "end_of_input")
                self._close_segment(pos, "end_of_input")
        self._ep.reset_round(pos)

    # -- segmentation ------------------------------------------------------

    def _ms(self, pos: int) -> int:
        return self._offset_ms + pos * 1000 // MODEL_SAMPLE_RATE

    def _on_vad_event(self, ev: VadEvent) -> None:
        if ev.kind is EventKind.START:
            # The first partial is due at once (see the module docstring).
            due = ev.sample - self.settings.partial_interval_ms * MODEL_SAMPLE_RATE // 1000
            seg = _Segment(id=self._next_segment, start=ev.sample, last_partial_pos=due)
            self._next_segment += 1
            self._segment = seg
            # Everything from the (padded) start up to now; later chunks follow in feed_audio.
            seg.sent = self._buf.end
            self._port.append(seg.id, seg.start, self._buf.slice(seg.start, seg.sent))
            self._round_segments += 1
            self._emit_event(asr_pb2.SPEECH_EVENT_TYPE_START, seg.id, ev.sample)
        else:
            self._close_segment(ev.sample, ev.reason)

    def _close_segment(self, end: int, reason: str) -> None:
        seg = self._segment
        if seg is None:
            return
        self._segment = None
        seg.closed = True
        self._partial_due = False
        self._partial_inflight = None
        self._drop_unemitted_partial()
        self._emit_event(asr_pb2.SPEECH_EVENT_TYPE_END, seg.id, end)
        self._submit_final(seg, seg.start, end, reason)

    def _submit_final(
        self, seg: _Segment, start: int, end: int, reason: str, *, empty: bool = False
    ) -> None:
        # No wait here: the reader stops reading while max_outstanding_finals are queued
        # (`_input_ready`), so at most the VAD's pending windows add to them.
        self._finalized += 1
        slot = _Slot(
            segment=seg,
            start_ms=self._ms(start),
            end_ms=self._ms(end),
            reason=_REASONS[reason],
        )
        if empty or end <= max(start, seg.start):
            # Nothing to decode: the final is empty text.
            slot.response = self._final_response(slot, DecodeResult(text=""))
            self._push(slot)
            return  # (its few stored samples go with the stream's close)
        fut = self._port.submit(seg.id, start, end, self._fields("final"), last=True)
        slot.future = fut
        self._finals_outstanding += 1
        fut.add_done_callback(self._on_final_done)
        self._push(slot)

    def _on_final_done(self, _f: asyncio.Future) -> None:
        self._finals_outstanding -= 1
        self._input_ok.set()

    def _fields(self, kind: str, prefix: str = "") -> dict:
        # A DecodeRequest without its audio (the engine cuts that from its segment store);
        # built as the dataclass, so every field, present and future, crosses by name.
        return request_fields(
            DecodeRequest(audio=_NO_AUDIO, options=self.settings.options, kind=kind, prefix=prefix)
        )

    def _maybe_partial(self, pos: int) -> None:
        seg = self._segment
        if seg is None or not self.settings.partials:
            return
        interval = self.settings.partial_interval_ms * MODEL_SAMPLE_RATE // 1000
        if pos - seg.last_partial_pos < interval:
            return
        # The partial after the opening one comes half an interval later: two hypotheses
        # must agree before a first delta is visible, and they should agree early.
        seg.last_partial_pos = pos - interval // 2 if seg.partials == 0 else pos
        seg.partials += 1
        if self._partial_inflight is not None:
            self._partial_due = True  # submitted when the one in flight resolves
            return
        self._submit_partial(seg, pos)

    def _submit_partial(self, seg: _Segment, pos: int) -> None:
        start = max(seg.start, pos - self._window)
        if pos <= start:
            return
        windowed = start > seg.start
        # The agreed text is forced only when the decode covers the segment from its start.
        prefix = "" if windowed else seg.emitted
        engine_fut = self._port.submit(
            seg.id, start, pos, self._fields("partial", prefix), last=False
        )
        self._partial_inflight = seg
        self._partial_due = False
        self._drop_unemitted_partial()
        slot = _Slot(
            future=asyncio.get_running_loop().create_future(),
            partial=True,
            segment=seg,
            audio_end_ms=self._ms(pos),
            windowed=windowed,
        )
        self._unemitted_partial = slot
        engine_fut.add_done_callback(lambda f: self._on_partial_done(slot, f))
        self._push(slot)

    def _on_partial_done(self, slot: _Slot, engine_fut: asyncio.Future) -> None:
        if self._partial_inflight is slot.segment:
            self._partial_inflight = None
        assert slot.future is not None
        if not slot.future.done():
            if engine_fut.cancelled():
                slot.future.cancel()
            elif engine_fut.exception() is not None:
                if isinstance(engine_fut.exception(), Overloaded):
                    self.partials_refused += 1  # the final follows anyway
                slot.future.cancel()
            elif isinstance(engine_fut.result(), DecodeResult):
                slot.future.set_result(engine_fut.result())
            else:
                slot.future.cancel()  # not a hypothesis (e.g. a queue that dropped it)
        seg = self._segment
        if (
            self._partial_due
            and self._partial_inflight is None
            and seg is not None
            and not self._ended
        ):
            self._submit_partial(seg, self._ep.window_end)

    def _drop_unemitted_partial(self) -> None:
        slot = self._unemitted_partial
        if slot is not None:
            self._unemitted_partial = None
            assert slot.future is not None
            slot.future.cancel()

    def _trim(self) -> None:
        if self._segment is not None:
            keep = self._segment.start
        else:
            keep = self._ep.window_end - self._keep_silence
            tentative = self._ep.tentative_start
            if tentative is not None:
                keep = min(keep, tentative)
        self._buf.trim_before(keep)

    # -- output ------------------------------------------------------------

    def _emit_event(self, type_: int, segment_id: int, pos: int) -> None:
        ev = asr_pb2.SpeechEvent(type=type_, segment_id=segment_id, offset_ms=self._ms(pos))
        self._emit(asr_pb2.StreamingRecognizeResponse(speech_event=ev))

    def _emit(self, response: asr_pb2.StreamingRecognizeResponse) -> None:
        self._push(_Slot(response=response))

    def _push(self, slot: _Slot | None) -> None:
        self._slots.append(slot)  # type: ignore[arg-type]
        self._slot_ready.set()

    def fail(self, err: BaseException) -> None:
        """End the output with `err` as soon as possible (pending slots are dropped)."""
        if not self._failure.done():
            self._failure.set_result(err)
        self._slot_ready.set()

    def summary(self) -> dict[str, int]:
        """Counters for the end-of-stream log line (no text, no audio)."""
        return {
            "finalized_segments": self._finalized,
            "audio_received_ms": self._offset_ms + round(self._received_ms),
            "partials_refused": self.partials_refused,
        }

    def close(self) -> None:
        """Free the session: drop its queued inference work."""
        self._ended = True
        self._batcher.forget(self)
        self._port.close()

    async def responses(self) -> AsyncIterator[asr_pb2.StreamingRecognizeResponse]:
        """The ordered responses; raises the error given to `fail()`."""
        while True:
            if self._failure.done():
                raise self._failure.result()
            if not self._slots:
                self._slot_ready.clear()
                await self._slot_ready.wait()
                continue
            slot = self._slots.popleft()
            if slot is None:
                return
            if slot.response is not None:
                yield slot.response
                continue
            resp = await self._render(slot)
            if resp is not None:
                yield resp

    async def _render(self, slot: _Slot) -> asr_pb2.StreamingRecognizeResponse | None:
        assert slot.future is not None and slot.segment is not None
        fut = slot.future
        if not fut.done():
            await asyncio.wait({fut, self._failure}, return_when=asyncio.FIRST_COMPLETED)
        if self._failure.done():
            raise self._failure.result()
        if slot.partial:
            if self._unemitted_partial is slot:
                self._unemitted_partial = None
            if fut.cancelled():
                return None  # dropped (superseded, segment closed) or refused
            return self._partial_response(slot, fut.result())
        if fut.cancelled():
            return None
        exc = fut.exception()
        if isinstance(exc, Overloaded):
            raise exc  # a final the engine could not queue ends the call (retryable)
        if exc is not None:
            if not isinstance(exc, AsrError):
                exc = InferenceFailed(f"inference failed: {type(exc).__name__}")
            err = type(exc)(exc.message, segment_id=slot.segment.id)
            self._log.warning(
                "segment decode failed", extra={"segment_id": slot.segment.id, "error": err.message}
            )
            return asr_pb2.StreamingRecognizeResponse(error=err.to_proto())
        return self._final_response(slot, fut.result())

    def _final_response(
        self, slot: _Slot, result: DecodeResult
    ) -> asr_pb2.StreamingRecognizeResponse:
        assert slot.segment is not None
        tokens = [
            asr_pb2.TokenTimestamp(
                text=t.text, start_ms=slot.start_ms + t.start_ms, end_ms=slot.start_ms + t.end_ms
            )
            for t in result.tokens
        ]
        final = asr_pb2.FinalResult(
            segment_id=slot.segment.id,
            text=result.text,
            start_ms=slot.start_ms,
            end_ms=slot.end_ms,
            tokens=tokens,
            reason=slot.reason,
        )
        return asr_pb2.StreamingRecognizeResponse(final=final)

    def _partial_response(
        self, slot: _Slot, result: DecodeResult
    ) -> asr_pb2.StreamingRecognizeResponse:
        seg = slot.segment
        assert seg is not None
        hyp: str | None = result.text
        if slot.windowed:
            hyp = align_tail(seg.emitted, result.text)
        delta = ""
        if hyp is not None:
            if seg.prev_hyp is not None:
                delta = agreed_delta(seg.emitted, seg.prev_hyp, hyp)
                seg.emitted += delta
            seg.prev_hyp = hyp
            text = hyp  # the full newest hypothesis; it may revise, the deltas never do
        else:
            text = seg.emitted
        stability = min(1.0, len(seg.emitted) / len(text)) if text else 0.0
        partial = asr_pb2.PartialResult(
            segment_id=seg.id,
            text=text,
            delta=delta,
            stability=stability,
            audio_end_ms=slot.audio_end_ms,
        )
        return asr_pb2.StreamingRecognizeResponse(partial=partial)


def agreed_delta(emitted: str, prev_hyp: str, hyp: str) -> str:
    """LocalAgreement-2: new stable text given two consecutive hypotheses.

    Returns the part of the common prefix of `prev_hyp` and `hyp` beyond
    `emitted`, or "" when the hypotheses contradict already emitted text.
    """
    common = os.path.commonprefix([prev_hyp, hyp])
    if len(common) <= len(emitted) or not common.startswith(emitted):
        return ""
    return common[len(emitted) :]


def align_tail(emitted: str, tail_hyp: str) -> str | None:
    """Map a hypothesis of the segment's tail onto the whole segment.

    Finds the longest suffix of `emitted` (2..16 characters) inside `tail_hyp`
    and returns `emitted` + the text after it; None when they do not overlap.
    """
    if not emitted:
        return None
    for k in range(min(len(emitted), 16), 1, -1):
        idx = tail_hyp.rfind(emitted[-k:])
        if idx >= 0:
            return emitted + tail_hyp[idx + k :]
    return None
