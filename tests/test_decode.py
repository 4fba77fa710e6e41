"""The one llama.cpp decoding loop (``llamatune.decode``) on the tiny GGUF: several sequences in one context give the
tokens of one at a time, each keeps its own stop rule, budget and sampler, finished sequences give their slot and
cells to the next, a full KV cache pauses a sequence instead of failing, and ARC-style scoring shares a question's
cells among its choices. The slow test repeats the equality on a real SmolLM2 GGUF."""

from __future__ import annotations

import pytest

from tests.conftest import requires

pytestmark = requires("llama_cpp")

HEAD = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
TAIL = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
ASKS = ["Hello", "What is the capital of France?", "2+2?", "Name three colours", "Tell me about cats", "Hi"]


@pytest.fixture(scope="module")
def gguf(tiny_gguf):
    return str(tiny_gguf["f16"])


@pytest.fixture(scope="module")
def one(gguf):
    """A one-slot decoder (the sequential reference); 1 thread: the test machine is shared."""
    from llamatune.runtime import open_decoder

    dec = open_decoder(gguf, n_seq=1, n_ctx=1024, n_threads=1)
    yield dec
    dec.close()
    dec.llm.close()


def _ids(dec, asks=ASKS):
    return [dec.llm.tokenize((HEAD + a + TAIL).encode(), add_bos=False, special=True) for a in asks]


def _alone(dec, requests):
    """Each request decoded on its own, from an empty cache."""
    out = []
    for r in requests:
        dec.clear()
        out.append(dec.generate([r])[0])
    return out


def _decoder(gguf, n_seq, **kw):
    from llamatune.runtime import open_decoder

    return open_decoder(gguf, n_seq=n_seq, n_ctx=kw.pop("n_ctx", 512), n_threads=1, **kw)


def test_one_slot_gives_llama_generate_greedy_tokens(one):
    """The loop decodes what ``Llama.generate`` (the path it replaced) decodes, token for token."""
    import llama_cpp

    from llamatune.decode import Request

    for ids in _ids(one)[:3]:
        one.clear()
        one.llm.reset()
        ref = []
        for tok in one.llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            if llama_cpp.llama_vocab_is_eog(one.vocab, tok) or len(ref) == 10:
                break
            ref.append(tok)
        one.clear()
        assert one.generate([Request(ids, max_tokens=10)])[0].ids == ref


@pytest.mark.parametrize("n_seq", [3, 8])  # fewer slots than prompts (continuous batching), more (idle slots)
def test_batched_equals_one_at_a_time(gguf, one, n_seq):
    from llamatune.decode import Request

    reqs = [Request(ids, max_tokens=4 + 2 * i) for i, ids in enumerate(_ids(one))]
    ref = _alone(one, reqs)
    dec = _decoder(gguf, n_seq)
    try:
        got = dec.generate(reqs)
        assert [s.ids for s in got] == [s.ids for s in ref]
        assert [s.text for s in got] == [s.text for s in ref] and all(s.finish == "length" for s in got)
        assert [s.generated for s in got] == [r.max_tokens for r in reqs]
        # the slots ran together: fewer llama_decode calls than tokens generated
        assert dec.n_steps < sum(r.max_tokens for r in reqs)
    finally:
        dec.close()


def test_stop_rules_are_per_sequence(gguf, one):
    """In one batch: a stop string, a budget, an end-of-generation token and a stop predicate, each for one
    sequence only; the others run on."""
    import llama_cpp

    from llamatune.decode import Request

    ids = _ids(one)
    free = _alone(one, [Request(i, max_tokens=12) for i in ids[:4]])
    eot = one.llm.tokenize(b"<|eot_id|>", add_bos=False, special=True)[0]

    def force_eot(dec):
        from llama_cpp._internals import LlamaSampler

        chain = LlamaSampler()
        chain.add_logit_bias(dec.n_vocab, {eot: 1000.0})
        chain.add_greedy()
        return chain

    word = free[0].text[3:6]
    assert word and free[0].text.find(word) == 3
    reqs = [Request(ids[0], max_tokens=12, stop=[word]),  # cut before the stop string
            Request(ids[1], max_tokens=3),  # budget
            Request(ids[2], max_tokens=12, sampler=force_eot),  # end of generation at once
            Request(ids[3], max_tokens=12, stop_when=lambda text: len(text) >= 5),  # predicate: text kept whole
            Request(ids[0], max_tokens=12)]  # no rule but the budget
    dec = _decoder(gguf, 5)
    try:
        a, b, c, d, e = dec.generate(reqs)
    finally:
        dec.close()
    assert (a.text, a.finish) == (free[0].text[:3], "stop") and a.generated < 12
    assert (b.ids, b.finish, b.generated) == (free[1].ids[:3], "length", 3)
    assert (c.text, c.ids, c.finish, c.generated) == ("", [], "stop", 1) and llama_cpp.llama_vocab_is_eog(
        one.vocab, eot)
    assert d.finish == "stop" and len(d.text) >= 5 and free[3].text.startswith(d.text) and d.generated < 12
    assert (e.ids, e.finish) == (free[0].ids, "length")


