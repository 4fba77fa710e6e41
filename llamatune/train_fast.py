"""Training speed: the precision a run computes in, attention row by row inside packs, bf16 compute without casts.

**Precision** (:func:`resolve_precision`): the device rule (:func:`llamatune.device.train_precision`) unless the
recipe sets ``bf16``/``fp16``; run.json records the choice, who made it, the rule's reason and the CPU.

**Packed attention** (``attn_implementation: packed``, the default on a CPU). With ``packing: true`` TRL concatenates
the rows of a batch into one padding-free sequence whose ``position_ids`` restart at every row, and hands the model
the row boundaries (``cu_seq_lens_q``). transformers' mask utilities read the restarts and build a block-diagonal
causal mask, so no row attends to another (``tests/test_packing.py`` checks that a pack's loss and gradients equal
those of its rows one at a time), but ``sdpa`` and ``eager`` then compute the whole L × L score matrix of the pack,
most of it masked: quadratic in the pack, not in the rows. :func:`packed_attention` attends row by row (``sdpa``,
causal, per row), so the projections' matmuls see the whole pack (large GEMMs) while attention costs what the rows
cost. Without row bounds (unpacked batches, generation) it is transformers' eager attention.

**bf16 without casts** (:func:`prepare_bf16_lora`): the frozen base weights are loaded in bf16 once (``dtype``),
PEFT keeps the LoRA weights in fp32 (``autocast_adapter_dtype``), the trainer's bf16 autocast casts the small LoRA
weights per forward (cached) and their gradients come back in fp32 for an fp32 AdamW; PEFT's own cast of the layer
input to the LoRA weight's dtype (fp32) is switched off, so activations stay bf16 from layer to layer.

**Fused elementwise ops** (``compile: auto``, :func:`compile_elementwise`): on the bf16 CPU path the MLPs and
RMSNorms are compiled by inductor (dynamic shapes, one compilation for every pack length), which fuses the norms'
casts and reductions, SiLU × up and the LoRA scaling and additions; the first step pays the compilation.
"""

from __future__ import annotations

PACKED = "packed"  # the attn_implementation name this module registers with transformers


