"""Time each export stage (merge, GGUF convert + quantize, fidelity) on a fake LoRA run of the tiny model.

    PYTHONPATH=. python bench/export.py [--run DIR] [--quant f16,q8_0,q4_k_m]

Without --run it builds a random LoRA (r=8) on the tiny model in a temporary directory. Prints the stage
timings, the fidelity summary per GGUF, and the CPU count (numbers are machine-dependent; nothing asserted).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def fake_run(root: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llamatune.models import load_llama_tokenizer, tiny_model_dir

    run = root / "bench-run"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(), dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(run / "adapter")
    load_llama_tokenizer().save_pretrained(run / "adapter")
    (run / "run.json").write_text(json.dumps({"recipe": {"model_name_or_path": "tiny", "chat_template": "llama-3.2"}}))
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="an existing run directory (its merged/, gguf/ and fidelity.json are rebuilt)")
    p.add_argument("--quant", default="f16,q8_0,q4_k_m")
    a = p.parse_args()
    from llamatune.export import export

    tmp = None
    if a.run:
        run = Path(a.run)
        for d in ("merged", "gguf"):
            shutil.rmtree(run / d, ignore_errors=True)
        (run / "fidelity.json").unlink(missing_ok=True)
    else:
        tmp = Path(tempfile.mkdtemp())
        run = fake_run(tmp)
    t = time.perf_counter()
    result = export(run, a.quant, strict=False)
    total = time.perf_counter() - t
    print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} total={total:.1f}s stages={result['timings']}")
    for q, r in result["fidelity"].items():
        print(f"{q:7s} {r['size_bytes'] / 2**20:7.1f} MiB  top1={r['top1_agreement']:.4f}  "
              f"max|dlogit|={r['max_abs_logit_diff']:.4g}  pass={r['pass']}")
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
