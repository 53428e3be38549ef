"""Finals equal FunASR's own inference, token for token, on a tiny random-weight model.

No real weights can run here, so accuracy is proven by construction: for several clips of
real speech, with hotwords, each language, itn on and off, the engine's final text must be
exactly what `funasr.AutoModel(model=DIR).generate(...)` (FunASRNano's own inference path,
greedy) returns for the same audio and options — decoded alone, batched, joined to a
batch that is already decoding (iteration-level batching), and verified against a draft
(the segment's previous partial answer) instead of decoded token by token. The socket layer is blocked
for the whole module.

The tiny model's decoder is re-drawn "sharp" (conftest's `sharp_model_dir`) (RMSNorm gains near 1 as in a
trained model, larger projections): with the builder's near-zero norm gains the decoder
only repeats its last token, and a broken position, mask or cache would go unnoticed.
With these weights every token depends on the whole context, so any difference in
prompt, audio features, splicing, positions, cache handling or stopping changes tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from asr_worker.engine.base import DecodeOptions, DecodeRequest, SegmentRef

torch.set_num_threads(2)
pytestmark = pytest.mark.timeout(300)

#: New tokens per decode on both sides: random weights rarely stop by themselves.
MAX_TOKENS = 20
#: (file, start s, seconds) of real speech from the shared audio.
CLIPS = (("zh/damo.wav", 0.0, 2.5), ("zh/binhai.wav", 0.5, 2.0), ("synth/three_utterances.wav", 8.3, 3.0))
#: (options, FunASR's own language name for them).
OPTIONS = (
    (DecodeOptions(), None),
    (DecodeOptions(hotwords=("达摩院", "阿里巴巴"), language="zh"), "中文"),
    (DecodeOptions(language="en", itn=False), "英文"),
    (DecodeOptions(hotwords=("滨海新区",), language="ja"), "日文"),
    (DecodeOptions(language="auto", itn=False), None),
)


def _clip(shared_audio: Path, name: str, start: float, seconds: float) -> np.ndarray:
    import soundfile as sf

    data, rate = sf.read(str(shared_audio / name), dtype="float32")
    assert rate == 16000
    return np.ascontiguousarray(data[int(start * rate) : int((start + seconds) * rate)])


@pytest.fixture(scope="module")
def cases(shared_audio: Path) -> list[tuple[DecodeRequest, str | None]]:
    """Every clip with every option set: (final request, FunASR language name)."""
    out = []
    for k, (name, start, seconds) in enumerate(CLIPS):
        audio = _clip(shared_audio, name, start, seconds)
        for j, (opts, lang) in enumerate(OPTIONS):
            if (j + k) % 2 == 0 or j == 0:  # a spread of the combinations, to stay fast
                out.append((DecodeRequest(audio, opts, "final"), lang))
    return out


@pytest.fixture(scope="module")
def funasr_reference(sharp_model_dir: Path, no_network, cases) -> list[tuple[str, list[int]]]:
    """FunASR's own AutoModel.generate (text, generated token ids) for every case."""
    from funasr import AutoModel

    from asr_worker.models import build_funasr_kwargs

    # Only the paths FunASR cannot resolve by itself from a local directory: the LLM dir
    # (config.yaml names it relatively) and the CTC vocabulary; dither off as in inference.
    paths = build_funasr_kwargs(sharp_model_dir)
    overrides = {k: paths[k] for k in ("llm_conf", "tokenizer_conf", "frontend_conf", "dataset_conf")}
    auto = AutoModel(model=str(sharp_model_dir), device="cpu", disable_update=True, disable_pbar=True,
                     disable_log=True, **overrides)
    # Its CTC timestamp step needs torchaudio (not installed); the text does not depend on it.
    auto.model.ctc_decoder = None
    # Record the ids its own llm.generate returns: random weights often decode to bytes
    # that are not UTF-8, whose text ("\ufffd") would hide which tokens they were.
    llm = auto.model.llm
    real_generate = llm.generate
    seen: list[list[int]] = []

    def recording_generate(*args, **kwargs):
        out = real_generate(*args, **kwargs)
        seen.append(out[0].tolist())
        return out

    llm.generate = recording_generate
    eos = llm.generation_config.eos_token_id
    stops = set(eos if isinstance(eos, list) else [eos])
    refs = []
    for req, lang in cases:
        res = auto.generate(
            input=[torch.from_numpy(req.audio)],
            hotwords=list(req.options.hotwords),
            language=lang,
            itn=req.options.itn,
            max_length=MAX_TOKENS,
        )
        ids = seen.pop()
        while ids and ids[-1] in stops:  # generate keeps the stop token; the engine drops it
            ids.pop()
        refs.append((res[0]["text"].strip(), ids))
    return refs


@pytest.fixture(scope="module")
def reference(funasr_reference) -> list[str]:
    """FunASR's text for every case."""
    return [text for text, _ in funasr_reference]


@pytest.fixture(scope="module")
def reference_ids(funasr_reference) -> list[list[int]]:
    """FunASR's generated token ids for every case (stop token removed)."""
    return [ids for _, ids in funasr_reference]


