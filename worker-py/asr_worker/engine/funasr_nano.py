"""The `funasr-nano` engine: Fun-ASR-Nano-2512 through FunASR's own model code.

Loading (`asr_worker.models.loader.load_engine`) goes through FunASR's
`AutoModel.build_model` (registry, tokenizer, frontend, FunASRNano, `load_pretrained_model`)
with every path pointing into the local model directory, so nothing consults a model hub.
Decoding reuses FunASRNano's own pieces:
`get_prompt` / `generate_chatml` / `data_template` / `data_load_speech` define each request's
prompt ids and fbank features (engine/nano_inputs.py computes the same ids and features with
FunASR's own functions, once per prompt and once per open segment's audio, instead of the
whole request each time), `encode` + `audio_adaptor` run once over the padded batch,
and the adaptor frames are spliced into the prompt embeddings the way `inference_prepare`
does. Unlike FunASR's own `inference`, every request in a batch keeps its own prompt
(hotwords, language, itn).

The Qwen3 decoder then runs greedy at iteration level (engine/step_decoder.py, which says
why no library does it here): requests join the running batch between decoder steps and
leave it when they end. A request decoded alone yields the token ids FunASR's own
`AutoModel.generate` yields (tests/worker/test_parity.py proves it on random weights).
Partials force their agreed prefix through FunASR's own `prev_text` mechanism, so only
the unstable tail is generated; finals always decode the whole segment. Every request of
an open segment is prefilled with the segment's previous answer as a draft
(engine/drafts.py), which the decoder verifies in the prefill: the output stays the greedy
output, but only the tokens the previous answer did not have cost a decoder step each.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asr_worker.engine.base import (
    MODEL_SAMPLE_RATE,
    DecodeOptions,
    DecodeRequest,
    DecodeResult,
    DecodeWork,
    SegmentRef,
    TokenTime,
)
from asr_worker.engine.drafts import Answer, SegmentAnswers
from asr_worker.engine.nano_inputs import PromptTokens, SegmentFeatures, fake_token_len
from asr_worker.engine.step_decoder import StepDecoder

log = logging.getLogger(__name__)

#: Default cap on new tokens of a final (FunASR's own default max_length is 512).
DEFAULT_MAX_NEW_TOKENS = 512
#: Default cap on new tokens of a partial: a hypothesis of a window of the open segment.
DEFAULT_PARTIAL_MAX_NEW_TOKENS = 96
#: Real speech yields about 4-6 text tokens per second; beyond this rate the decoder is
#: looping, so a request's budget is also capped at this rate (plus a constant).
DEFAULT_MAX_TOKENS_PER_SECOND = 15.0
_TOKEN_BUDGET_SLACK = 8
#: Default bound on the audio whose fbank frames the engine keeps for open segments, in seconds
#: over all segments (32 KiB per second: 3600 s = 112 MiB; 400 streams x 9 s open on average).
DEFAULT_FEATURE_CACHE_SECONDS = 3600.0
#: Shortest audio decoded; shorter non-empty audio is zero-padded (kaldi fbank needs a frame).
_MIN_SAMPLES = MODEL_SAMPLE_RATE // 10

#: Language codes and names -> the language names Fun-ASR-Nano's prompt uses
#: ("语音转写成中文"). None / "auto" lets the model decide.
LANGUAGE_NAMES: dict[str, str | None] = {
    "auto": None,
    "": None,
    "zh": "中文",
    "zh-cn": "中文",
    "cn": "中文",
    "cmn": "中文",
    "chinese": "中文",
    "mandarin": "中文",
    "en": "英文",
    "english": "英文",
    "ja": "日文",
    "jp": "日文",
    "japanese": "日文",
    "yue": "粤语",
    "cantonese": "粤语",
    "ko": "韩文",
    "korean": "韩文",
}

#: The prompt names of the languages Fun-ASR-Nano-2512 was trained on.
NANO_LANGUAGES = frozenset({"中文", "英文", "日文"})


def language_name(language: str | None) -> str | None:
    """The prompt language name for a code ("zh") or name ("中文"); None lets the model decide.

    Names that are not codes pass through unchanged, so any language name the checkpoint
    knows (Fun-ASR-MLT-Nano knows 31) can be given directly. Whether the model knows it
    is the engine's call (FunAsrNanoEngine.language).
    """
    if language is None:
        return None
    key = clean_prompt_text(language)
    mapped = LANGUAGE_NAMES.get(key.lower(), key)
    return mapped or None


#: Chat-template markup: <|im_end|>, <|startofspeech|>, ...
_MARKUP = re.compile(r"<\|.*?\|>|<\||\|>")


def clean_prompt_text(text: str) -> str:
    """Client text made safe to put in the prompt: chat-template markup removed, trimmed.

    FunASRNano's data pipeline treats `<|startofspeech|>!X<|endofspeech|>` as "load audio
    from X" (a path or a URL) and `<|im_end|>` as the end of the user turn, so a hotword
    must never carry such markup into the prompt.
    """
    previous = None
    while previous != text:  # removal can join fragments into new markup
        previous, text = text, _MARKUP.sub("", text)
    return " ".join(text.split())


def _clean_prefix(prefix: str) -> str:
    """A forced prefix without chat markup (FunASR would parse it), whitespace kept."""
    previous = None
    while previous != prefix:
        previous, prefix = prefix, _MARKUP.sub("", prefix)
    return prefix


def _token_ids(tokenizer: Any, token: str) -> set[int]:
    """{id} of a special token the tokenizer knows, else {}."""
    try:
        ids = tokenizer.convert_tokens_to_ids([token])
    except Exception:
        return set()
    unk = getattr(tokenizer, "unk_token_id", None)
    return {int(i) for i in ids if i is not None and i != unk}


def _is_multilingual(model_dir: Path | None) -> bool:
    """Fun-ASR-MLT-Nano: its directory or configuration.json names it (the hub id has "MLT")."""
    if model_dir is None:
        return False
    if "mlt" in Path(model_dir).name.lower():
        return True
    try:
        meta = json.loads((Path(model_dir) / "configuration.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return "mlt" in json.dumps(meta).lower()


@dataclass
class Prepared:
    """One request turned into model inputs, equal to what FunASRNano's data_load_speech makes."""

    source_ids: list[int]
    fbank: Any  # torch.Tensor [T, 560]
    fbank_beg: int
    fake_token_len: int
    budget: int
    seconds: float
    kind: str
    prompt: str
    #: The forced prefix (partials) FunASR's `prev_text` puts after the assistant tag.
    prefix: str
    #: The forced prefix's token ids (the answer's first ids).
    forced_ids: list[int] = field(default_factory=list)
    #: Draft token ids to verify in the prefill (the segment's previous answer beyond the prefix).
    draft: list[int] = field(default_factory=list)
    #: (stream, segment) and the audio's offset in it, or None without a segment.
    segment: tuple[Hashable, int] | None = None
    offset: int = 0


