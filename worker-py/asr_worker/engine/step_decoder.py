"""Iteration-level (continuous) greedy batching of a causal LM over spliced prompt embeddings.

A `StepDecoder` holds the sequences being decoded. `add()` prefills new sequences (their
prompt embeddings, audio frames already spliced in) and joins them to the running batch;
`step()` runs ONE decoder forward for every running sequence and returns the ones that
finished, so a request leaves the batch the moment it ends instead of waiting for the
batch's longest member, and a request that arrives while others are mid-way joins at
the next step instead of waiting for the whole batch to drain.

Why code of our own rather than a library:

- transformers 4.57 ships continuous batching (`generate_batch`, `ContinuousBatchingManager`),
  but its requests are token ids only (`add_request(input_ids=...)`): there is no way to
  hand it the prompt embeddings with Fun-ASR-Nano's audio-adaptor frames spliced in, and
  it needs a paged-attention implementation;
- vLLM takes prompt embeddings and is what FunASR uses on GPUs, but it needs CUDA and
  cannot run (or be tested) on the CPU-only machines this project builds on.

So the loop is written on the model's own forward and transformers' `DynamicCache`: the
running batch is one left-padded cache; joining left-pads the shorter side and
concatenates along the batch axis, leaving drops rows (and columns that became padding
for every row). Decoding is greedy and computes exactly what `generate` computes for one
sequence (argmax of the float32 last-position logits, position ids counted over real
tokens only), so a request decoded alone gives the token ids `generate` gives.

Counters (`prefilled_tokens`, `generated_tokens`, `forward_calls`) measure decoder work
independently of the hardware; the engine exposes them to benchmarks and metrics.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Finished:
    """A sequence that finished decoding."""

    handle: int
    #: Generated token ids, without the stop token.
    ids: list[int]
    #: Tokens generated, the stop token included (each cost one forward row).
    steps: int


@dataclass
class _Row:
    """One running sequence."""

    handle: int
    #: Most new tokens to generate (the stop token, when one is emitted, is not counted).
    budget: int
    #: Stop tokens are suppressed until the budget is spent (benchmarks force lengths).
    forced: bool
    #: Position id of the newest token (the last prompt token until one is generated).
    position: int
    generated: list[int] = field(default_factory=list)
    steps: int = 0
    done: bool = False


class StepDecoder:
    """Greedy decoding of many sequences, one decoder forward per step for all of them.

    Args:
        llm: a transformers causal LM (Qwen3ForCausalLM) taking inputs_embeds.
        stop_ids: token ids that end a sequence (not part of its output).
        dtype: torch dtype of the decoder inputs.
        device: torch device of the decoder.
    """

    def __init__(self, llm: Any, *, stop_ids: Sequence[int], dtype: Any, device: Any) -> None:
        self.llm = llm
        self.stop_ids = sorted(set(stop_ids))
        self.dtype = dtype
        self.device = device
        self._rows: list[_Row] = []
        self._cache: Any = None
        self._mask: Any = None  # [B, L] long, 1 where the cache column is a real token
        self._handles = itertools.count()
        #: Prompt tokens run through the decoder (audio frames and forced prefixes included).
        self.prefilled_tokens = 0
        #: Tokens generated (stop tokens included: they cost a forward too).
        self.generated_tokens = 0
        #: Decoder forward calls (prefills and steps).
        self.forward_calls = 0

    @property
    def active(self) -> int:
        """Sequences still decoding."""
        return len(self._rows)

    def add(self, prompts: Sequence[Any], budgets: Sequence[int], *, forced: bool = False) -> list[int]:
        """Prefill prompts ([T_i, D] embeddings) and join them to the batch; returns handles.

        Each gets its first token from the prefill; one whose first token already ends it
        (a stop token, or a budget of 1) is reported by the next `step()`.
        """
        import torch
        from transformers import DynamicCache

        if not prompts:
            return []
        n = len(prompts)
        width = max(int(p.shape[0]) for p in prompts)
        hidden = int(prompts[0].shape[-1])
        embeds = torch.zeros(n, width, hidden, dtype=self.dtype, device=self.device)
        mask = torch.zeros(n, width, dtype=torch.long, device=self.device)
        for b, p in enumerate(prompts):
            embeds[b, width - p.shape[0] :] = p.to(self.dtype)
            mask[b, width - p.shape[0] :] = 1
        # What generate derives from a left-padded mask: real tokens count from 0.
        positions = mask.cumsum(-1) - 1
        positions.masked_fill_(mask == 0, 1)
        cache = DynamicCache()
        out = self.llm(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.forward_calls += 1
        self.prefilled_tokens += int(mask.sum())
        rows = [
            _Row(next(self._handles), max(1, int(b)), forced, int(p.shape[0]) - 1)
            for p, b in zip(prompts, budgets, strict=True)
        ]
        self._take_tokens(rows, out.logits[:, -1, :])
        self._join(rows, out.past_key_values, mask)
        return [r.handle for r in rows]

    def step(self) -> list[Finished]:
        """One forward for every unfinished sequence; returns the sequences that finished.

        Finished sequences leave the batch here.
        """
        import torch

        finished = self._drop_finished()
        if not self._rows:
            return finished
        last = torch.tensor([[r.generated[-1]] for r in self._rows], dtype=torch.long, device=self.device)
        ones = torch.ones(len(self._rows), 1, dtype=self._mask.dtype, device=self.device)
        self._mask = torch.cat([self._mask, ones], dim=1)
        positions = torch.tensor([[r.position] for r in self._rows], dtype=torch.long, device=self.device)
        out = self.llm(
            input_ids=last,
            attention_mask=self._mask,
            position_ids=positions,
            past_key_values=self._cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.forward_calls += 1
        self._cache = out.past_key_values
        self._take_tokens(self._rows, out.logits[:, -1, :])
        return finished + self._drop_finished()

    def run_to_completion(self) -> dict[int, Finished]:
        """Step until every sequence has finished; {handle: Finished}."""
        done: dict[int, Finished] = {}
        while self._rows:
            done.update((f.handle, f) for f in self.step())
        return done

    def reset(self) -> None:
        """Forget every running sequence (after a failure: the cache may be half-updated)."""
        self._rows = []
        self._cache = None
        self._mask = None

    # ------------------------------------------------------------------ internals

    def _take_tokens(self, rows: list[_Row], logits: Any) -> None:
        """Greedy next token per row, exactly as generate picks it (float32 argmax)."""
        import torch

        scores = logits.to(dtype=torch.float32)
        forced = [i for i, r in enumerate(rows) if r.forced]
        if forced and self.stop_ids:
            # min_new_tokens semantics: stop tokens cannot win before the budget is spent.
            idx = torch.tensor(forced, device=scores.device)
            stops = torch.tensor(self.stop_ids, device=scores.device)
            scores[idx.unsqueeze(1), stops.unsqueeze(0)] = float("-inf")
        tokens = scores.argmax(dim=-1).tolist()
        stop = set(self.stop_ids)
        for r, t in zip(rows, tokens, strict=True):
            self.generated_tokens += 1
            r.steps += 1
            r.position += 1  # the position this token is fed at in the next step
            if t in stop:
                r.done = True
                continue
            r.generated.append(int(t))
            if len(r.generated) >= r.budget:
                r.done = True

    def _join(self, rows: list[_Row], cache: Any, mask: Any) -> None:
        import torch
        from torch.nn.functional import pad
        from transformers import DynamicCache

        if not self._rows:
            self._rows, self._cache, self._mask = rows, cache, mask
            return
        old_len, new_len = self._mask.shape[1], mask.shape[1]
        width = max(old_len, new_len)
        merged = DynamicCache()
        for i, (old, new) in enumerate(zip(_layers(self._cache), _layers(cache), strict=True)):
            keys = torch.cat(
                [pad(old[0], (0, 0, width - old_len, 0)), pad(new[0], (0, 0, width - new_len, 0))]
            )
            values = torch.cat(
                [pad(old[1], (0, 0, width - old_len, 0)), pad(new[1], (0, 0, width - new_len, 0))]
            )
            merged.update(keys, values, i)
        self._mask = torch.cat(
            [pad(self._mask, (width - old_len, 0)), pad(mask, (width - new_len, 0))]
        )
        self._cache = merged
        self._rows = self._rows + rows

    def _drop_finished(self) -> list[Finished]:
        import torch
        from transformers import DynamicCache

        done = [r for r in self._rows if r.done]
        if not done:
            return []
        keep = [i for i, r in enumerate(self._rows) if not r.done]
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._cache, self._mask = None, None
        else:
            idx = torch.tensor(keep, dtype=torch.long, device=self.device)
            mask = self._mask.index_select(0, idx)
            # Columns that are padding for every remaining row cost attention for nothing.
            first = int(mask.any(dim=0).long().argmax())
            self._mask = mask[:, first:]
            kept = DynamicCache()
            for i, (k, v) in enumerate(_layers(self._cache)):
                kept.update(k.index_select(0, idx)[:, :, first:], v.index_select(0, idx)[:, :, first:], i)
            self._cache = kept
        return [Finished(r.handle, r.generated, r.steps) for r in done]


def _layers(cache: Any) -> list[tuple[Any, Any]]:
    """(keys, values) of every layer of a transformers cache."""
    return [(layer.keys, layer.values) for layer in cache.layers]
