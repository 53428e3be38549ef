"""Draft verification gives the greedy output of decoding without a draft, with fewer decoder steps.

The decoder (engine/step_decoder.py) prefills a sequence's draft with its prompt and accepts
the longest draft prefix the greedy picks agree with; the engine drafts each request of an
open segment from the segment's previous answer (engine/drafts.py). Everything runs the real
decoder of the tiny model re-drawn "sharp" (every token depends on the whole context, so a
wrong position, mask or cache column changes tokens), compared with decoding without drafts.
The socket layer is blocked for the whole module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from asr_worker.engine.base import DecodeOptions, DecodeRequest, SegmentRef
from asr_worker.engine.drafts import Answer, SegmentAnswers
from asr_worker.engine.step_decoder import Finished, StepDecoder

torch.set_num_threads(2)

BUDGET = 16


@pytest.fixture(scope="module")
def engine(sharp_model_dir: Path, no_network):
    from asr_worker.models import load_engine

    return load_engine(sharp_model_dir, "cpu", max_new_tokens=BUDGET, partial_max_new_tokens=BUDGET,
                       max_tokens_per_second=0)


@pytest.fixture(scope="module")
def prompts(engine) -> list[torch.Tensor]:
    """Prompt embeddings of different lengths (the decoder left-pads them)."""
    gen = torch.Generator().manual_seed(3)
    hidden = engine.model.llm.config.hidden_size
    return [torch.randn(n, hidden, generator=gen) for n in (9, 14, 6, 11)]


def _decoder(engine, stop_ids=None) -> StepDecoder:
    return StepDecoder(engine.model.llm, stop_ids=engine.eos_ids if stop_ids is None else stop_ids,
                       dtype=torch.float32, device=torch.device("cpu"))


def _decode(engine, prompts, drafts=None, *, budget=BUDGET, forced=False, stop_ids=None):
    """Each prompt decoded in one batch; (Finished per prompt, the decoder)."""
    dec = _decoder(engine, stop_ids)
    with torch.inference_mode():
        handles = dec.add(prompts, [budget] * len(prompts), drafts=drafts, forced=forced)
        done = dec.run_to_completion()
    return [done[h] for h in handles], dec


def _alone(engine, prompt, **kw) -> Finished:
    return _decode(engine, [prompt], **kw)[0][0]


def test_greedy_outputs_depend_on_the_prompt(engine, prompts):
    outs = [_alone(engine, p).ids for p in prompts]
    assert len({tuple(o) for o in outs}) == len(outs)
    assert all(len(o) == BUDGET for o in outs)  # random weights do not stop by themselves


def test_a_draft_of_the_whole_answer_is_accepted_and_only_its_end_token_is_generated(engine, prompts):
    for prompt in prompts:
        free = _alone(engine, prompt).ids
        # Make the decoder stop where the free decode first picks a token it had not picked yet,
        # so the answer ends with a real stop token.
        at = next(i for i in range(3, BUDGET) if free[i] not in free[:i])
        stops = [*engine.eos_ids, free[at]]
        plain = _alone(engine, prompt, stop_ids=stops)
        assert plain.ids == free[:at] and plain.steps == at + 1
        drafted, dec = _decode(engine, [prompt], [plain.ids], stop_ids=stops)
        got = drafted[0]
        assert got.ids == plain.ids
        assert (got.proposed, got.accepted) == (at, at)
        assert got.steps == 1  # the stop token, picked after the last draft token
        # One forward for the whole request: the stop comes from the prefill's last position.
        assert dec.generated_tokens == 1 and dec.forward_calls == 1


def test_a_draft_that_fills_the_budget_needs_no_step(engine, prompts):
    plain = [_alone(engine, p) for p in prompts]
    drafted, dec = _decode(engine, prompts, [p.ids for p in plain])
    assert [d.ids for d in drafted] == [p.ids for p in plain]
    assert all(d.accepted == BUDGET and d.steps == 0 for d in drafted)
    assert dec.generated_tokens == 0 and dec.forward_calls == 1
    assert dec.draft_accepted == dec.draft_proposed == BUDGET * len(prompts)


@pytest.mark.parametrize("k", [0, 1, 5, BUDGET - 1])
def test_a_draft_right_for_k_tokens_accepts_exactly_k_and_changes_nothing(engine, prompts, k):
    for prompt in prompts[:2]:
        plain = _alone(engine, prompt)
        wrong = (plain.ids[k] + 1) % engine.model.llm.config.vocab_size
        draft = [*plain.ids[:k], wrong, *plain.ids[k + 1 :]]
        got = _alone(engine, prompt, drafts=[draft])
        assert got.ids == plain.ids
        assert got.accepted == k
        assert got.steps == BUDGET - k  # the rest is generated, one step per token


def test_garbage_empty_and_overlong_drafts_change_nothing(engine, prompts):
    rng = np.random.default_rng(0)
    vocab = engine.model.llm.config.vocab_size
    plain = [_alone(engine, p) for p in prompts]
    drafts = [
        [int(t) for t in rng.integers(0, vocab, 12)],  # garbage
        [],  # empty
        plain[2].ids + [int(t) for t in rng.integers(0, vocab, 9)],  # beyond the budget
        [plain[3].ids[0], *engine.eos_ids, *plain[3].ids[1:]],  # a stop token inside: cut there
    ]
    got, _ = _decode(engine, prompts, drafts)
    assert [g.ids for g in got] == [p.ids for p in plain]
    assert got[2].proposed == BUDGET and got[2].accepted == BUDGET
    assert got[3].proposed == 1 and got[3].accepted == 1
    assert got[1].proposed == 0 and got[1].steps == BUDGET


def test_forced_lengths_with_drafts_equal_forced_lengths_without(engine, prompts):
    # Forced mode suppresses stop tokens until the budget is spent (benchmarks); make one of
    # the free decode's tokens a stop token so that suppression matters.
    free = _alone(engine, prompts[0]).ids
    stops = [*engine.eos_ids, free[4]]
    plain = [_alone(engine, p, forced=True, stop_ids=stops) for p in prompts]
    # The stop token was suppressed, not obeyed: the next best token instead.
    assert len(plain[0].ids) == BUDGET and plain[0].ids[:4] == free[:4] != plain[0].ids[4:5]
    drafts = [
        plain[0].ids[:7],
        [*plain[1].ids[:3], free[4], *plain[1].ids[4:]],  # a stop token inside: cut there
        plain[2].ids,
        plain[3].ids[:9],
    ]
    got, _ = _decode(engine, prompts, drafts, forced=True, stop_ids=stops)
    assert [g.ids for g in got] == [p.ids for p in plain]
    assert [g.accepted for g in got] == [7, 3, BUDGET, 9]


def test_rows_with_drafts_joining_a_running_batch_equal_each_alone_without_a_draft(engine, prompts):
    plain = [_alone(engine, p) for p in prompts]
    wrong = (plain[1].ids[3] + 1) % engine.model.llm.config.vocab_size
    dec = _decoder(engine)
    done: dict[int, Finished] = {}
    with torch.inference_mode():
        first = dec.add(prompts[:2], [BUDGET, BUDGET], drafts=[plain[0].ids[:6], [*plain[1].ids[:3], wrong]])
        for _ in range(4):  # the first rows are mid-way when the others join
            done.update((f.handle, f) for f in dec.step())
        later = dec.add(prompts[2:], [BUDGET, 5], drafts=[[7, 8, 9], plain[3].ids[:10]])
        done.update(dec.run_to_completion())
    got = [done[h] for h in first + later]
    assert [g.ids for g in got] == [p.ids for p in plain[:3]] + [plain[3].ids[:5]]
    assert [g.accepted for g in got] == [6, 3, 0, 5]


# ----------------------------------------------------------------------- engine: segment drafts


def _speech(shared_audio: Path) -> np.ndarray:
    import soundfile as sf

    data, rate = sf.read(str(shared_audio / "zh/damo.wav"), dtype="float32")
    assert rate == 16_000
    return np.ascontiguousarray(data[: int(3.0 * rate)])


def _req(audio, kind, stream, *, prefix="", offset=0, options=DecodeOptions()) -> DecodeRequest:
    return DecodeRequest(audio, options, kind, prefix=prefix, segment=SegmentRef(stream, 0, offset))


def _counts(engine, kind) -> tuple[int, int]:
    return engine.work.draft_proposed.get(kind, 0), engine.work.draft_accepted.get(kind, 0)


def _without_drafts(engine, requests) -> list:
    engine.use_drafts = False
    try:
        return [engine.decode_batch([r])[0].text for r in requests]
    finally:
        engine.use_drafts = True


def test_a_final_is_drafted_from_its_segments_last_partial_and_decodes_the_same(engine, shared_audio):
    audio = _speech(shared_audio)
    partial, final = _req(audio[:32_000], "partial", "a"), _req(audio, "final", "a")
    want = _without_drafts(engine, [partial, final])
    assert engine.decode_batch([partial])[0].text == want[0]
    answer = list(engine.last_generated[0])
    before = _counts(engine, "final")
    assert engine.decode_batch([final])[0].text == want[1]
    proposed, accepted = (a - b for a, b in zip(_counts(engine, "final"), before, strict=True))
    assert proposed == len(answer) > 0
    assert engine.last_generated[0][:accepted] == answer[:accepted]
    assert len(engine.answers) == 0  # the final was the segment's last decode


def test_a_final_over_the_partials_audio_is_all_draft(engine, shared_audio):
    audio = _speech(shared_audio)
    partial, final = _req(audio, "partial", "b"), _req(audio, "final", "b")
    want = _without_drafts(engine, [final])[0]
    engine.decode_batch([partial])
    generated = dict(engine.work.generated_tokens)
    before = _counts(engine, "final")
    assert engine.decode_batch([final])[0].text == want
    proposed, accepted = (a - b for a, b in zip(_counts(engine, "final"), before, strict=True))
    assert proposed == accepted == len(engine.last_generated[0])
    # The whole answer was verified in the prefill: the budget was met without a step.
    assert engine.work.generated_tokens["final"] - generated.get("final", 0) == 0


def test_partials_forcing_an_agreed_prefix_are_drafted_beyond_it(engine, shared_audio):
    audio = _speech(shared_audio)
    first = _req(audio[:40_000], "partial", "c")
    engine.decode_batch([first])
    ids = engine.last_generated[0]
    agreed = engine.tokenizer.decode(ids[:3])
    second = _req(audio[:48_000], "partial", "c", prefix=agreed)
    want = _without_drafts(engine, [second])[0]
    before = _counts(engine, "partial")
    assert engine.decode_batch([second])[0].text == want
    proposed, _ = (a - b for a, b in zip(_counts(engine, "partial"), before, strict=True))
    assert proposed > 0
    engine.forget_stream("c")


def test_forgotten_segments_and_other_windows_get_no_draft(engine, shared_audio):
    audio = _speech(shared_audio)
    for stream in ("d", "e"):
        engine.decode_batch([_req(audio[:32_000], "partial", stream)])
        if stream == "d":
            engine.forget_segment("d", 0)
        else:
            engine.forget_stream("e")
        before = _counts(engine, "final")
        engine.decode_batch([_req(audio, "final", stream)])
        assert _counts(engine, "final") == before
    # A window that starts elsewhere in the segment is not drafted from another window's answer,
    # but the final (from the segment's start) is, from the last answer that started there too.
    engine.decode_batch([_req(audio[:32_000], "partial", "f")])
    start_answer = list(engine.last_generated[0])
    before = _counts(engine, "partial")
    engine.decode_batch([_req(audio[3_200:40_000], "partial", "f", offset=3_200)])
    engine.decode_batch([_req(audio[6_400:44_800], "partial", "f", offset=6_400)])
    assert _counts(engine, "partial") == before
    final = _req(audio, "final", "f")
    want = _without_drafts(engine, [_req(audio, "final", "f-alone")])[0]
    before = _counts(engine, "final")
    assert engine.decode_batch([final])[0].text == want
    assert _counts(engine, "final")[0] - before[0] == len(start_answer)
    assert len(engine.answers) == 0


def test_requests_without_a_segment_are_never_drafted(engine, shared_audio):
    audio = _speech(shared_audio)
    before = dict(engine.work.draft_proposed)
    engine.decode_batch([DecodeRequest(audio, DecodeOptions(), "partial")] * 2)
    engine.decode_batch([DecodeRequest(audio, DecodeOptions(), "final")])
    assert engine.work.draft_proposed == before


def test_the_draft_is_the_last_answer_beyond_the_forced_prefix():
    answers = SegmentAnswers(max_segments=2)
    encode = lambda text: [ord(c) for c in text]  # noqa: E731 - one id per character
    answers.remember(("s", 0), Answer(0, (1, 2, 3, 4), "abcd"))
    assert answers.draft(("s", 0), 0, [], "", encode) == [1, 2, 3, 4]  # a final: all of it
    assert answers.draft(("s", 0), 0, [1, 2], "ab", encode) == [3, 4]  # ids after the forced ids
    # The forced text ends inside one of the answer's tokens: its text's remainder, tokenized.
    assert answers.draft(("s", 0), 0, [9, 9], "abc", encode) == [ord("d")]
    assert answers.draft(("s", 0), 0, [9], "x", encode) == []  # the answer disagrees
    assert answers.draft(("s", 0), 160, [], "", encode) == []  # another window
    assert answers.draft(("s", 1), 0, [], "", encode) == []  # another segment
    # A window's answer drafts only that window; the segment's start keeps its own.
    answers.remember(("s", 0), Answer(320, (7, 8), "gh"))
    assert answers.draft(("s", 0), 320, [], "", encode) == [7, 8]
    assert answers.draft(("s", 0), 0, [1], "a", encode) == [2, 3, 4]
    answers.remember(("s", 0), Answer(640, (9,), "i"))
    assert answers.draft(("s", 0), 320, [], "", encode) == []
    assert answers.draft(("s", 0), 0, [], "", encode) == [1, 2, 3, 4]
    answers.remember(("t", 0), Answer(0, (5,), "e"))
    answers.remember(("u", 0), Answer(0, (6,), "f"))  # bounded: the least recently used goes
    assert answers.draft(("s", 0), 0, [], "", encode) == []
    assert len(answers) == 2
