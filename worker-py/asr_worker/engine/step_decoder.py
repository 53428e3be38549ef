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

Draft verification ("prompt lookup" speculative decoding, greedy): a sequence may join
with a DRAFT, token ids it will probably generate (the engine passes the stream's previous
hypothesis of the same audio). The draft is prefilled with the prompt in the same forward,
which gives the logits after every draft token at once; the longest draft prefix that
equals the argmax at each position is accepted, the argmax after the last accepted token
is the first generated token, and the rejected draft columns leave the cache (the row is
shifted right over them, so they become left padding). The output is the same greedy
output as without the draft; only the sequential steps shrink to the tokens the draft did
not have, plus one. (Verifying k tokens in one forward computes their logits in one pass
instead of k incremental ones; in float32 the argmax can differ only at exact near-ties.)

Counters (`prefilled_tokens`, `generated_tokens`, `forward_calls`, `draft_proposed`,
`draft_accepted`) measure decoder work independently of the hardware; the engine exposes
them to benchmarks and metrics. Draft tokens count as prefilled (they run in the prefill
forward), accepted or not; only tokens picked at a step, or after the draft, count as generated.
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
    #: Tokens generated, the stop token included (each cost one forward row); accepted
    #: draft tokens are not counted (they were verified in the prefill).
    steps: int
    #: Draft tokens given with the sequence (after the cut to its budget).
    proposed: int = 0
    #: Draft tokens accepted (the first `accepted` ids are the draft's).
    accepted: int = 0


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
    proposed: int = 0
    accepted: int = 0


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
        self._stops = frozenset(self.stop_ids)
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
        #: Draft tokens prefilled for verification, and those accepted.
        self.draft_proposed = 0
        self.draft_accepted = 0

    @property
    def active(self) -> int:
        """Sequences still decoding."""
        return len(self._rows)

    def add(
        self,
        prompts: Sequence[Any],
        budgets: Sequence[int],
        *,
        forced: bool = False,
        drafts: Sequence[Sequence[int]] | None = None,
    ) -> list[int]:
        """Prefill prompts ([T_i, D] embeddings) and join them to the batch; returns handles.

        Each gets its first token from the prefill; one whose first token already ends it
        (a stop token, or a budget of 1) is reported by the next `step()`. `drafts` (token
        ids per prompt, may be empty) are verified in the same forward: accepted draft tokens
        become the sequence's first generated ids without a step each. A draft is cut to
        the budget and before any stop token (a stop is never accepted, it is generated).
        """
        import torch
        from transformers import DynamicCache

        if not prompts:
            return []
        n = len(prompts)
        rows = [
            _Row(next(self._handles), max(1, int(b)), forced, int(p.shape[0]) - 1)
            for p, b in zip(prompts, budgets, strict=True)
        ]
        cut = [self.cut_draft(d, r.budget) for d, r in zip(drafts or [()] * n, rows, strict=True)]
        longest = max(len(d) for d in cut)
        if longest:
            embed = self.llm.get_input_embeddings()
            ids = torch.tensor([t for d in cut for t in d], dtype=torch.long, device=self.device)
            draft_embeds = embed(ids).split([len(d) for d in cut])
            seqs = [
                torch.cat([p.to(self.dtype), e.to(self.dtype)])
                for p, e in zip(prompts, draft_embeds, strict=True)
            ]
        else:
            seqs = list(prompts)
        width = max(int(p.shape[0]) for p in seqs)
        hidden = int(seqs[0].shape[-1])
        embeds = torch.zeros(n, width, hidden, dtype=self.dtype, device=self.device)
        mask = torch.zeros(n, width, dtype=torch.long, device=self.device)
        for b, p in enumerate(seqs):
            embeds[b, width - p.shape[0] :] = p.to(self.dtype)
            mask[b, width - p.shape[0] :] = 1
        # What generate derives from a left-padded mask: real tokens count from 0.
        positions = mask.cumsum(-1) - 1
        positions.masked_fill_(mask == 0, 1)
        # The causal LM's own forward, split where it computes logits: the output head runs
        # only over the positions each row needs (its last len(draft) + 1), not over
        # longest + 1 for every row (a [rows, positions, vocabulary] tensor: ~0.6 MiB per
        # position at Qwen3's 151,936 tokens in float32).
        out = self.llm.get_decoder()(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=DynamicCache(),
            use_cache=True,
        )
        self.forward_calls += 1
        self.prefilled_tokens += int(mask.sum())
        counts = [len(d) + 1 for d in cut]
        at_rows = torch.repeat_interleave(torch.arange(n, device=self.device),
                                          torch.tensor(counts, device=self.device))
        at_cols = torch.cat([torch.arange(width - c, width, device=self.device) for c in counts])
        logits = self.llm.get_output_embeddings()(out.last_hidden_state[at_rows, at_cols])
        picks = self._greedy([r for r, c in zip(rows, counts, strict=True) for _ in range(c)], logits)
        rejected = []
        first = 0
        for r, d, c in zip(rows, cut, counts, strict=True):
            # Row r's draft fills its last len(d) columns; picks[j] follows draft[:j].
            self._verify(r, d, picks[first : first + c])
            first += c
            rejected.append(len(d) - r.accepted)
        cache = out.past_key_values
        if any(rejected):
            cache, mask = _shift_out(cache, mask, rejected)
        self._join(rows, cache, mask)
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
        for r, t in zip(self._rows, self._greedy(self._rows, out.logits[:, -1, :]), strict=True):
            self._take(r, t)
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

    def cut_draft(self, draft: Sequence[int], budget: int) -> list[int]:
        """The draft tokens that can be accepted: within the budget, before any stop token
        (what `add` keeps of a draft)."""
        out: list[int] = []
        for t in list(draft)[:budget]:
            if int(t) in self._stops:
                break
            out.append(int(t))
        return out

    # ------------------------------------------------------------------ internals

    def _greedy(self, rows: list[_Row], logits: Any) -> list[int]:
        """Greedy token of each logits row ([S, V]; row i is a position of sequence rows[i]),
        exactly as generate picks it (float32 argmax)."""
        import torch

        scores = logits.to(dtype=torch.float32)
        forced = [i for i, r in enumerate(rows) if r.forced]
        if forced and self.stop_ids:
            # min_new_tokens semantics: stop tokens cannot win before the budget is spent.
            idx = torch.tensor(forced, device=scores.device)
            stops = torch.tensor(self.stop_ids, device=scores.device)
            scores[idx[:, None], stops[None, :]] = float("-inf")
        return scores.argmax(dim=-1).tolist()

    def _verify(self, r: _Row, draft: list[int], picks: list[int]) -> None:
        """Accept the longest draft prefix the greedy picks agree with, then take the pick
        after it as the first generated token (picks[j] follows draft[:j])."""
        r.proposed = len(draft)
        self.draft_proposed += len(draft)
        for j, t in enumerate(picks):
            if j < len(draft) and t == draft[j]:
                # Verified in the prefill: no step of its own.
                r.accepted += 1
                self.draft_accepted += 1
                r.position += 1
                r.generated.append(int(t))
                if len(r.generated) >= r.budget:
                    r.done = True
                    return
                continue
            self._take(r, t)
            return

    def _take(self, r: _Row, t: int) -> None:
        """Generate token t for row r (one decoder row's work)."""
        self.generated_tokens += 1
        r.steps += 1
        r.position += 1  # the position this token is fed at in the next step
        if t in self._stops:
            r.done = True
            return
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
        return [Finished(r.handle, r.generated, r.steps, r.proposed, r.accepted) for r in done]