@dataclass
class _Running:
    """A request being decoded: its inputs, and encoder frames when a final needs times."""

    handle: int
    prepared: Prepared
    encoder_out: Any = None  # [1, T, D] for finals with CTC timestamps
    encoder_len: Any = None


class FunAsrNanoEngine:
    """Fun-ASR-Nano behind the Engine and SteppingEngine protocols (see engine/base.py).

    Decoding is iteration-level (engine/step_decoder.py): `add_requests` encodes and
    prefills, `step` advances every running request by one token and returns those that
    finished; `decode_batch` is the two run to completion. Partials with a `prefix` force
    it into the answer (FunASR's own `prev_text`), so only the tail after it is generated.
    Work counters (`work`, a DecodeWork) count tokens and encoder audio by request kind.
    """

    name = "funasr-nano"

    def __init__(
        self,
        model: Any,
        kwargs: dict[str, Any],
        *,
        device: str,
        dtype: str,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        partial_max_new_tokens: int = DEFAULT_PARTIAL_MAX_NEW_TOKENS,
        max_tokens_per_second: float = DEFAULT_MAX_TOKENS_PER_SECOND,
        forced_tokens_per_second: float | None = None,
        model_dir: Path | None = None,
        multilingual: bool | None = None,
        feature_cache_seconds: float = DEFAULT_FEATURE_CACHE_SECONDS,
    ) -> None:
        import torch

        self.model = model
        self.kwargs = kwargs
        self.tokenizer = kwargs["tokenizer"]
        self.frontend = kwargs["frontend"]
        # What FunASRNano's data pipeline reads from its kwargs (dataset_conf, ...).
        self._data_kwargs = {
            k: v
            for k, v in kwargs.items()
            if k not in ("tokenizer", "frontend", "meta_data", "prev_text")
        }
        #: Whether request inputs come from the per-segment feature cache and the prompt-id
        #: cache (True), or from FunASR's data_load_speech over the whole request every time
        #: (False: the reference path; benchmarks and tests compare the two).
        self.input_cache = True
        #: Raw fbank frames of open segments (see engine/nano_inputs.py), at most
        #: `feature_cache_seconds` of audio over all segments.
        self.features = SegmentFeatures(
            self.frontend,
            max_frames=int(feature_cache_seconds * 1000 / self.frontend.frame_shift),
        )
        #: Prompt token ids per prompt and per forced prefix.
        self.prompt_tokens = PromptTokens(model, self.tokenizer, self._data_kwargs)
        #: Whether requests of an open segment are prefilled with its previous answer as a
        #: draft (True), or decode without one (False: benchmarks and tests compare the two;
        #: the output is the same).
        self.use_drafts = True
        #: The last answer per open segment (the next request's draft).
        self.answers = SegmentAnswers()
        self.device = device
        self.dtype = dtype
        self.torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
        self.max_new_tokens = int(max_new_tokens)
        self.partial_max_new_tokens = int(partial_max_new_tokens)
        self.max_tokens_per_second = float(max_tokens_per_second or 0.0)
        self.forced_tokens_per_second = forced_tokens_per_second
        self.model_dir = model_dir
        #: Whether the checkpoint is Fun-ASR-MLT-Nano (31 languages) rather than Nano-2512
        #: (Chinese, English, Japanese); decides which language requests reach the prompt.
        self.multilingual = _is_multilingual(model_dir) if multilingual is None else multilingual
        llm_cfg = model.llm.config
        eos = model.llm.generation_config.eos_token_id
        #: Token ids that end a decode: the EOS ids FunASR's own `llm.generate` stops at
        #: (the generation config's), and always <|im_end|>, the end of the assistant turn,
        #: even where a config names another EOS. Not pad/<|endoftext|>: FunASR does not
        #: stop there either, and finals must decode as FunASR does.
        self.eos_ids: list[int] = sorted(
            {i for i in (eos if isinstance(eos, list) else [eos]) if i is not None}
            | _token_ids(self.tokenizer, "<|im_end|>")
        )
        pad = llm_cfg.pad_token_id
        self.pad_id: int = pad if pad is not None else self.eos_ids[0]
        #: The iteration-level decoder over the Qwen3 part.
        self.decoder = StepDecoder(
            model.llm, stop_ids=self.eos_ids, dtype=self.torch_dtype, device=torch.device(device)
        )
        #: Cumulative work by request kind (tokens generated/prefilled, encoder seconds).
        self.work = DecodeWork()
        self._running: dict[int, _Running] = {}  # by decoder handle
        self._ready: list[tuple[int, DecodeResult]] = []  # finished before any decoder step
        self._handles = itertools.count()
        self._warned_languages: set[str] = set()
        #: Prompt ids (speech frames as id 0) of each item of the last decode_batch, for inspection.
        self.last_input_ids: list[list[int]] = []
        #: Prompt text of each item of the last decode_batch.
        self.last_prompts: list[str] = []
        #: New token ids of each item of the last decode_batch (after budget and EOS cuts).
        self.last_generated: list[list[int]] = []
        self._last: dict[int, tuple[list[int], str, list[int]]] = {}
        self.timestamps = self._timestamps_available()

    # ------------------------------------------------------------------ prompts

    def language(self, language: str | None) -> str | None:
        """The prompt language name for a request's language, or None for auto.

        The one place languages are normalised: codes map to the model's names, and a
        language Nano-2512 was not trained on (anything but Chinese, English, Japanese)
        falls back to auto with one warning, unless the model is an MLT model.
        """
        name = language_name(language)
        if name is None or self.multilingual or name in NANO_LANGUAGES:
            return name
        if name not in self._warned_languages:
            self._warned_languages.add(name)
            log.warning(
                "language %r is not one of Fun-ASR-Nano-2512's (Chinese, English, Japanese); "
                "decoding with automatic language detection (Fun-ASR-MLT-Nano knows more)",
                language,
            )
        return None

    def prompt(self, options: DecodeOptions) -> str:
        """The user prompt FunASRNano builds for these options (its own get_prompt)."""
        hotwords = [c for c in (clean_prompt_text(h) for h in options.hotwords if h) if c]
        return self.model.get_prompt(hotwords, self.language(options.language), options.itn)

    def token_budget(self, seconds: float, kind: str, prefix_tokens: int = 0) -> int:
        """Most new tokens for a request of `seconds` of audio whose prefix has that many tokens."""
        limit = self.partial_max_new_tokens if kind == "partial" else self.max_new_tokens
        if self.forced_tokens_per_second:
            budget = math.ceil(seconds * self.forced_tokens_per_second) - prefix_tokens
        elif self.max_tokens_per_second > 0:
            budget = math.ceil(seconds * self.max_tokens_per_second) + _TOKEN_BUDGET_SLACK - prefix_tokens
        else:
            budget = limit
        return max(1, min(limit, budget))

    # ------------------------------------------------------------------ Engine

    def warmup(self) -> None:
        """A batched decode of two requests with different options, final and partial, then a
        partial and the final of one segment (the final verifies the partial's answer as a draft)."""
        rng = np.random.default_rng(0)
        audio = (rng.standard_normal(MODEL_SAMPLE_RATE) * 0.01).astype(np.float32)
        self.decode_batch(
            [
                DecodeRequest(audio, DecodeOptions(hotwords=("热词",), language="中文"), "final"),
                DecodeRequest(audio[: MODEL_SAMPLE_RATE // 2], DecodeOptions(itn=False), "partial"),
            ]
        )
        segment = SegmentRef(object(), 0)  # a stream key no real stream has
        self.decode_batch([DecodeRequest(audio[: MODEL_SAMPLE_RATE // 2], DecodeOptions(), "partial",
                                         segment=segment)])
        self.decode_batch([DecodeRequest(audio, DecodeOptions(), "final", segment=segment)])
        self.work = DecodeWork()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(torch.device(self.device))

    @property
    def segment_align(self) -> int:
        """Windowed requests starting a multiple of this many samples (one fbank hop, 160)
        after their segment's start reuse the segment's cached frames."""
        return self.features.shift

    def forget_segment(self, stream: Hashable, segment: int) -> None:
        """The segment will not be decoded again: free its cached frames and answer (any thread)."""
        self.features.forget_segment(stream, segment)
        self.answers.forget_segment(stream, segment)

    def forget_stream(self, stream: Hashable) -> None:
        """The stream ended: free the cached frames and answers of all its segments (any thread)."""
        self.features.forget_stream(stream)
        self.answers.forget_stream(stream)

    def decode_batch(self, requests: Sequence[DecodeRequest]) -> list[DecodeResult]:
        """Decode requests to completion (add_requests, then step until all are done)."""
        self._last = {}
        handles = self.add_requests(requests)
        wanted = set(handles)
        done: dict[int, DecodeResult] = {}
        others: list[tuple[int, DecodeResult]] = []  # requests added by add_requests
        while wanted - done.keys():
            finished = self.step()
            done.update((h, r) for h, r in finished if h in wanted)
            others.extend((h, r) for h, r in finished if h not in wanted)
            if not finished and not self.active:
                raise RuntimeError("decoder stopped with requests unfinished")
        self._ready.extend(others)  # the next step() returns them
        self.last_input_ids = [self._last.get(h, ([], "", []))[0] for h in handles]
        self.last_prompts = [self._last.get(h, ([], "", []))[1] for h in handles]
        self.last_generated = [self._last.get(h, ([], "", []))[2] for h in handles]
        return [done[h] for h in handles]

    @property
    def active(self) -> int:
        """Requests added and not yet returned by `step`."""
        return len(self._running) + len(self._ready)

    def add_requests(self, requests: Sequence[DecodeRequest]) -> list[int]:
        """Encode the requests' audio in one batch, prefill their prompts and start them."""
        import torch

        handles: list[int] = []
        prepared: list[tuple[int, Prepared]] = []
        try:
            with torch.inference_mode():
                for req in requests:
                    handle = next(self._handles)
                    handles.append(handle)
                    audio = np.asarray(req.audio, dtype=np.float32).reshape(-1)
                    if audio.size == 0:
                        if req.kind == "final" and req.segment is not None:
                            self._final_prepared(req.segment)
                        self._ready.append((handle, DecodeResult(text="")))
                        continue
                    started = time.thread_time()
                    prepared.append((handle, self.prepare(req, audio)))
                    self.work.add(req.kind, prepare_seconds=time.thread_time() - started)
                if prepared:
                    self._start([p for _, p in prepared], [h for h, _ in prepared])
        except Exception:
            self._abort()
            raise
        return handles

    def step(self) -> list[tuple[int, DecodeResult]]:
        """One decoder step for every running request; (handle, result) of those finished."""
        import torch

        out, self._ready = self._ready, []
        try:
            with torch.inference_mode():
                for fin in self.decoder.step():
                    run = self._running.pop(fin.handle)
                    out.append((run.handle, self._finish(run, fin)))
        except Exception:
            self._abort()
            raise
        return out

    # ------------------------------------------------------------------ internals

    def _abort(self) -> None:
        """Forget everything in flight: after a failure the decoder state is unknown."""
        self.decoder.reset()
        self._running.clear()
        self._ready.clear()

    def prepare(self, req: DecodeRequest, audio: np.ndarray | None = None) -> Prepared:
        """The model inputs of one request (prompt ids, fbank features, budget).

        With `input_cache` the features and ids come from the caches (bit-identical to
        FunASR's data_load_speech, tests/worker/test_nano_inputs.py); a request that names
        its segment reuses the frames of earlier requests of that segment when its audio
        starts at the segment's start or on the frame grid after it (`segment_align`), and a
        final frees them. Runs on the batch thread only.
        """
        if audio is None:
            audio = np.asarray(req.audio, dtype=np.float32).reshape(-1)
        seconds = audio.size / MODEL_SAMPLE_RATE
        key = None if req.segment is None else (req.segment.stream, req.segment.segment)
        offset = 0 if req.segment is None else req.segment.offset
        if audio.size < _MIN_SAMPLES:
            # Zero padding is not the segment's audio: never cached.
            audio = np.pad(audio, (0, _MIN_SAMPLES - audio.size))
            key = None
        prompt = self.prompt(req.options)
        # Finals decode the whole segment afresh (the 2pass correction); only partials
        # force the agreed prefix.
        prefix = _clean_prefix(req.prefix) if req.kind == "partial" else ""
        if self.input_cache:
            prefix_tokens = self.prompt_tokens.count(prefix)
        else:
            prefix_tokens = len(self.tokenizer.encode(prefix)) if prefix else 0
        budget = self.token_budget(seconds, req.kind, prefix_tokens)
        if not self.input_cache:
            prepared = self._prepare_reference(audio, prompt, prefix, budget, seconds, req.kind)
        else:
            prepared = self._prepare_cached(audio, key, offset, prompt, prefix, budget, seconds, req.kind)
        if key is not None:
            prepared.segment, prepared.offset = key, offset
            if self.use_drafts:
                prepared.forced_ids = self._forced_ids(prompt, prefix)
                draft = self.answers.draft(key, offset, prepared.forced_ids, prefix, self.tokenizer.encode)
                prepared.draft = self.decoder.cut_draft(draft, budget)
        if req.kind == "final" and req.segment is not None:
            self._final_prepared(req.segment)
        return prepared

    def _final_prepared(self, segment: SegmentRef) -> None:
        """A final is its segment's last decode: free the segment's frames and answer now
        (a partial queued before it may still run after it and cache the segment again;
        that entry goes when the stream closes or as the least recently used)."""
        self.features.drop(segment.stream, segment.segment)
        self.answers.drop((segment.stream, segment.segment))

    def _forced_ids(self, prompt: str, prefix: str) -> list[int]:
        """The ids the forced prefix adds to the prompt (they start the answer)."""
        if not prefix:
            return []
        _, bare = self.prompt_tokens.ids(prompt, "")
        _, after = self.prompt_tokens.ids(prompt, prefix)
        if after[: len(bare)] == bare:
            return after[len(bare) :]
        return [int(i) for i in self.tokenizer.encode(prefix)]

    def _prepare_cached(
        self, audio: np.ndarray, key: tuple[Hashable, int] | None, offset: int, prompt: str, prefix: str,
        budget: int, seconds: float, kind: str,
    ) -> Prepared:
        """The inputs from the feature and prompt-id caches (equal to _prepare_reference's)."""
        fbank = self.features.features(audio, key, offset)
        before, after = self.prompt_tokens.ids(prompt, prefix)
        n_fake = fake_token_len(self.model, int(fbank.shape[0]))
        return Prepared(
            source_ids=before + [0] * n_fake + after,
            fbank=fbank,
            fbank_beg=len(before),
            fake_token_len=n_fake,
            budget=budget,
            seconds=seconds,
            kind=kind,
            prompt=prompt,
            prefix=prefix,
        )

    def _prepare_reference(
        self, audio: np.ndarray, prompt: str, prefix: str, budget: int, seconds: float, kind: str
    ) -> Prepared:
        """FunASRNano's own data pipeline over the whole request (what the caches must equal)."""
        import torch

        chat = self.model.generate_chatml(prompt, torch.from_numpy(audio))
        contents = self.model.data_template(chat)
        data_kwargs = dict(self._data_kwargs, prev_text=prefix) if prefix else self._data_kwargs
        out = self.model.data_load_speech(
            contents, self.tokenizer, self.frontend, meta_data={}, **data_kwargs
        )
        return Prepared(
            source_ids=out["source_ids"][0].tolist(),
            fbank=out["speech"][0],
            fbank_beg=int(out["fbank_beg"][0, 0]),
            fake_token_len=int(out["fake_token_len"][0, 0]),
            budget=budget,
            seconds=seconds,
            kind=kind,
            prompt=prompt,
            prefix=prefix,
        )

    def _start(self, items: list[Prepared], handles: list[int]) -> None:
        import torch
        from torch.nn.utils.rnn import pad_sequence

        model = self.model
        dev = torch.device(self.device)
        # Audio: one padded batch through the encoder (fp32, see FunASRNano.inference_prepare)
        # and the adaptor.
        feats = pad_sequence([p.fbank for p in items], batch_first=True).to(dev)
        feat_lens = torch.tensor([p.fbank.shape[0] for p in items], dtype=torch.int32, device=dev)
        encoder_out, encoder_lens = model.encode(feats, feat_lens)
        adaptor_out, adaptor_lens = model.audio_adaptor(encoder_out, encoder_lens)

        # Prompts: token embeddings with the adaptor frames spliced in at fbank_beg.
        embed = model.llm.model.get_input_embeddings()
        rows = []
        for b, p in enumerate(items):
            ids = torch.tensor(p.source_ids, dtype=torch.long, device=dev)
            ids[ids < 0] = 0
            row = embed(ids)
            n = min(p.fake_token_len, int(adaptor_lens[b]))
            if p.fbank_beg > 0 and n > 0:
                row[p.fbank_beg : p.fbank_beg + n] = adaptor_out[b, :n].to(row.dtype)
            rows.append(row)
        decoder_handles = self.decoder.add(
            rows,
            [p.budget for p in items],
            forced=bool(self.forced_tokens_per_second),
            drafts=[p.draft for p in items],
        )
        for b, (p, handle, dh) in enumerate(zip(items, handles, decoder_handles, strict=True)):
            run = _Running(handle, p)
            if self.timestamps and p.kind == "final":
                n_frames = int(encoder_lens[b])
                run.encoder_out = encoder_out[b : b + 1, :n_frames]
                run.encoder_len = encoder_lens[b : b + 1]
            self._running[dh] = run
            self.work.add(
                p.kind, requests=1, audio_seconds=p.seconds, prefilled=len(p.source_ids) + len(p.draft)
            )

    def _finish(self, run: _Running, fin: Any) -> DecodeResult:
        p = run.prepared
        self.work.add(p.kind, generated=fin.steps, draft_proposed=fin.proposed, draft_accepted=fin.accepted)
        self._last[run.handle] = (p.source_ids, p.prompt, list(fin.ids))
        # FunASRNano.inference_llm's post-processing: prev_text + response, /sil and
        # whitespace runs to one space (and trimmed here).
        text = p.prefix + self.tokenizer.decode(fin.ids, skip_special_tokens=True)
        text = re.sub(r"\s+", " ", text.replace("/sil", " ")).strip()
        if p.segment is not None and p.kind == "partial" and self.use_drafts:
            self.answers.remember(p.segment, Answer(p.offset, tuple(p.forced_ids) + tuple(fin.ids), text))
        tokens: tuple[TokenTime, ...] = ()
        if run.encoder_out is not None and text:
            tokens = self._token_times(run.encoder_out, run.encoder_len, text)
        return DecodeResult(text=text, tokens=tokens)

    # ------------------------------------------------------------------ timestamps

    def _timestamps_available(self) -> bool:
        """CTC timestamps need the model's CTC branch (FunASR drops it when untrained)."""
        model = self.model
        return all(getattr(model, n, None) is not None for n in ("ctc_decoder", "ctc", "ctc_tokenizer"))

    def _token_times(self, encoder_out, encoder_lens, text: str) -> tuple[TokenTime, ...]:
        """Token timestamps as FunASRNano.inference_llm computes them: the final text
        aligned to the CTC branch's frame posteriors (one LFR frame = 60 ms)."""

        model = self.model
        dec_out, dec_lens = model.ctc_decoder(encoder_out.float(), encoder_lens)
        log_probs = model.ctc.log_softmax(dec_out)[0, : int(dec_lens[0])].float().cpu()
        targets = [int(t) for t in model.ctc_tokenizer.encode(text)]
        frame_ms = self.frontend.frame_shift * self.frontend.lfr_n
        spans = ctc_align(log_probs.numpy(), targets, int(model.blank_id))
        return tuple(
            TokenTime(
                text=model.ctc_tokenizer.decode([tok]),
                start_ms=int(start * frame_ms),
                end_ms=int(end * frame_ms),
            )
            for tok, start, end in spans
        )


def ctc_align(log_probs: Any, targets: Sequence[int], blank: int) -> list[tuple[int, int, int]]:
    """Viterbi CTC forced alignment: (token, first frame, end frame) per target token.

    log_probs: [T, V] log posteriors (tensor or array). Returns [] when the targets cannot
    fit in T frames. The same alignment torchaudio.functional.forced_align computes
    (FunASR's forced_align wraps it), without needing torchaudio.
    """
    lp = np.asarray(log_probs.detach().cpu() if hasattr(log_probs, "detach") else log_probs)
    n = len(targets)
    frames = int(lp.shape[0])
    if n == 0 or frames == 0:
        return []
    # Extended label sequence: blank, t1, blank, t2, ..., tn, blank.
    ext = np.full(2 * n + 1, blank, dtype=np.int64)
    ext[1::2] = np.asarray(targets, dtype=np.int64)
    states = ext.size
    # A skip from s-2 to s is allowed into a token that differs from the token two back.
    skip = np.zeros(states, dtype=bool)
    skip[2:] = (ext[2:] != blank) & (ext[2:] != ext[:-2])
    emit = lp[:, ext].astype(np.float64)  # [T, S]
    score = np.full(states, -np.inf)
    score[0] = emit[0, 0]
    score[1] = emit[0, 1]
    back = np.zeros((frames, states), dtype=np.int8)  # 0: stay, 1: from s-1, 2: from s-2
    cand = np.full((3, states), -np.inf)
    for t in range(1, frames):
        cand[0] = score
        cand[1, 1:] = score[:-1]
        cand[2, 2:] = np.where(skip[2:], score[:-2], -np.inf)
        choice = cand.argmax(axis=0)  # ties prefer staying, then the shorter step
        back[t] = choice
        score = cand[choice, np.arange(states)] + emit[t]
    last = states - 1 if score[-1] >= score[-2] else states - 2
    if not np.isfinite(score[last]):
        return []
    path = np.empty(frames, dtype=np.int64)
    s = last
    for t in range(frames - 1, -1, -1):
        path[t] = s
        s -= int(back[t, s])
    spans: list[list[int]] = []  # [token, start, end, state]
    for t, s in enumerate(path.tolist()):
        if s % 2 == 0:
            continue
        if spans and spans[-1][3] == s:
            spans[-1][2] = t + 1
        else:
            spans.append([int(ext[s]), t, t + 1, s])
    return [(tok, start, end) for tok, start, end, _ in spans]

