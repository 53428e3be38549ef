"""Fun-ASR-Nano request inputs computed once: fbank frames per open segment, prompt ids per prompt.

FunASRNano's own data pipeline (`generate_chatml` + `data_template` + `data_load_speech`)
tokenizes the chat prompt and runs kaldi fbank (+ LFR + CMVN) over the whole request audio
on every call. The worker calls it for every partial, and partials re-decode the open
segment every ~600 ms of audio, so the same seconds of audio went through fbank again and
again on the engine's one batch thread (≈ 1.5 ms fixed + 1.6 ms per audio second per request,
measured in docs/benchmarks.md). Two caches remove the repetition and give the SAME numbers:

- `SegmentFeatures`: kaldi fbank frames are local (frame i = samples [160 i, 160 i + 400),
  snip_edges, no dither), so the raw frames of a segment's audio already seen are kept and a
  request runs FunASR's own fbank only over the samples of its new frames. LFR (7/6) and CMVN
  are then applied per request by FunASR's own `apply_lfr` / `apply_cmvn` over the cached raw
  frames (LFR pads at the range's end, so its output is not cacheable as such; it is a strided
  copy, ≈ 0.1 ms for 12 s). The result is bit-identical to `data_load_speech` (tested).
- `PromptTokens`: the token ids before and after the speech placeholder depend only on the
  prompt (hotwords, language, itn) and on the forced prefix; they are built exactly as
  `data_load_speech` builds them and cached per prompt and per prefix (tested against it).

Memory is bounded: at most `max_frames` raw frames (80 float32 each, 32 KiB per audio second)
are held over all segments; the least recently used segment goes first. A segment's frames
are freed when its final is prepared (its last use) or when the engine is told the segment
or its stream is gone; those notices may come from any thread and are applied on the batch
thread before its next request, so the cache itself needs no lock.
"""

from __future__ import annotations

import collections
import logging
import re
from collections.abc import Hashable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: The speech placeholder FunASRNano's data pipeline splits a chat turn at.
_SPEECH = re.compile(r"(<\|startofspeech\|>.*?<\|endofspeech\|>)")