def resolve_precision(extra: dict, sft: dict, notes: list[str], precision=None) -> tuple[str, dict]:
    """``(model dtype, record)``, and the bf16/fp16 flags in ``sft`` when the recipe leaves them unset, from the
    device rule (:func:`llamatune.device.train_precision`: bf16 from compute capability 8.0 and on CPUs with
    AMX-BF16/AVX512-BF16, fp16 on a T4, fp32 elsewhere). On a CPU the weights follow the compute dtype
    (``bf16: false`` in a recipe means fp32 weights too); ``record`` is what run.json keeps."""
    from llamatune.device import importable, this_train_precision

    rule = precision or this_train_precision()
    chosen_by = "recipe" if "bf16" in sft or "fp16" in sft else "device rule"
    if chosen_by == "device rule":
        sft["bf16"], sft["fp16"] = rule.dtype == "bfloat16", rule.dtype == "float16"
    sft.setdefault("bf16", False)
    sft.setdefault("fp16", False)
    dtype = extra["dtype"]
    if dtype == "auto":
        dtype = rule.dtype if rule.device == "cuda" else "bfloat16" if sft["bf16"] else "float32"
    if "8bit" in str(sft.get("optim", "")) and not importable("bitsandbytes"):
        notes.append(f"optim {sft['optim']} needs bitsandbytes, which is not installed: using adamw_torch")
        sft["optim"] = "adamw_torch"
    compute = "bfloat16" if sft["bf16"] else "float16" if sft["fp16"] else dtype
    if rule.device == "cpu" and sft["bf16"]:
        sft.setdefault("use_cpu", True)  # transformers refuses bf16 without a GPU unless told it trains on the CPU
    record = {"compute": compute, "weights": dtype, "chosen_by": chosen_by, "device_rule": rule.dtype,
              "reason": rule.reason, "cpu_flags": list(rule.cpu_flags)}
    if rule.device == "cpu":
        from llamatune.provenance import cpu_info

        record["cpu"] = cpu_info()["model"]
    return dtype, record


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention on each row's diagonal block of a padding-free pack (``cu_seq_lens_q`` from TRL's collator):
    ``sdpa`` with ``is_causal`` where a row's block is plain causal attention (no sliding window, no softcapping,
    no dropout), else the model family's own eager attention (``eager_attention_forward`` of the module's modeling
    file: Gemma 3's with its sliding window and softcapping) on that block of the mask. Without row bounds, eager
    attention on the whole sequence. Returns ``(output [B, L, H, D], None)``."""
    import sys

    import torch

    eager_attention_forward = sys.modules[type(module).__module__].eager_attention_forward
    extra = {"scaling": scaling, "dropout": dropout}
    extra.update({k: kwargs[k] for k in ("softcap", "sliding_window") if k in kwargs})
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1 or cu.numel() <= 2 or int(cu[-1]) != query.shape[2]:
        out, _ = eager_attention_forward(module, query, key, value, attention_mask, **extra)
        return out, None
    causal = (not extra.get("softcap") and not extra.get("sliding_window") and not dropout
              and getattr(module, "is_causal", True))
    bounds = cu.tolist()
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        q, k, v = query[:, :, start:end], key[:, :, start:end], value[:, :, start:end]
        if causal:
            out = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=scaling, enable_gqa=q.shape[1] != k.shape[1]).transpose(1, 2)
        else:
            mask = None if attention_mask is None else attention_mask[:, :, start:end, start:end]
            out, _ = eager_attention_forward(module, q, k, v, mask, **extra)
        outs.append(out)
    return torch.cat(outs, dim=1), None


def register_packed_attention() -> str:
    """Register :func:`packed_attention` (and transformers' eager mask for it) under the name ``packed``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(PACKED, packed_attention)
    AttentionMaskInterface.register(PACKED, eager_mask)
    return PACKED


def prepare_bf16_lora(model) -> dict:
    """Keep a PEFT model's LoRA layers from casting their bf16 input to fp32, and check the precision layout:
    every trainable parameter fp32, every frozen floating-point weight bf16. Returns counts for ``run.json``."""
    import torch

    layers = 0
    for m in model.modules():
        if hasattr(m, "cast_input_dtype_enabled") and hasattr(m, "lora_A"):
            m.cast_input_dtype_enabled = False
            layers += 1
    trainable = {str(p.dtype) for p in model.parameters() if p.requires_grad}
    frozen = {str(p.dtype) for p in model.parameters() if not p.requires_grad and p.is_floating_point()}
    if trainable != {str(torch.float32)} or frozen != {str(torch.bfloat16)}:
        raise RuntimeError(f"bf16 LoRA training expects fp32 trainable and bf16 frozen weights; got trainable "
                           f"{sorted(trainable)}, frozen {sorted(frozen)}")
    return {"lora_layers": layers, "trainable_dtype": "float32", "frozen_dtype": "bfloat16"}


def compile_elementwise(model) -> int:
    """``torch.compile`` (inductor, dynamic shapes) of every decoder layer's MLP and RMSNorms, in place: the LoRA
    scaling and additions, SiLU × up projection, the norms' casts and reductions become a few fused kernels. Only
    these parts: the attention reads the rows' bounds as Python integers, and the layer's keyword arguments carry
    the pack's longest row (``max_length_q``), both of which would recompile the graph for every new pack. Returns
    the number of modules compiled; the first step pays the compilation (~10-20 s on 2 cores)."""
    n = 0
    for layer in model.modules():
        if not type(layer).__name__.endswith("DecoderLayer"):
            continue
        for name, child in layer.named_children():
            if name == "mlp" or type(child).__name__.endswith("RMSNorm"):
                child.compile(dynamic=True)
                n += 1
    return n


def compiler_works() -> str | None:
    """``None`` when ``torch.compile`` (inductor, which builds C++ on a CPU) compiles and runs a small function
    here, else why not (no C++ compiler, no Python headers...)."""
    import torch

    try:
        fn = torch.compile(lambda x: torch.nn.functional.silu(x) * 2.0 + 1.0, dynamic=True)
        ok = torch.allclose(fn(torch.ones(3)), torch.nn.functional.silu(torch.ones(3)) * 2.0 + 1.0)
        return None if ok else "a compiled function gave other values"
    except Exception as e:  # noqa: BLE001  (any failure means: do not compile)
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]


def apply_fast_path(trainer, compile_: bool | str, dtype: str, precision: dict, lora: bool, notes: list[str]) -> int:
    """After the trainer is built: :func:`prepare_bf16_lora` when a LoRA run (``lora``: TRL + PEFT) holds bf16
    weights and computes in bf16 (``precision`` gains its counts), and :func:`compile_elementwise` when the recipe's
    ``compile`` is true, or ``auto`` on that path on a CPU where :func:`compiler_works` (else a note says why not).
    Returns the number of compiled modules."""
    fast = lora and dtype == "bfloat16" and precision["compute"] == "bfloat16"
    if fast:
        precision.update(prepare_bf16_lora(trainer.model))
    if compile_ not in (True, False, "auto"):
        raise ValueError(f"recipe: compile must be true, false or auto, got {compile_!r}")
    if compile_ == "auto" and fast and str(trainer.args.device) == "cpu":
        why = compiler_works()
        if why:
            notes.append(f"compile: auto: torch.compile does not work here ({why}); training uncompiled")
            return 0
    if compile_ is True or (compile_ == "auto" and fast and str(trainer.args.device) == "cpu"):
        return compile_elementwise(trainer.model)
    return 0