def test_stream_deltas_add_up_to_the_text_and_hold_back_stop_strings(gguf, one):
    from llamatune.decode import Request

    ids = _ids(one)
    whole = _alone(one, [Request(ids[1], max_tokens=10)])[0].text
    stop = whole[4:7]
    dec = _decoder(gguf, 3)
    try:
        reqs = [Request(ids[0], max_tokens=6, tag=0), Request(ids[1], max_tokens=10, tag=1),
                Request(ids[1], max_tokens=10, stop=[stop], tag=2)]
        pieces: dict[int, list[str]] = {0: [], 1: [], 2: []}
        for ev in dec.run(reqs):
            pieces[ev.seq.request.tag].append(ev.text)
            assert stop not in "".join(pieces[2])  # never shown, not even in part of a later delta
        assert "".join(pieces[1]) == whole and "".join(pieces[2]) == whole[:whole.find(stop)]
    finally:
        dec.close()


def test_a_finished_sequence_gives_its_slot_and_cells_to_the_next(gguf, one):
    from llamatune.decode import Request

    long_prompt = one.llm.tokenize((HEAD + "Tell me a long story about a cat " * 6 + TAIL).encode(), add_bos=False,
                                   special=True)
    short = _ids(one, ["Hi"])[0]
    dec = _decoder(gguf, 2)
    try:
        seqs = [dec.submit(Request(_ids(one)[1], max_tokens=12)), dec.submit(Request(long_prompt, max_tokens=2)),
                dec.submit(Request(short, max_tokens=4))]
        slots = {}
        while dec.busy():
            for ev in dec.step():
                slots.setdefault(ev.seq.index, ev.seq.slot)
        assert all(s.done for s in seqs) and slots[2] == slots[1]  # the short request took the freed slot
        slot = slots[2]
        # the slot holds the new sequence only: the long prompt's cells beyond the shared header are gone
        assert dec.seq_pos_max(slot) == len(dec.slots[slot].tokens) - 1 == len(short) + 4 - 2
        assert dec.slots[slot].tokens[:len(short)] == short and seqs[2].cached_tokens < len(short)
        dec.clear()
        assert [dec.seq_pos_max(i) for i in range(2)] == [-1, -1]
    finally:
        dec.close()


def test_a_full_kv_cache_pauses_a_sequence_and_resumes_it_exactly(gguf, one):
    """A unified cache too small for every sequence at once: the newest is paused (cells freed) and resumed from its
    tokens later; the outputs are those of one at a time."""
    from llamatune.decode import Request

    reqs = [Request(ids, max_tokens=60) for ids in _ids(one)[:4]]
    ref = _alone(one, reqs)
    dec = _decoder(gguf, 4, n_ctx=256, unified=True)
    try:
        assert sum(len(r.ids) + r.max_tokens for r in reqs) > dec.n_ctx  # they cannot all fit
        assert [s.ids for s in dec.generate(reqs)] == [s.ids for s in ref]
        assert dec.n_paused >= 1
    finally:
        dec.close()


def test_prefix_is_shared_between_slots(gguf, one):
    """Sorted prompts that share a long system text: it is evaluated once and copied into the other slots."""
    from llamatune.decode import Request

    system = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + "Be brief and exact. " * 20 + \
             "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
    ids = [one.llm.tokenize((system + a + TAIL).encode(), add_bos=False, special=True) for a in ASKS[:4]]
    reqs = [Request(i, max_tokens=3) for i in ids]
    ref = _alone(one, reqs)
    for unified in (False, True):
        dec = _decoder(gguf, 4, unified=unified)
        try:
            got = dec.generate(reqs)
            assert [s.ids for s in got] == [s.ids for s in ref]
            shared = sum(s.cached_tokens for s in got)
            assert shared >= 3 * 100 and dec.n_evaluated <= sum(map(len, ids)) - shared + 4 * 3
        finally:
            dec.close()


def test_a_sampler_hook_bans_a_token_for_one_sequence_only(gguf, one):
    from llamatune.decode import Request

    ids = _ids(one)[1]
    first = _alone(one, [Request(ids, max_tokens=3)])[0].ids

    def ban(dec):
        from llama_cpp._internals import LlamaSampler

        chain = LlamaSampler()
        chain.add_logit_bias(dec.n_vocab, {first[0]: float("-inf")})
        chain.add_greedy()
        return chain

    dec = _decoder(gguf, 2)
    try:
        plain, banned = dec.generate([Request(ids, max_tokens=3), Request(ids, max_tokens=3, sampler=ban)])
    finally:
        dec.close()
    assert plain.ids == first and banned.ids[0] != first[0] and first[0] not in banned.ids


