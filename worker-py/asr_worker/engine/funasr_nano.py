"""The `funasr-nano` engine: Fun-ASR-Nano-2512 through FunASR's own model code.

Loading goes through FunASR's `AutoModel.build_model` (registry, tokenizer, frontend,
FunASRNano, `load_pretrained_model`) with every path pointing into the local model
directory, so nothing consults a model hub. Decoding reuses FunASRNano's own pieces:
`get_prompt` / `generate_chatml` / `data_template` / `data_load_speech` build each request's
prompt ids and fbank features, `encode` + `audio_adaptor` run once over the padded batch,
the adaptor frames are spliced into the prompt embeddings the way `inference_prepare`
does, and one greedy `llm.generate` runs over the left-padded batch. Unlike FunASR's own
`inference`, every request in a batch keeps its own prompt (hotwords, language, itn).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asr_worker.engine.base import (
    MODEL_SAMPLE_RATE,
    DecodeOptions,
    DecodeRequest,
    DecodeResult,
    TokenTime,
)

log = logging.getLogger(__name__)

#: Default cap on new tokens of a final (FunASR's own default max_length is 512).
DEFAULT_MAX_NEW_TOKENS = 512
#: Default cap on new tokens of a partial: a hypothesis of a window of the open segment.
DEFAULT_PARTIAL_MAX_NEW_TOKENS = 96
#: Real speech yields about 4-6 text tokens per second; beyond this rate the decoder is
#: looping, so a request's budget is also capped at this rate (plus a constant).
DEFAULT_MAX_TOKENS_PER_SECOND = 15.0
_TOKEN_BUDGET_SLACK = 8
#: Shortest audio decoded; shorter non-empty audio is zero-padded (kaldi fbank needs a frame).
_MIN_SAMPLES = MODEL_SAMPLE_RATE // 10

#: Language codes and names -> the language names Fun-ASR-Nano's prompt uses
#: ("语音转写成中文"). None / "auto" lets the model decide.
LANGUAGE_NAMES: dict[str, str | None] = {
    "auto": None,
    "": None,
    "zh": "中文",
    "zh-cn": "中文",
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

def language_name(language: str | None) -> str | None:
    """The prompt language name for a code ("zh") or name ("中文"); None lets the model decide.

    Names that are not codes pass through unchanged, so any language name the checkpoint
    knows (Fun-ASR-MLT-Nano knows 31) can be given directly.
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


@dataclass
class _Prepared:
    """One request turned into model inputs by FunASRNano's own data pipeline."""

    index: int
    source_ids: list[int]
    fbank: Any  # torch.Tensor [T, 560]
    fbank_beg: int
    fake_token_len: int
    budget: int
    seconds: float
    kind: str


