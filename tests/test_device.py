"""Precision and placement by device capability (llamatune.device): a T4, an A100, an H100 and a CPU, and the
callers that load models (training precision, fidelity, HF generation, ARC, llama.cpp) follow the choice."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from llamatune import device
from llamatune.device import Placement, n_gpu_layers, placement_for

T4, A100, H100 = ((7, 5), 15.0), ((8, 0), 80.0), ((9, 0), 80.0)


@pytest.mark.parametrize("gpu, dtype, batch", [
    (T4, "float16", 8),       # Colab's free T4: bf16 only emulated, so fp16
    (((8, 0), 40.0), "bfloat16", 16),  # A100 40 GB
    (A100, "bfloat16", 32),
    (H100, "bfloat16", 32),
])
def test_gpu_placement_is_half_precision_on_the_gpu(gpu, dtype, batch):
    import torch

    p = placement_for(*gpu)
    assert (p.device, p.dtype, p.gen_batch_size, p.on_gpu) == ("cuda:0", dtype, batch, True)
    # loaded straight onto the GPU in half precision: never float32 on the CPU first
    assert p.hf_kwargs() == {"dtype": getattr(torch, dtype), "device_map": "cuda:0"}


def test_cpu_placement_is_float32_one_prompt_at_a_time():
    import torch

    p = placement_for(None)
    assert p == Placement("cpu", "float32", 1) and not p.on_gpu
    assert p.hf_kwargs() == {"dtype": torch.float32}  # no device_map: transformers' CPU default


def fake_cuda(monkeypatch, gpu):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu is not None)
    if gpu is not None:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: gpu[0])
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda *a: SimpleNamespace(total_memory=int(gpu[1] * 2**30), name="fake"))
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what a T4 answers (emulation)


@pytest.mark.parametrize("gpu, dtype, bf16, fp16", [
    (T4, "float16", False, True),
    (A100, "bfloat16", True, False),
    (H100, "bfloat16", True, False),
    (None, "float32", False, False),  # a CPU without native bf16 (the flags below)
])
def test_training_precision_follows_the_compute_capability(monkeypatch, gpu, dtype, bf16, fp16):
    from llamatune.train_fast import resolve_precision

    fake_cuda(monkeypatch, gpu)
    monkeypatch.setattr(device, "cpu_flags", lambda *a: AVX2)
    assert device.this_placement().dtype == device.device_dtype() == device.this_train_precision().dtype == dtype
    sft: dict = {}
    assert resolve_precision({"dtype": "auto"}, sft, [])[0] == dtype
    assert (sft["bf16"], sft["fp16"]) == (bf16, fp16)
    sft = {"bf16": False}  # a recipe's own choice stands
    got, record = resolve_precision({"dtype": "float32"}, sft, [])
    assert got == "float32" and sft == {"bf16": False, "fp16": False} and record["chosen_by"] == "recipe"


# /proc/cpuinfo flags of the three kinds of CPU these sessions get (trimmed to what matters)
AMX = frozenset("fpu sse4_2 avx avx2 fma f16c avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8".split())
AVX512_BF16 = frozenset("fpu sse4_2 avx avx2 fma f16c avx512f avx512_vnni avx512_bf16".split())  # e.g. AMD Zen 4
AVX2 = frozenset("fpu sse4_2 avx avx2 fma f16c".split())  # e.g. AMD EPYC Zen 2/3: bf16 only emulated


@pytest.mark.parametrize("flags, dtype, deciding", [
    (AMX, "bfloat16", ["amx_bf16", "avx512_bf16"]),
    (AVX512_BF16, "bfloat16", ["avx512_bf16"]),
    (AVX2, "float32", []),
    (frozenset(), "float32", []),  # no flags known (not Linux)
])
def test_cpu_training_precision_by_the_cpu_flags(flags, dtype, deciding):
    rule = device.train_precision(None, flags)
    assert (rule.dtype, rule.device, list(rule.cpu_flags)) == (dtype, "cpu", deciding)
    assert all(f in rule.reason for f in deciding)
    assert device.placement_for(None).dtype == "float32"  # inference on a CPU stays fp32 (fidelity, ARC, HF gen)


@pytest.mark.parametrize("flags, recipe, weights, compute, chosen_by", [
    (AMX, {}, "bfloat16", "bfloat16", "device rule"),
    (AVX512_BF16, {}, "bfloat16", "bfloat16", "device rule"),
    (AVX2, {}, "float32", "float32", "device rule"),
    (AMX, {"bf16": False}, "float32", "float32", "recipe"),  # the recipe overrides: fp32 weights and compute
    (AVX2, {"bf16": True}, "bfloat16", "bfloat16", "recipe"),
])
def test_cpu_training_run_follows_the_rule_unless_the_recipe_says(flags, recipe, weights, compute, chosen_by):
    from llamatune.train_fast import resolve_precision

    sft = dict(recipe)
    got, record = resolve_precision({"dtype": "auto"}, sft, [], precision=device.train_precision(None, flags))
    assert got == weights and sft["bf16"] == (compute == "bfloat16") and not sft["fp16"]
    assert (record["weights"], record["compute"], record["chosen_by"]) == (weights, compute, chosen_by)
    assert record["device_rule"] == ("bfloat16" if flags != AVX2 else "float32") and record["cpu"]


def test_cpu_flags_come_from_cpuinfo(monkeypatch):
    text = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 amx_bf16 avx512_bf16\n\nprocessor\t: 1\n"
    assert device.cpu_flags(text) == {"fpu", "avx2", "amx_bf16", "avx512_bf16"}
    assert device.cpu_flags("processor : 0\nFeatures : fp asimd bf16\n") == {"fp", "asimd", "bf16"}  # arm64
    assert device.cpu_flags("") == frozenset()
    assert device.train_precision(None, device.cpu_flags("Features : fp asimd bf16\n")).dtype == "float32"
    assert isinstance(device.cpu_flags(), frozenset)  # this machine's, whatever it is


def test_llama_cpp_offloads_every_layer_only_with_a_gpu_build_and_a_gpu(monkeypatch):
    monkeypatch.delenv("LLAMATUNE_N_GPU_LAYERS", raising=False)
    assert n_gpu_layers(offload_supported=True, cuda_available=True) == -1
    assert n_gpu_layers(offload_supported=True, cuda_available=False) == 0
    assert n_gpu_layers(offload_supported=False, cuda_available=True) == 0  # a CPU build on a GPU machine
    import llama_cpp

    # this machine's llama-cpp-python is the CPU build: it says so, and nothing is offloaded
    assert llama_cpp.llama_supports_gpu_offload() is False and n_gpu_layers() == 0
    monkeypatch.setenv("LLAMATUNE_N_GPU_LAYERS", "20")
    assert n_gpu_layers(offload_supported=False) == 20
    monkeypatch.setenv("LLAMATUNE_N_GPU_LAYERS", "all")
    with pytest.raises(ValueError, match="LLAMATUNE_N_GPU_LAYERS"):
        n_gpu_layers()


class Loaded(Exception):
    pass


def record_from_pretrained(monkeypatch):
    """AutoModelForCausalLM.from_pretrained records its kwargs and stops (no 3B model is loaded here)."""
    import transformers

    seen = {}

    def fake(path, **kw):
        seen.update(kw, path=path)
        raise Loaded

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", staticmethod(fake))
    return seen


def test_an_optional_dependency_is_importable_only_when_it_can_be_imported(monkeypatch):
    import sys
    import types

    assert device.importable("json") and not device.importable("no_such_package_xyz")
    assert not device.importable("no_such_package_xyz.sub")  # a missing parent is "not importable", not an error
    stub = types.ModuleType("vllm_stub_for_test")  # a test's stand-in: in sys.modules, with no spec
    monkeypatch.setitem(sys.modules, "vllm_stub_for_test", stub)
    assert stub.__spec__ is None and device.importable("vllm_stub_for_test")


@pytest.mark.parametrize("gpu", [T4, A100])
def test_fidelity_and_hf_generation_load_onto_the_gpu_in_half_precision(monkeypatch, tiny_model_dir, gpu):
    import torch

    from llamatune.fidelity import hf_reference
    from llamatune.generate import HFGenerator
    from llamatune.model_spec import ModelSpec

    fake_cuda(monkeypatch, gpu)
    want = {"dtype": torch.float16 if gpu == T4 else torch.bfloat16, "device_map": "cuda:0"}
    for load in (lambda: hf_reference(tiny_model_dir, {"p": "hi"}, ["hi"]),
                 lambda: HFGenerator(ModelSpec("hf", str(tiny_model_dir)))):
        seen = record_from_pretrained(monkeypatch)
        with pytest.raises(Loaded):
            load()
        assert {k: seen[k] for k in want} == want


def test_arc_hf_backend_runs_on_the_placement_device(monkeypatch, tiny_model_dir):
    import lm_eval.models.huggingface as hf

    from llamatune.evals.arc import make_lm

    fake_cuda(monkeypatch, T4)
    seen = {}
    monkeypatch.setattr(hf, "HFLM", lambda **kw: seen.update(kw) or "lm")
    lm, info, _ = make_lm(str(tiny_model_dir))
    assert lm == "lm" and info["backend"] == "hf"
    assert (seen["device"], seen["dtype"]) == ("cuda:0", "float16")


def test_batched_hf_generation_answers_like_one_at_a_time(tiny_model_dir, tmp_path):
    """Left-padded batches give the greedy answers of one-prompt calls, and the cache resumes between them."""
    from llamatune.generate import HFGenerator, generate_cached
    from llamatune.model_spec import ModelSpec
    from llamatune.jsonl import read_jsonl

    prompts = [{"id": f"p{i}", "messages": [{"role": "user", "content": text}]}
               for i, text in enumerate(["Hi", "What is the capital of France, and why is it there?", "2+2?",
                                         "Name three colours", "Tell me a story about a cat in a hat"])]
    gen = HFGenerator(ModelSpec("hf", str(tiny_model_dir)), batch_size=3)
    assert gen.placement.device == "cpu" and gen.tok.padding_side == "left"
    one = [gen.generate(p["messages"], max_tokens=8) for p in prompts]
    assert gen.generate_batch([(p["messages"], None) for p in prompts], max_tokens=8) == one
    cache = tmp_path / "answers.jsonl"
    first = generate_cached(gen, prompts[:2], cache, max_tokens=8, progress=False)
    calls = []
    real = gen.generate_batch
    gen.generate_batch = lambda convs, **kw: calls.append(len(convs)) or real(convs, **kw)
    out = generate_cached(gen, prompts, cache, max_tokens=8, progress=False)
    assert calls == [3]  # the two cached answers are not regenerated; the three others go in one batch
    assert out == {**first, **{p["id"]: a for p, a in zip(prompts, one)}} and list(out.values()) == one
    assert len(read_jsonl(cache)) == 5