def test_loglik_shares_the_question_and_matches_full_evaluation(gguf):
    """Each choice's log-likelihood equals a log-softmax of the logits of the whole sequence evaluated alone."""
    import numpy as np

    from llamatune.evals.llamacpp_lm import log_softmax, loglik
    from llamatune.runtime import open_llama, prompt_logits

    full = open_llama(gguf, n_ctx=512, n_threads=1, logits_all=True)
    dec = _decoder(gguf, 16, unified=True)
    try:
        tok = lambda t: dec.llm.tokenize(t.encode(), add_bos=False, special=False)  # noqa: E731
        reqs = []
        for q in ("Question: Which gas do plants take in?\nAnswer:", "Question: What is 2 + 2?\nAnswer:"):
            reqs += [(tok(q), tok(c)) for c in (" oxygen", " carbon dioxide", " four", " a")]
        got = loglik(dec, reqs, pack=2)
        # each question once, each choice's tokens but the last (whose logits nothing needs)
        assert dec.n_evaluated == len(reqs[0][0]) + len(reqs[4][0]) + sum(len(x) - 1 for _, x in reqs)
        for (ctx, cont), (lp, greedy) in zip(reqs, got):
            rows = prompt_logits(full, ctx + cont)[len(ctx) - 1:-1]
            want = log_softmax(rows)[np.arange(len(cont)), cont].sum()
            assert lp == pytest.approx(want, abs=2e-3)
            assert greedy == bool(np.all(rows.argmax(-1) == cont))
    finally:
        dec.close()
        full.close()


def test_generator_batches_and_yields_each_answer_when_ready(gguf, one):
    from llamatune.generate import LlamaCppGenerator
    from llamatune.model_spec import parse_spec

    prompts = [HEAD + a + TAIL for a in ASKS]
    outs = {}
    for batch in (1, 4):
        gen = LlamaCppGenerator(parse_spec(gguf), n_ctx=512, n_threads=1, batch=batch)
        try:
            assert gen.batch_size == batch and gen.decoder.n_seq == batch
            outs[batch] = dict(gen.complete_each(prompts, max_tokens=6))
            assert gen.complete_batch(prompts[:2], max_tokens=6) == [outs[batch][0], outs[batch][1]]
            with pytest.raises(ValueError, match="does not fit"):
                gen.complete(prompts[0], max_tokens=600)
        finally:
            gen.close()
    assert outs[1] == outs[4] and sorted(outs[4]) == list(range(len(prompts)))


def test_toolcall_eval_batched_writes_each_item_as_it_finishes(gguf, tmp_path, monkeypatch):
    """``eval toolcall --batch 3``: the outputs of batch 1, the batch in the results, and every finished item in the
    cache at once, so a run killed half way resumes with the rest only."""
    from llamatune.evals import toolcall
    from tests.test_toolcall_eval import _short_test_set

    _short_test_set(tmp_path / "data", 5)
    data = tmp_path / "data" / "eval.jsonl"
    one = toolcall.evaluate(gguf, data, tmp_path / "one" / "r.json", max_tokens=5, n_threads=1, batch=1)
    real_load, made = toolcall._load, []

    def load_then_die_after_two(*a, **k):
        gen = real_load(*a, **k)
        real_each = gen.complete_each

        def each(prompts, max_tokens):
            for n, item in enumerate(real_each(prompts, max_tokens)):
                if n == 2:
                    raise KeyboardInterrupt  # a kill: two items decoded and written
                yield item
        made.append(gen.batch_size)
        gen.complete_each = each
        return gen

    monkeypatch.setattr(toolcall, "_load", load_then_die_after_two)
    out = tmp_path / "three" / "r.json"
    with pytest.raises(KeyboardInterrupt):
        toolcall.evaluate(gguf, data, out, max_tokens=5, n_threads=1, batch=3)
    assert made == [3] and len(out.with_suffix(".generations.jsonl").read_text().splitlines()) == 2
    monkeypatch.setattr(toolcall, "_load", real_load)
    res = toolcall.evaluate(gguf, data, out, max_tokens=5, n_threads=1, batch=3)
    assert [i["output"] for i in res["items"]] == [i["output"] for i in one["items"]]
    assert (res["decode_batch"], one["decode_batch"]) == (3, 1)
    assert len(out.with_suffix(".generations.jsonl").read_text().splitlines()) == 5


@pytest.mark.slow
def test_smollm2_batched_equals_sequential():
    """On a real model (SmolLM2-135M-Instruct, f16): the tool-call eval's prompts decoded 8 at a time give the
    greedy outputs of one at a time (batched matmuls may round differently: at most one item in 16 may differ,
    and then only after several identical tokens)."""
    import sys

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "bench"))
    from decode_batch import demo_items, smollm2_f16

    from llamatune.evals.toolcall import build_prompt
    from llamatune.generate import LlamaCppGenerator
    from llamatune.model_spec import parse_spec

    prompts = sorted(build_prompt(r, 0, "smollm2") for r in demo_items()[:16])
    outs = {}
    for batch in (1, 8):
        gen = LlamaCppGenerator(parse_spec(str(smollm2_f16())), n_ctx=2048, batch=batch)
        try:
            outs[batch] = gen.complete_batch(prompts, max_tokens=24)
        finally:
            gen.close()
    same = sum(a == b for a, b in zip(outs[1], outs[8]))
    assert same >= 15, [(a, b) for a, b in zip(outs[1], outs[8]) if a != b]