class FunAsrNanoEngine:
    """Fun-ASR-Nano behind the Engine protocol (see engine/base.py)."""

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
    ) -> None:
        import torch

        self.model = model
        self.kwargs = kwargs
        self.tokenizer = kwargs["tokenizer"]
        self.frontend = kwargs["frontend"]
        # What FunASRNano's data pipeline reads from its kwargs (dataset_conf, ...).
        self._data_kwargs = {
            k: v for k, v in kwargs.items() if k not in ("tokenizer", "frontend", "meta_data")
        }
        self.device = device
        self.dtype = dtype
        self.torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
        self.max_new_tokens = int(max_new_tokens)
        self.partial_max_new_tokens = int(partial_max_new_tokens)
        self.max_tokens_per_second = float(max_tokens_per_second or 0.0)
        self.forced_tokens_per_second = forced_tokens_per_second
        self.model_dir = model_dir
        llm_cfg = model.llm.config
        eos = llm_cfg.eos_token_id
        self.eos_ids: list[int] = sorted(
            {i for i in (eos if isinstance(eos, list) else [eos]) if i is not None}
            | {i for i in (self.tokenizer.eos_token_id, self.tokenizer.pad_token_id) if i is not None}
        )
        pad = llm_cfg.pad_token_id
        self.pad_id: int = pad if pad is not None else self.eos_ids[0]
        #: Prompt ids (speech frames as id 0) of each item of the last batch, for inspection.
        self.last_input_ids: list[list[int]] = []
        #: Prompt text of each item of the last batch.
        self.last_prompts: list[str] = []
        #: New token ids of each item of the last batch (after budget and EOS cuts).
        self.last_generated: list[list[int]] = []
        self.timestamps = self._timestamps_available()

    # ------------------------------------------------------------------ prompts

    def prompt(self, options: DecodeOptions) -> str:
        """The user prompt FunASRNano builds for these options (its own get_prompt)."""
        hotwords = [c for c in (clean_prompt_text(h) for h in options.hotwords if h) if c]
        return self.model.get_prompt(hotwords, language_name(options.language), options.itn)

    # ------------------------------------------------------------------ Engine

    def warmup(self) -> None:
        """A batched decode of two requests with different options, final and partial."""
        rng = np.random.default_rng(0)
        audio = (rng.standard_normal(MODEL_SAMPLE_RATE) * 0.01).astype(np.float32)
        self.decode_batch(
            [
                DecodeRequest(audio, DecodeOptions(hotwords=("热词",), language="中文"), "final"),
                DecodeRequest(audio[: MODEL_SAMPLE_RATE // 2], DecodeOptions(itn=False), "partial"),
            ]
        )
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(torch.device(self.device))

    def decode_batch(self, requests: Sequence[DecodeRequest]) -> list[DecodeResult]:
        import torch

        results: list[DecodeResult | None] = [None] * len(requests)
        prepared: list[_Prepared] = []
        self.last_input_ids = [[] for _ in requests]
        self.last_prompts = ["" for _ in requests]
        self.last_generated = [[] for _ in requests]
        with torch.inference_mode():
            for i, req in enumerate(requests):
                audio = np.asarray(req.audio, dtype=np.float32).reshape(-1)
                if audio.size == 0:
                    results[i] = DecodeResult(text="")
                    continue
                prepared.append(self._prepare(i, req, audio))
            if prepared:
                for p, res in zip(prepared, self._decode(prepared), strict=True):
                    results[p.index] = res
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ internals

    def _prepare(self, index: int, req: DecodeRequest, audio: np.ndarray) -> _Prepared:
        import torch

        seconds = audio.size / MODEL_SAMPLE_RATE
        if audio.size < _MIN_SAMPLES:
            audio = np.pad(audio, (0, _MIN_SAMPLES - audio.size))
        prompt = self.prompt(req.options)
        chat = self.model.generate_chatml(prompt, torch.from_numpy(audio))
        contents = self.model.data_template(chat)
        out = self.model.data_load_speech(
            contents, self.tokenizer, self.frontend, meta_data={}, **self._data_kwargs
        )
        source_ids = out["source_ids"][0].tolist()
        self.last_input_ids[index] = source_ids
        self.last_prompts[index] = prompt
        limit = self.partial_max_new_tokens if req.kind == "partial" else self.max_new_tokens
        if self.forced_tokens_per_second:
            budget = max(1, math.ceil(seconds * self.forced_tokens_per_second))
        elif self.max_tokens_per_second > 0:
            budget = math.ceil(seconds * self.max_tokens_per_second) + _TOKEN_BUDGET_SLACK
        else:
            budget = limit
        return _Prepared(
            index=index,
            source_ids=source_ids,
            fbank=out["speech"][0],
            fbank_beg=int(out["fbank_beg"][0, 0]),
            fake_token_len=int(out["fake_token_len"][0, 0]),
            budget=max(1, min(limit, budget)),
            seconds=seconds,
            kind=req.kind,
        )

    def _decode(self, items: list[_Prepared]) -> list[DecodeResult]:
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
            n = p.fake_token_len
            if n > int(adaptor_lens[b]):
                n = int(adaptor_lens[b])
            if p.fbank_beg > 0 and n > 0:
                row[p.fbank_beg : p.fbank_beg + n] = adaptor_out[b, :n].to(row.dtype)
            rows.append(row)

        # Left-pad for the decoder; generate derives position ids from the mask.
        width = max(r.shape[0] for r in rows)
        hidden = rows[0].shape[-1]
        inputs = torch.zeros(len(rows), width, hidden, dtype=self.torch_dtype, device=dev)
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=dev)
        for b, r in enumerate(rows):
            inputs[b, width - r.shape[0] :] = r.to(self.torch_dtype)
            mask[b, width - r.shape[0] :] = 1
        budget = max(p.budget for p in items)
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": budget,
            "do_sample": False,
            "num_beams": 1,
            "temperature": None,
            "top_p": None,
            "top_k": None,
            "pad_token_id": self.pad_id,
            "eos_token_id": self.eos_ids,
        }
        if self.forced_tokens_per_second:
            gen_kwargs["min_new_tokens"] = budget
        generated = model.llm.generate(inputs_embeds=inputs, attention_mask=mask, **gen_kwargs)

        results = []
        for b, p in enumerate(items):
            ids = generated[b, : p.budget].tolist()
            if not self.forced_tokens_per_second:
                for k, t in enumerate(ids):
                    if t in self.eos_ids:
                        ids = ids[:k]
                        break
            self.last_generated[p.index] = ids
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            # FunASRNano.inference_llm's post-processing of the response.
            text = re.sub(r"\s+", " ", text.replace("/sil", " ")).strip()
            tokens: tuple[TokenTime, ...] = ()
            if self.timestamps and text and p.kind == "final":
                n_frames = int(encoder_lens[b])
                tokens = self._token_times(encoder_out[b : b + 1, :n_frames], encoder_lens[b : b + 1], text)
            results.append(DecodeResult(text=text, tokens=tokens))
        return results

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


def __getattr__(name: str) -> Any:
    """`load_engine`, `resolve_device` and `resolve_dtype` moved to asr_worker.models.loader
    (the engine decodes; the loader owns directories and devices); old imports keep working."""
    if name in ("load_engine", "resolve_device", "resolve_dtype", "DeviceUnavailableError"):
        from asr_worker.models import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
