"""Where a model runs and in what precision, chosen from the device's capability (one place for the rule).

* **dtype**: bfloat16 from CUDA compute capability 8.0 (A100, L4, RTX 30xx) on; float16 before it (a T4 is 7.5:
  ``torch.cuda.is_bf16_supported()`` says True there, by emulation, and unsloth then loads fp16 weights and
  stops at the first step asking for bf16); float32 on a CPU for inference (fidelity, ARC, HF generation).
* **training precision** (:func:`train_precision`): on a GPU the dtype above; on a CPU bfloat16 where the CPU
  computes it natively (flags ``amx_bf16`` or ``avx512_bf16``: Intel Sapphire Rapids and later, AMD Zen 4 and
  later; measured on a 2-core AMX Xeon, a SmolLM2-shaped matmul runs 6.9x faster in bf16 than in fp32; on a 2-core
  AMD EPYC with avx512_bf16 and no AMX, the demo recipe trains 1.99x faster, bench/train.py, 2026-12-06), float32
  elsewhere (AVX2-only CPUs emulate bf16, slower than fp32). Training then holds the frozen base weights in bf16
  once and the LoRA weights, their gradients and the optimizer state in fp32 (:mod:`llamatune.train`).
* **placement**: on a GPU, transformers models are loaded straight onto it in half precision
  (``device_map``), never in float32 on the CPU first (Llama-3.2-3B in float32 is ~13 GB, more RAM than a
  free Colab has); on a CPU they stay in float32 there.
* **generation batch**: HF generation on a GPU answers several prompts per ``generate()`` call (left-padded);
  one at a time on a CPU, where batching buys nothing.
* **llama.cpp offload**: every layer on the GPU (``n_gpu_layers=-1``) when the installed llama-cpp-python was
  built with GPU offload and a CUDA device is present; ``$LLAMATUNE_N_GPU_LAYERS`` overrides; 0 otherwise.

    from llamatune.device import placement_for, this_placement
    placement_for((7, 5), 15.0)   # T4 → Placement(device='cuda:0', dtype='float16', gen_batch_size=8)
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    device: str  # "cuda:0" | "cpu"
    dtype: str  # "float16" | "bfloat16" | "float32"
    gen_batch_size: int  # prompts per HF generate() call

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def hf_kwargs(self) -> dict:
        """``from_pretrained`` keyword arguments: the dtype, and on a GPU ``device_map`` so the weights are
        loaded onto it directly (never materialised in float32 on the CPU)."""
        import torch

        kw = {"dtype": getattr(torch, self.dtype)}
        if self.on_gpu:
            kw["device_map"] = self.device
        return kw


def importable(module: str) -> bool:
    """Whether ``module`` (an optional dependency: unsloth, vllm, bitsandbytes, llama_cpp) can be imported here,
    without importing it; a module already imported counts even when it carries no spec (a test's stand-in)."""
    import importlib.util
    import sys

    if module in sys.modules:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing or broken
        return False


def half_dtype(capability: tuple[int, int] | None) -> str:
    """The dtype to compute in on a device of CUDA compute ``capability`` (``None`` = no GPU)."""
    if capability is None:
        return "float32"
    return "bfloat16" if tuple(capability) >= (8, 0) else "float16"


def placement_for(capability: tuple[int, int] | None, memory_gib: float | None = None) -> Placement:
    """The placement on a device of CUDA ``capability`` with ``memory_gib`` of memory (``None``: a CPU)."""
    if capability is None:
        return Placement("cpu", "float32", 1)
    mem = memory_gib or 0.0
    batch = 32 if mem >= 70 else 16 if mem >= 35 else 8  # a 3B model's KV cache per 1k-token prompt is ~0.1 GB
    return Placement("cuda:0", half_dtype(capability), batch)


# CPU flags (``/proc/cpuinfo``) that mean native bf16 matrix arithmetic; without them torch emulates bf16.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class TrainPrecision:
    dtype: str  # the compute dtype: "bfloat16" | "float16" | "float32"
    device: str  # "cuda" | "cpu"
    reason: str  # why, in words (recorded in run.json)
    cpu_flags: tuple[str, ...] = ()  # the flags that decided it on a CPU (those of BF16_CPU_FLAGS present)


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The flags of the first processor in ``cpuinfo`` (the text of ``/proc/cpuinfo``; read when ``None``;
    empty where there is none, e.g. macOS)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):  # x86 / arm64
            return frozenset(value.split())
    return frozenset()


def train_precision(capability: tuple[int, int] | None, flags: frozenset[str] | set[str] | None = None
                    ) -> TrainPrecision:
    """The dtype to train in on a GPU of CUDA ``capability``, or (``None``) on a CPU with ``flags`` (this
    machine's :func:`cpu_flags` by default). A recipe's ``bf16``/``dtype`` keys override it."""
    if capability is not None:
        dtype = half_dtype(capability)
        return TrainPrecision(dtype, "cuda", f"CUDA compute capability {capability[0]}.{capability[1]}: {dtype}")
    flags = cpu_flags() if flags is None else frozenset(flags)
    native = tuple(f for f in BF16_CPU_FLAGS if f in flags)
    if native:
        return TrainPrecision("bfloat16", "cpu", f"CPU with native bf16 ({' '.join(native)}): bfloat16", native)
    return TrainPrecision("float32", "cpu", "CPU without amx_bf16/avx512_bf16 (bf16 would be emulated, slower): "
                          "float32")


def this_train_precision() -> TrainPrecision:
    """:func:`train_precision` of this machine (its first CUDA device, else its CPU)."""
    import torch

    return train_precision(torch.cuda.get_device_capability(0) if torch.cuda.is_available() else None)


def this_placement() -> Placement:
    """:func:`placement_for` this machine's first CUDA device (a CPU placement without one)."""
    import torch

    if not torch.cuda.is_available():
        return placement_for(None)
    props = torch.cuda.get_device_properties(0)
    return placement_for(torch.cuda.get_device_capability(0), props.total_memory / 2**30)


def device_dtype() -> str:
    """The dtype of :func:`this_placement`."""
    return this_placement().dtype


def n_gpu_layers(*, offload_supported: bool | None = None, cuda_available: bool | None = None) -> int:
    """llama.cpp layers to offload: ``-1`` (all) when this llama-cpp-python build supports GPU offload and a
    CUDA device is present, else 0; ``$LLAMATUNE_N_GPU_LAYERS`` overrides both."""
    env = os.environ.get("LLAMATUNE_N_GPU_LAYERS")
    if env not in (None, ""):
        try:
            return int(env)
        except ValueError:
            raise ValueError(f"$LLAMATUNE_N_GPU_LAYERS={env!r}: expected an integer (-1 = every layer)") from None
    if offload_supported is None:
        try:
            import llama_cpp

            offload_supported = bool(llama_cpp.llama_supports_gpu_offload())
        except (ImportError, AttributeError):
            offload_supported = False
    if not offload_supported:
        return 0
    if cuda_available is None:
        try:
            import torch

            cuda_available = torch.cuda.is_available()
        except ImportError:  # a llama.cpp-only install (the Space): the build's own report is the evidence
            cuda_available = True
    return -1 if cuda_available else 0