@pytest.fixture(scope="module")
def engine(sharp_model_dir: Path, no_network):
    from asr_worker.models import load_engine

    # The same cap as FunASR's max_length, and no per-second cap (FunASR has none).
    eng = load_engine(sharp_model_dir, "cpu", max_new_tokens=MAX_TOKENS, max_tokens_per_second=0)
    eng.warmup()
    return eng


def test_reference_outputs_depend_on_audio_and_options(reference_ids):
    distinct = {tuple(ids) for ids in reference_ids}
    assert len(distinct) == len(reference_ids), f"outputs repeat, so they prove little: {reference_ids}"
    assert all(reference_ids), "FunASR generated nothing"


def test_final_decoded_alone_equals_funasr(engine, cases, reference, reference_ids):
    for (req, _), want, want_ids in zip(cases, reference, reference_ids, strict=True):
        assert engine.decode_batch([req])[0].text == want, req.options
        assert engine.last_generated[0] == want_ids, req.options


def test_finals_decoded_in_one_batch_equal_funasr(engine, cases, reference, reference_ids):
    got = engine.decode_batch([req for req, _ in cases])
    assert [r.text for r in got] == reference
    assert engine.last_generated == reference_ids


def test_finals_joining_a_running_batch_equal_funasr(engine, cases, reference):
    requests = [req for req, _ in cases]
    half = len(requests) // 2
    done: dict[int, str] = {}
    first = engine.add_requests(requests[:half])
    for _ in range(5):  # the first half is mid-way when the rest joins
        done.update((h, r.text) for h, r in engine.step())
    later = engine.add_requests(requests[half:])
    while engine.active:
        done.update((h, r.text) for h, r in engine.step())
    assert [done[h] for h in first + later] == reference


def test_finals_drafted_from_their_segments_partial_equal_funasr(engine, cases, reference, reference_ids):
    """Each final is verified against its segment's last partial answer (engine/drafts.py)
    instead of decoded token by token; its tokens must still be FunASR's."""
    from dataclasses import replace

    segments = [SegmentRef(("parity", i), 0) for i in range(len(cases))]
    # Partials over the whole clip (the draft is the whole answer) and over its first two
    # thirds (the answer differs from some token on), in one batch.
    engine.decode_batch([
        DecodeRequest(req.audio if i % 2 else req.audio[: req.audio.size * 2 // 3], req.options, "partial",
                      segment=seg)
        for i, ((req, _), seg) in enumerate(zip(cases, segments, strict=True))
    ])
    work = engine.work
    proposed, accepted = work.draft_proposed.get("final", 0), work.draft_accepted.get("final", 0)
    finals = [replace(req, segment=seg) for (req, _), seg in zip(cases, segments, strict=True)]
    got = engine.decode_batch(finals)
    assert [r.text for r in got] == reference
    assert engine.last_generated == reference_ids
    assert work.draft_proposed["final"] - proposed >= sum(len(ids) for ids in reference_ids[1::2])
    assert work.draft_accepted["final"] > accepted


def test_partial_with_prefix_keeps_it_and_generates_only_the_tail(engine, cases, reference):
    req = cases[0][0]
    full = reference[0]
    prefix = full[:4]
    before = dict(engine.work.generated_tokens)
    partial = DecodeRequest(req.audio, req.options, "partial", prefix=prefix)
    result = engine.decode_batch([partial])[0]
    assert result.text.startswith(prefix)
    prompt_ids = engine.last_input_ids[0]
    assert engine.tokenizer.decode(prompt_ids[-len(engine.tokenizer.encode(prefix)):]) == prefix
    generated = engine.work.generated_tokens["partial"] - before.get("partial", 0)
    assert generated == len(engine.last_generated[0]) or generated == len(engine.last_generated[0]) + 1
    # A final ignores any prefix: it is the full decode, still equal to FunASR.
    final = DecodeRequest(req.audio, req.options, "final", prefix="不相干")
    assert engine.decode_batch([final])[0].text == full


async def test_finals_through_the_scheduler_equal_funasr(engine, cases, reference):
    import asyncio

    from asr_worker.scheduler import Scheduler

    sched = Scheduler(engine, max_batch_size=4, batch_window_ms=0)
    await sched.start()
    try:
        assert sched.stepping
        tickets = []
        for i, (req, _) in enumerate(cases):  # arriving while others decode
            tickets.append(sched.submit(req, stream_key=i))
            await asyncio.sleep(0.01)
        results = await asyncio.gather(*(t.future for t in tickets))
        assert [r.text for r in results] == reference
        assert max(sched.batch_sizes) > 1
    finally:
        await sched.stop()


def test_decode_batch_while_requests_run_keeps_their_results(engine, cases, reference):
    running = engine.add_requests([cases[0][0]])
    assert engine.decode_batch([cases[1][0]])[0].text == reference[1]
    done = {}
    while engine.active:
        done.update(engine.step())
    assert done[running[0]].text == reference[0]
