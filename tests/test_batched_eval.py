"""Evaluation generation in batches: HF ``complete_batch`` (the tool-call eval's path) equals one prompt at a time,
``eval toolcall`` sends its missing items a batch at a time with unchanged cache keys, the optional vLLM backend
(a fake ``vllm`` module here: vLLM needs CUDA) gets the project's prompts and settings and returns answers in
order through the same caches, and ``eval arc`` builds lm-eval's ``hf`` / ``vllm`` model arguments."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.test_toolcall_eval import _short_test_set

pytest.importorskip("transformers")


# --- a fake vllm ------------------------------------------------------------------------------------------------
class FakeSamplingParams:
    def __init__(self, **kw):
        self.kw = kw


class FakeLoRARequest:
    def __init__(self, name, int_id, path):
        self.args = (name, int_id, path)


def fake_vllm(monkeypatch, tokenizer_dir, reply):
    """Install a fake ``vllm`` (``LLM``, ``SamplingParams``, ``vllm.lora.request.LoRARequest``) in sys.modules.
    ``reply(token_ids, i)`` makes the i-th output's text. Returns the list of LLM instances created."""
    from transformers import AutoTokenizer

    made = []

    class LLM:
        def __init__(self, **kw):
            self.kw, self.calls = kw, []
            self.tok = AutoTokenizer.from_pretrained(tokenizer_dir)
            made.append(self)

        def get_tokenizer(self):
            return self.tok

        def generate(self, prompts, params, use_tqdm=True, lora_request=None):
            self.calls.append({"prompts": prompts, "params": params.kw, "lora": lora_request, "tqdm": use_tqdm})
            return [SimpleNamespace(outputs=[SimpleNamespace(text=reply(p["prompt_token_ids"], i))])
                    for i, p in enumerate(prompts)]

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, FakeSamplingParams
    lora, request = types.ModuleType("vllm.lora"), types.ModuleType("vllm.lora.request")
    request.LoRARequest = FakeLoRARequest
    for name, mod in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, mod)
    return made