def _shift_out(cache: Any, mask: Any, rejected: list[int]) -> tuple[Any, Any]:
    """Drop each row's last `rejected[b]` cache columns (rejected draft tokens): the row is
    shifted right over them, so they wrap round to its left end and become padding."""
    import torch
    from transformers import DynamicCache

    width = mask.shape[1]
    shift = torch.tensor(rejected, dtype=torch.long, device=mask.device)
    cols = torch.arange(width, device=mask.device)
    # new column j of row b is old column (j - shift[b]) mod width.
    src = (cols[None, :] - shift[:, None]) % width
    mask = mask.gather(1, src).masked_fill(cols[None, :] < shift[:, None], 0)
    first = int(mask.any(dim=0).long().argmax())  # columns now padding for every row go
    mask = mask[:, first:]
    shifted = DynamicCache()
    for i, (k, v) in enumerate(_layers(cache)):
        idx = src[:, None, :, None].expand(k.shape[0], k.shape[1], width, k.shape[3])
        shifted.update(k.gather(2, idx)[:, :, first:], v.gather(2, idx)[:, :, first:], i)
    return shifted, mask


def _layers(cache: Any) -> list[tuple[Any, Any]]:
    """(keys, values) of every layer of a transformers cache."""
    return [(layer.keys, layer.values) for layer in cache.layers]
