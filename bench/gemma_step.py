"""One LoRA SFT step on the embedded gemma-3-270m, with plain PEFT + torch (no TRL), on CPU.

Batch 1 × 256 tokens, LoRA r=16 on all linear layers, fp32, AdamW; prints one JSON line.

    PYTHONPATH=. python bench/gemma_step.py [--threads 2] [--steps 5] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--r", type=int, default=16)
    a = p.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llamatune.chat import render
    from llamatune.embedded import gemma_hf_dir

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    path = gemma_hf_dir()
    tok = AutoTokenizer.from_pretrained(path)
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    load_s = time.time() - t0
    model = get_peft_model(model, LoraConfig(r=a.r, lora_alpha=2 * a.r, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    text = render([{"role": "user", "content": "Tell me about the sea."}, {"role": "assistant", "content": "The sea is large and deep. " * 80}], template="gemma-3")
    ids = tok(text, add_special_tokens=False)["input_ids"][: a.seq_len]
    assert len(ids) == a.seq_len, len(ids)
    batch = torch.tensor([ids])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times, losses = [], []
    for step in range(a.steps + 1):
        t = time.time()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step:  # the first step warms up allocators and kernels
            times.append(time.time() - t)
        losses.append(round(loss.item(), 4))
    print(json.dumps({
        "bench": "gemma_step", "model": str(path.name), "threads": a.threads, "batch": 1, "seq_len": a.seq_len,
        "lora_r": a.r, "target_modules": "all-linear", "dtype": "float32", "trainable_params": trainable,
        "attn_implementation": model.config._attn_implementation, "load_s": round(load_s, 1),
        "step_s_median": round(statistics.median(times), 3), "step_s_min": round(min(times), 3),
        "steps_timed": len(times), "losses": losses,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