def read_jsonl(path) -> list[dict]:
    """The rows of a cache file (read here, so the test does not depend on where the store lives)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


PROMPTS = [{"id": f"p{i}", "messages": [{"role": "user", "content": text}]}
           for i, text in enumerate(["Hi", "What is the capital of France?", "2+2?", "Name three colours"])]


# --- HF -----------------------------------------------------------------------------------------------------
def test_hf_complete_batch_equals_one_prompt_at_a_time(tiny_model_dir):
    from llamatune.chat import render
    from llamatune.generate import HFGenerator
    from llamatune.model_spec import ModelSpec

    gen = HFGenerator(ModelSpec("hf", str(tiny_model_dir)), batch_size=3)
    texts = [render(p["messages"], None, add_generation_prompt=True, date_string="26 Jul 2024") for p in PROMPTS]
    assert len({len(gen.tok(t).input_ids) for t in texts}) > 1  # different lengths: the batch is really padded
    one = [gen.complete(t, max_tokens=6) for t in texts]
    assert gen.complete_batch(texts, max_tokens=6) == one
    assert all(isinstance(o, str) and "<|eot_id|>" not in o for o in one)


def test_toolcall_eval_sends_missing_items_in_batches_with_the_same_cache(tiny_model_dir, tmp_path, monkeypatch):
    """Batch 3 on the HF backend gives the outputs, results and cache keys of one-at-a-time; a rerun loads nothing."""
    from llamatune.evals import toolcall
    from llamatune.generate import HFGenerator
    from llamatune.model_spec import ModelSpec

    _short_test_set(tmp_path / "data", 4)
    data = tmp_path / "data" / "eval.jsonl"
    single = toolcall.evaluate(tiny_model_dir, data, tmp_path / "one" / "r.json", max_tokens=5)
    batches = []
    gen = HFGenerator(ModelSpec("hf", str(tiny_model_dir)), batch_size=3, template="llama-3.2")
    real = gen.complete_batch
    gen.complete_batch = lambda prompts, max_tokens: batches.append(len(prompts)) or real(prompts, max_tokens)
    monkeypatch.setattr(toolcall, "_load", lambda *a, **k: gen)
    batched = toolcall.evaluate(tiny_model_dir, data, tmp_path / "batch" / "r.json", max_tokens=5)
    assert batches == [3, 1]
    assert [i["output"] for i in batched["items"]] == [i["output"] for i in single["items"]]
    assert batched["aggregate"] == single["aggregate"]
    rows = {p: read_jsonl(tmp_path / p / "r.generations.jsonl") for p in ("one", "batch")}
    assert sorted(r["key"] for r in rows["one"]) == sorted(r["key"] for r in rows["batch"])
    assert {r["backend"] for r in rows["batch"]} == {"hf"}

    def boom(*a, **k):
        raise AssertionError("everything is cached: no model is loaded")

    monkeypatch.setattr(toolcall, "_load", boom)
    again = toolcall.evaluate(tiny_model_dir, data, tmp_path / "batch" / "r.json", max_tokens=5)
    assert [i["output"] for i in again["items"]] == [i["output"] for i in single["items"]]


# --- vLLM -----------------------------------------------------------------------------------------------------
def test_backend_choice(monkeypatch, tiny_model_dir, tmp_path):
    from llamatune import generate
    from llamatune.generate import choose_backend
    from llamatune.model_spec import ModelSpec

    hf = ModelSpec("hf", str(tiny_model_dir))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(generate, "has_vllm", lambda: False)
    assert choose_backend(hf, "auto", on_gpu=True) == "hf" and choose_backend(hf) == "hf"  # not installed / CPU
    with pytest.raises(RuntimeError, match=r"llamatune\[vllm\]"):
        choose_backend(hf, "vllm")
    monkeypatch.setattr(generate, "has_vllm", lambda: True)
    assert choose_backend(hf, "auto", on_gpu=True) == "vllm"
    assert choose_backend(hf, "auto", on_gpu=False) == "hf" and choose_backend(hf, "hf", on_gpu=True) == "hf"
    assert choose_backend(ModelSpec("gguf", str(gguf)), "auto", on_gpu=True) == "llamacpp"
    with pytest.raises(ValueError, match="llama.cpp"):
        choose_backend(ModelSpec("gguf", str(gguf)), "vllm")
    with pytest.raises(ValueError, match="choose one of"):
        choose_backend(hf, "tgi")


def test_vllm_generator_passes_the_project_prompts_and_returns_outputs_in_order(monkeypatch, tiny_model_dir,
                                                                                tmp_path):
    from llamatune.chat import render
    from llamatune.generate import generate_cached, load_generator

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 12}))
    made = fake_vllm(monkeypatch, tiny_model_dir, lambda ids, i: f" answer {i} of {len(ids)} tokens ")
    gen = load_generator(f"{tiny_model_dir}+peft={adapter}", backend="vllm")
    assert type(gen).__name__ == "VLLMGenerator" and gen.backend == "vllm"
    llm = made[0]
    assert llm.kw["model"] == str(tiny_model_dir) and llm.kw["seed"] == 0 and llm.kw["dtype"] == "float32"
    assert (llm.kw["enable_lora"], llm.kw["max_lora_rank"]) == (True, 16)  # r=12 → vLLM's next rank slot

    cache = tmp_path / "answers.jsonl"
    out = generate_cached(gen, PROMPTS, cache, max_tokens=7, progress=False)
    assert len(llm.calls) == 1  # every missing prompt in one generate() call: vLLM batches them
    call = llm.calls[0]
    texts = [render(p["messages"], None, add_generation_prompt=True, date_string="26 Jul 2024") for p in PROMPTS]
    ids = [llm.tok.encode(t, add_special_tokens=False) for t in texts]
    assert [p["prompt_token_ids"] for p in call["prompts"]] == ids
    bos = llm.tok.convert_tokens_to_ids("<|begin_of_text|>")
    assert all(x[0] == bos and x[1] != bos for x in ids)  # one BOS (the template's), not a second one
    eot = llm.tok.convert_tokens_to_ids("<|eot_id|>")
    assert call["params"]["max_tokens"] == 7 and call["params"]["temperature"] == 0.0
    assert eot in call["params"]["stop_token_ids"] and call["params"]["skip_special_tokens"] is True
    assert call["lora"].args == ("adapter", 1, str(adapter)) and call["tqdm"] is False
    assert out == {p["id"]: f"answer {i} of {len(ids[i])} tokens" for i, p in enumerate(PROMPTS)}  # in order
    assert {r["backend"] for r in read_jsonl(cache)} == {"vllm"}

    # the cache keys are the backends' common ones: a transformers generator of the same model reuses them
    from llamatune.generate import Generator

    class Other(Generator):
        spec, template, calls = gen.spec, "llama-3.2", 0

        def generate_batch(self, conversations, **kw):
            Other.calls += 1
            return ["x"] * len(conversations)

    assert generate_cached(Other(), PROMPTS, cache, max_tokens=7, progress=False) == out and Other.calls == 0

    # raw completions (the tool-call eval): special tokens kept, cut at the end of the turn
    made.clear()
    gen = load_generator(str(tiny_model_dir), backend="vllm")
    made[0].generate = lambda prompts, params, **kw: (made[0].calls.append(params.kw) or
                                                      [SimpleNamespace(outputs=[SimpleNamespace(
                                                          text=f"<|python_tag|>call{i}<|eot_id|>junk")])
                                                       for i in range(len(prompts))])
    assert gen.complete_batch(["a", "b"], max_tokens=9) == ["<|python_tag|>call0", "<|python_tag|>call1"]
    assert made[0].calls[0]["skip_special_tokens"] is False and made[0].calls[0]["max_tokens"] == 9
    assert "enable_lora" not in made[0].kw


def test_toolcall_eval_on_vllm_writes_the_same_files(monkeypatch, tiny_model_dir, tmp_path):
    from llamatune.evals import toolcall

    _short_test_set(tmp_path / "data", 3)
    data = tmp_path / "data" / "eval.jsonl"
    hf = toolcall.evaluate(tiny_model_dir, data, tmp_path / "hf" / "r.json", max_tokens=3, backend="hf")
    made = fake_vllm(monkeypatch, tiny_model_dir, lambda ids, i: "I can answer that without a tool.")
    res = toolcall.evaluate(tiny_model_dir, data, tmp_path / "vllm" / "r.json", max_tokens=3, backend="vllm")
    assert len(made) == 1 and len(made[0].calls) == 1 and len(made[0].calls[0]["prompts"]) == 3
    assert (tmp_path / "vllm" / "r.json").exists() and res["kind"] == "toolcall"
    assert [i["id"] for i in res["items"]] == [i["id"] for i in hf["items"]]
    assert all(i["output"] == "I can answer that without a tool." for i in res["items"])
    keys = {p: sorted(r["key"] for r in read_jsonl(tmp_path / p / "r.generations.jsonl")) for p in ("hf", "vllm")}
    assert keys["hf"] == keys["vllm"]


def test_judge_answers_go_through_the_chosen_backend(monkeypatch, tmp_path):
    """``run_judge(backend=...)`` hands the backend to the cached generation of both models."""
    from llamatune import generate
    from llamatune.evals import judge

    seen = []

    def fake_cached(spec, prompts, path, max_tokens=512, temperature=0.0, progress=True, backend="auto"):
        seen.append((spec.path, backend, path.name))
        raise KeyboardInterrupt  # stop before any judging

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setattr(generate, "generate_cached", fake_cached)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(KeyboardInterrupt):
        judge.run_judge([{"id": "1", "prompt": "hi"}], str(tmp_path / "a"), str(tmp_path / "b"), "gpt-x",
                        tmp_path / "out", backend="vllm")
    assert seen == [(str(tmp_path / "a"), "vllm", "answers.jsonl")]


# --- eval arc: lm-eval's hf / vllm models -----------------------------------------------------------------------
def test_arc_builds_lm_evals_hf_and_vllm_model_args(tmp_path):
    from llamatune.device import placement_for
    from llamatune.evals.arc import arc_backend, lm_eval_model_args, parse_model_args
    from llamatune.model_spec import ModelSpec

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 32}))
    spec = ModelSpec("hf", "meta-llama/Llama-3.2-3B-Instruct", str(adapter))
    a100 = placement_for((8, 0), 80.0)
    date = {"date_string": "26 Jul 2024"}
    assert lm_eval_model_args(spec, "hf", batch_size=16, placement=a100) == {
        "pretrained": spec.path, "peft": str(adapter), "dtype": "bfloat16", "device": "cuda:0", "batch_size": 16,
        "chat_template_args": date}
    extra = parse_model_args("tensor_parallel_size=2,gpu_memory_utilization=0.8")
    assert extra == {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.8}
    assert lm_eval_model_args(spec, "vllm", n_ctx=4096, placement=placement_for((7, 5), 15.0), extra=extra) == {
        "pretrained": spec.path, "dtype": "float16", "batch_size": "auto", "max_model_len": 4096, "seed": 0,
        "lora_local_path": str(adapter), "max_lora_rank": 32, "chat_template_args": date,
        "tensor_parallel_size": 2, "gpu_memory_utilization": 0.8}
    assert "lora_local_path" not in lm_eval_model_args(ModelSpec("hf", "m"), "vllm", placement=a100)
    assert [arc_backend("gguf", b) for b in ("auto", "inproc", "server")] == ["inproc", "inproc", "server"]
    assert [arc_backend("hf", b) for b in ("auto", "inproc", "hf", "vllm")] == ["hf", "hf", "hf", "vllm"]
    with pytest.raises(ValueError, match="scores HF models"):
        arc_backend("gguf", "vllm")
    with pytest.raises(ValueError, match="scores a GGUF"):
        arc_backend("hf", "server")


def test_arc_vllm_backend_constructs_lm_evals_vllm_model(monkeypatch, tiny_model_dir):
    """``--backend vllm`` hands the built arguments to lm-eval's ``VLLM`` class (a stand-in here: lm-eval's module
    imports vllm) and keys the response cache by backend."""
    from llamatune import cli
    from llamatune.evals import arc

    seen = {}
    mod = types.ModuleType("lm_eval.models.vllm_causallms")
    mod.VLLM = lambda **kw: seen.update(kw) or "vllm-lm"
    monkeypatch.setitem(sys.modules, "lm_eval.models.vllm_causallms", mod)
    lm, info, close = arc.make_lm(str(tiny_model_dir), backend="vllm", n_ctx=1024,
                                  model_args={"data_parallel_size": 4})
    assert lm == "vllm-lm" and info["backend"] == "vllm" and close() is None
    assert (seen["pretrained"], seen["max_model_len"], seen["data_parallel_size"]) == (str(tiny_model_dir), 1024, 4)
    assert info["model_args"]["data_parallel_size"] == 4

    ran = {}
    monkeypatch.setattr(arc, "run_arc", lambda model, out, **kw: ran.update(kw) or
                        {"kind": "arc", "name": "x", "task": kw["task"], "n": 0, "aggregate": {}, "path": "p"})
    assert cli.main(["eval", "arc", "--model", str(tiny_model_dir), "--out", "o", "--backend", "vllm",
                     "--model-args", "tensor_parallel_size=8"]) == 0
    assert ran["backend"] == "vllm" and ran["model_args"] == {"tensor_parallel_size": 8}