class SegmentFeatures:
    """LFR + CMVN fbank features of requests, with raw fbank frames cached per open segment.

    Args:
        frontend: the model's FunASR WavFrontend (its fbank settings, LFR and CMVN).
        max_frames: most raw fbank frames held over all segments (100 per audio second).
    """

    def __init__(self, frontend: Any, *, max_frames: int) -> None:
        self.frontend = frontend
        self.max_frames = max(0, int(max_frames))
        self.shift = int(frontend.fs * frontend.frame_shift / 1000)  # 160 samples
        self.length = int(frontend.fs * frontend.frame_length / 1000)  # 400 samples
        #: Whether frames can be cached at all: only FunASR's WavFrontend without dither
        #: (dither adds fresh noise per call) and with snip_edges (frames do not depend on
        #: the audio's length) computes frames that stay the same as the audio grows.
        self.cacheable = (
            type(frontend).__name__ == "WavFrontend"
            and not getattr(frontend, "dither", 1.0)
            and bool(getattr(frontend, "snip_edges", False))
            and self.max_frames > 0
            and self._frames_are_local()
        )
        self._entries: collections.OrderedDict[tuple[Hashable, int], _Frames] = collections.OrderedDict()
        self._held = 0
        # (stream, segment or None) notices from any thread; deque appends/pops are atomic.
        self._forget: collections.deque[tuple[Hashable, int | None]] = collections.deque()

    # ------------------------------------------------------------------ any thread

    def forget_segment(self, stream: Hashable, segment: int) -> None:
        """The segment is gone; its frames are freed before the next request (any thread)."""
        self._forget.append((stream, segment))

    def forget_stream(self, stream: Hashable) -> None:
        """The stream is gone; every segment of it is freed before the next request (any thread)."""
        self._forget.append((stream, None))

    # ------------------------------------------------------------------ batch thread

    @property
    def held_frames(self) -> int:
        """Raw frames held now, over all segments."""
        self._apply_forgets()
        return self._held

    def __len__(self) -> int:
        self._apply_forgets()
        return len(self._entries)

    def drop(self, stream: Hashable, segment: int) -> None:
        """Free the segment's frames now (batch thread: after its final was prepared)."""
        self._apply_forgets()
        self._drop((stream, segment))

    def features(self, audio: np.ndarray, key: tuple[Hashable, int] | None = None, offset: int = 0) -> Any:
        """[T, n_mels x lfr_m] float32 features of `audio`, as FunASR's data_load_speech makes them.

        `key` (stream, segment) says `audio` is its segment's audio from sample `offset` on:
        frames cached for that segment are reused and new ones added. A window that starts
        on the frame grid (offset a multiple of `shift`) at or before the cached frames' end
        reuses them too: its frame j is the segment's frame offset / shift + j. Without a
        key, off the grid, or for audio shorter than one frame, the features are computed
        afresh (and nothing is cached).
        """
        import torch
        from funasr.frontends.wav_frontend import apply_cmvn, apply_lfr
        from funasr.utils.load_utils import extract_fbank

        self._apply_forgets()
        entry = None
        first = offset // self.shift  # the segment's frame that is the audio's frame 0
        if key is not None and self.cacheable and audio.size >= self.length and offset % self.shift == 0:
            entry = self._entries.get(key)
            if entry is None and offset == 0:
                entry = self._entries[key] = _Frames(self.frontend.n_mels)
            if entry is not None and entry.count < first:
                entry = None  # a gap before the window (frames evicted): its samples are not here
        if entry is None:
            # Exactly data_load_speech's call.
            speech, _ = extract_fbank(torch.from_numpy(audio), frontend=self.frontend, is_final=True)
            return speech[0]
        self._entries.move_to_end(key)
        n = first + 1 + (audio.size - self.length) // self.shift  # the segment's frames up to the audio's end
        have = entry.count
        if n > have:
            # The samples of frames have..n-1 only; segment frame i starts at sample shift * i,
            # i.e. at shift * i - offset in `audio`.
            new = self._fbank(audio[have * self.shift - offset : (n - 1) * self.shift + self.length - offset])
            entry.extend(new)
            self._held += new.shape[0]
        frames = entry.frames(first, n)
        fe = self.frontend
        # WavFrontend.forward's steps; both branches copy, so CMVN (in place) never
        # touches the cached frames.
        if fe.lfr_m != 1 or fe.lfr_n != 1:
            feats = apply_lfr(frames, fe.lfr_m, fe.lfr_n)
        else:
            feats = frames.clone()
        if self.frontend.cmvn is not None:
            feats = apply_cmvn(feats, self.frontend.cmvn)
        self._evict()
        return feats

    def _fbank(self, samples: np.ndarray) -> Any:
        """Raw fbank frames of `samples` with WavFrontend.forward's own arguments and function."""
        import torch
        from funasr.utils import fbank as kaldi

        fe = self.frontend
        waveform = torch.from_numpy(np.ascontiguousarray(samples))
        if fe.upsacle_samples:
            waveform = waveform * (1 << 15)
        return kaldi.fbank(
            waveform.unsqueeze(0),
            num_mel_bins=fe.n_mels,
            frame_length=fe.frame_length,
            frame_shift=fe.frame_shift,
            dither=fe.dither,
            energy_floor=0.0,
            window_type=fe.window,
            sample_frequency=fe.fs,
            snip_edges=fe.snip_edges,
        )

    def _frames_are_local(self) -> bool:
        """Whether fbank over pieces gives the very frames fbank over the whole gives.

        FunASR's fbank runs kaldi-native-fbank (what requirements install) or torchaudio when
        that is installed; the cache is exact only if frames do not depend on how much audio
        one call sees, so this is checked once on a probe signal, bit for bit.
        """
        import torch

        rng = np.random.default_rng(0)
        probe = (0.1 * rng.standard_normal(self.length + 57 * self.shift + 77)).astype(np.float32)
        whole = self._fbank(probe)
        n = whole.shape[0]
        parts, have = [], 0
        for end in (1, 2, 19, n):  # one frame, one more, a few, the rest
            parts.append(self._fbank(probe[have * self.shift : (end - 1) * self.shift + self.length]))
            have = end
        if torch.equal(torch.cat(parts), whole):
            return True
        log.warning("fbank frames depend on the length of the audio given to fbank here; "
                    "the per-segment feature cache is off (every request computes its features afresh)")
        return False

    def _apply_forgets(self) -> None:
        while self._forget:
            stream, segment = self._forget.popleft()
            if segment is not None:
                self._drop((stream, segment))
            else:
                for key in [k for k in self._entries if k[0] == stream]:
                    self._drop(key)

    def _drop(self, key: tuple[Hashable, int]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._held -= entry.count

    def _evict(self) -> None:
        # Least recently used first; the entry just used is the most recent, so it stays
        # unless it alone exceeds the bound.
        while self._held > self.max_frames and self._entries:
            self._drop(next(iter(self._entries)))


class _Frames:
    """The raw fbank frames of one segment, in a buffer that grows by doubling."""

    __slots__ = ("_buf", "count")

    def __init__(self, dim: int) -> None:
        import torch

        self._buf = torch.empty(0, dim, dtype=torch.float32)
        self.count = 0

    def extend(self, new: Any) -> None:
        import torch

        need = self.count + new.shape[0]
        if need > self._buf.shape[0]:
            size = max(need, 2 * self._buf.shape[0], 256)
            grown = torch.empty(size, self._buf.shape[1], dtype=torch.float32)
            grown[: self.count] = self._buf[: self.count]
            self._buf = grown
        self._buf[self.count : need] = new
        self.count = need

    def frames(self, first: int, end: int) -> Any:
        return self._buf[first:end]


class PromptTokens:
    """The token ids around the speech placeholder, built as `data_load_speech` builds them.

    `data_load_speech` tokenizes the text before `<|startofspeech|>...<|endofspeech|>` and the
    text after it (where a forced prefix, `prev_text`, goes) separately; the first depends on
    the prompt alone, the second on the prefix alone. Both are cached (LRU, `max_entries` each).

    Args:
        model: the FunASRNano model (its `generate_chatml` / `data_template` give the chat turn).
        tokenizer: the model's tokenizer.
        data_kwargs: the keyword arguments the engine passes to `data_load_speech`.
        max_entries: most prompts, and most prefixes, cached.
    """

    def __init__(
        self, model: Any, tokenizer: Any, data_kwargs: dict[str, Any], *, max_entries: int = 1024
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        conf = data_kwargs.get("dataset_conf") or {}
        self._do_think = conf.get("do_think", True)
        self._sys_prompt = conf.get("sys_prompt", True)
        self._assistant_input = bool(data_kwargs.get("infer_with_assistant_input", False))
        self.max_entries = max_entries
        self._before: collections.OrderedDict[str, tuple[list[int], str]] = collections.OrderedDict()
        self._after: collections.OrderedDict[tuple[str, str], list[int]] = collections.OrderedDict()
        self._counts: collections.OrderedDict[str, int] = collections.OrderedDict()

    def count(self, text: str) -> int:
        """Tokens of `text` on its own (a forced prefix's length, for the token budget)."""
        n = self._counts.get(text)
        if n is None:
            n = self._counts[text] = len(self.tokenizer.encode(text)) if text else 0
            _trim(self._counts, self.max_entries)
        self._counts.move_to_end(text)
        return n

    def ids(self, prompt: str, prefix: str) -> tuple[list[int], list[int]]:
        """(ids before the speech frames, ids after them) for a user prompt and forced prefix."""
        before = self._before.get(prompt)
        if before is None:
            before = self._before[prompt] = self._split(prompt)
            _trim(self._before, self.max_entries)
        self._before.move_to_end(prompt)
        ids, tail = before
        key = (tail, prefix)
        after = self._after.get(key)
        if after is None:
            after = self._after[key] = self._encode(tail + prefix)
            _trim(self._after, self.max_entries)
        self._after.move_to_end(key)
        return ids, after

    def _split(self, prompt: str) -> tuple[list[int], str]:
        """Ids of the text before the speech placeholder, and the text after it (no prefix)."""
        import torch

        contents = self.model.data_template(self.model.generate_chatml(prompt, torch.zeros(0)))
        system, user = contents["system"][0], contents["user"][0]
        if isinstance(user, (list, tuple)):
            user = user[0]
        # data_load_speech's first turn, word for word.
        if self._assistant_input:
            source = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}"
            if not self._sys_prompt:
                source = f"<|im_start|>user\n{user}"
        else:
            source = (
                f"<|im_start|>system\n{system}<|im_end|>\n"
                f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
            )
            if not self._sys_prompt:
                source = f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        if not self._do_think:
            source += "<think>\n\n</think>\n\n"
        pieces = _SPEECH.split(source)
        speech = [i for i, p in enumerate(pieces) if p.startswith("<|startofspeech|>")]
        if len(speech) != 1:
            raise ValueError(f"expected one speech placeholder in the chat turn, found {len(speech)}")
        at = speech[0]
        ids: list[int] = []
        for piece in pieces[:at]:
            ids += self._encode(piece)
        return ids, "".join(pieces[at + 1 :])

    def _encode(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer.encode(text)]


def _trim(cache: collections.OrderedDict, size: int) -> None:
    while len(cache) > size:
        cache.popitem(last=False)


def fake_token_len(model: Any, frames: int) -> int:
    """Adaptor frames FunASRNano reserves for `frames` LFR frames (data_load_speech's formula)."""
    if getattr(model, "use_low_frame_rate", False):
        olens = 1 + (frames - 3 + 2 * 1) // 2
        olens = 1 + (olens - 3 + 2 * 1) // 2
        return (olens - 1) // 2 + 1
    return frames
