"""Does a GGUF behave like the HF model it was converted from? Checks, with thresholds per quantization.

For one GGUF and its HF source directory, :func:`check_gguf` measures

* **tokenization**: llama.cpp's tokenizer gives the same ids as the HF tokenizer on sample texts (unicode,
  emoji, code, numbers, whitespace) and on the rendered chat prompts (special tokens parsed);
* **next-token agreement**: over every position of a few chat prompts rendered with
  :func:`llamatune.chat.render` (one with tools, one with a tool call and its result), the share of positions
  where the GGUF's arg-max token equals the HF model's (``top1_agreement``); the same share over the positions
  where the HF model is sure, its top-1 at least ``CONFIDENT_MARGIN`` logits ahead of its top-2
  (``confident_top1_agreement``, with ``confident_positions``); how often the HF top-1 is in the GGUF's top 5
  (``hf_top1_in_gguf_top5``); the largest absolute logit difference per prompt, and the median HF top-1/top-2
  margin (a random test model has margins ~0.1, so quantization flips near-ties there; a trained model's
  margins are logits apart);
* **chat template**: the GGUF's ``tokenizer.chat_template`` is exactly the project's template text;
* **EOS**: the GGUF's end-of-sequence token is the template's (``<|eot_id|>``, id 128009 for Llama 3.2).

A GGUF passes when tokenization, template and EOS all match and every agreement in ``THRESHOLDS[quant]`` reaches
its minimum. 8-bit and wider quants must keep the arg-max nearly everywhere. A 4-bit quant (``q4_k_m``, what the
Space serves) legitimately flips near-ties, so it is held where the flip would matter: the tokens the HF model is
sure of, and the HF top-1 staying in the top 5. Measured on this project's models (README, Faults tried): Q4_K_M of
SmolLM2-135M 0.989 confident / 0.995 top-5 (0.861 at every position), of gemma-3-270m 1.000 / 1.000, of the tiny
random Llama 2 confident positions (too few to judge: under ``MIN_CONFIDENT_POSITIONS`` that agreement is reported,
not judged) / 0.982. Quants not in ``THRESHOLDS`` are measured and reported only.

    python -m llamatune.fidelity HF_DIR MODEL-f16.gguf [--quant f16]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

from llamatune.chat import DEFAULT_DATE, TEMPLATES, render, template_text

# Minimum agreement (HF vs GGUF) per quantization, by metric (see the module docstring).
THRESHOLDS = {
    "f32": {"top1_agreement": 0.99},
    "f16": {"top1_agreement": 0.99},
    "q8_0": {"top1_agreement": 0.95},
    "q4_k_m": {"confident_top1_agreement": 0.97, "hf_top1_in_gguf_top5": 0.97},
}
CONFIDENT_MARGIN = 1.0  # logits between the HF model's top-1 and top-2: a position the model is sure of
MIN_CONFIDENT_POSITIONS = 50  # fewer (a random test model): confident_top1_agreement is reported, not judged

SAMPLE_TEXTS = [
    "Hello, world! How are you today?",
    "Héllo wörld — naïve café, déjà vu, Ærøskøbing, straße.",
    "日本語のテキストと中文，还有한국어。",
    "Привет, мир! Γειά σου κόσμε. مرحبا بالعالم. שלום עולם",
    "Emoji: 🦙🔥👍🏽 👩‍👩‍👧‍👦 🇳🇴 ✨",
    'def square(x: int) -> int:\n    """Square x."""\n    return x ** 2  # 4 spaces, then a comment\n',
    "if (a != b && c >= 0) { console.log(`${a}`); }",
    "3.14159 1,000,000 -42 2024-11-28 0x1F 1e-5 12345678901234567890",
    "   leading spaces\tand\ttabs\n\n\nthree newlines   trailing   ",
    '{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "celsius"}}',
]

_WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. \"Oslo\"."},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Temperature unit."},
            },
            "required": ["city"],
        },
    },
}


def sample_prompts(template: str = "llama-3.2") -> dict[str, str]:
    """A few chat prompts rendered through the project template, by name."""
    r = lambda messages, tools=None: render(  # noqa: E731
        messages, tools, template=template, add_generation_prompt=True, date_string=DEFAULT_DATE
    )
    return {
        "chat": r([{"role": "system", "content": "You are a concise assistant."},
                   {"role": "user", "content": "Explain in one sentence why the sky is blue."}]),
        "multi_turn": r([{"role": "user", "content": "What is 17 * 23?"},
                         {"role": "assistant", "content": "17 * 23 = 391."},
                         {"role": "user", "content": "And divided by 7? Écris la réponse en français 🇫🇷."}]),
        "tools": r([{"role": "user", "content": "What's the weather in Oslo right now?"}], [_WEATHER_TOOL]),
        "tool_result": r([{"role": "user", "content": "Is it warm in Lisbon?"},
                          {"role": "assistant", "tool_calls": [{"type": "function", "function": {
                              "name": "get_weather", "arguments": {"city": "Lisbon"}}}]},
                          {"role": "tool", "content": {"temperature": 24, "unit": "celsius"}}]),
        "code": r([{"role": "user", "content": "Fix this: `def f(x): return x**2 if x > 0 else -x` 🐍"}]),
    }


def quant_of(path: str | Path) -> str:
    """The quantization named in a GGUF file name (``name-q8_0.gguf`` → ``q8_0``)."""
    m = re.search(r"-(f32|f16|bf16|q\d\w*)\.gguf$", Path(path).name, re.I)
    return m.group(1).lower() if m else "unknown"


def _sha(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()[:16]


def hf_reference(hf_dir: str | Path, prompts: dict[str, str], texts: list[str], template: str = "llama-3.2") -> dict:
    """Token ids (texts and prompts) and float32 logits of every prompt position from the HF model, and the
    id of the template's EOS token in the HF vocabulary."""
    import torch

    from llamatune.device import this_placement
    from llamatune.models import load_causal_lm

    # on a GPU: loaded onto it in half precision (a 3B model in float32 on the CPU first is ~13 GB, more than a
    # free Colab's RAM); float32 on a CPU
    place = this_placement()
    model, tok = load_causal_lm(str(hf_dir), placement=place)
    device = place.device
    model.eval()
    ref = {"text_ids": [tok(t, add_special_tokens=False)["input_ids"] for t in texts], "prompts": {}}
    for name, prompt in prompts.items():
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids], device=device)).logits[0].float().cpu().numpy()
        ref["prompts"][name] = {"ids": ids, "logits": logits}
    ref["eos_token"] = TEMPLATES.get(template, {}).get("eos_token", tok.eos_token)
    ref["eos_id"] = tok.convert_tokens_to_ids(ref["eos_token"])
    del model
    return ref


def check_gguf(
    hf_dir: str | Path,
    gguf_path: str | Path,
    prompts: dict[str, str] | None = None,
    texts: list[str] | None = None,
    *,
    quant: str | None = None,
    template: str = "llama-3.2",
    expected_template: str | None = None,
    reference: dict | None = None,
    thresholds: dict[str, float] | None = None,
) -> dict:
    """Compare ``gguf_path`` with the HF model in ``hf_dir``; see the module docstring for the checks.

    ``reference`` (from :func:`hf_reference`) saves recomputing the HF side when checking several GGUFs.
    ``thresholds`` (``{metric: minimum}``) overrides ``THRESHOLDS[quant]``. Returns a JSON-able report whose
    ``failures`` list names each failed check and whose ``pass`` is the verdict.
    """
    import numpy as np

    from llamatune.runtime import open_llama, prompt_logits

    prompts = sample_prompts(template) if prompts is None else prompts
    texts = SAMPLE_TEXTS if texts is None else texts
    quant = quant or quant_of(gguf_path)
    thresholds = dict(THRESHOLDS.get(quant, {}) if thresholds is None else thresholds)
    expected_template = template_text(template) if expected_template is None else expected_template
    ref = reference or hf_reference(hf_dir, prompts, texts, template)
    gguf_path = Path(gguf_path)
    n_ctx = max(512, max(len(p["ids"]) for p in ref["prompts"].values()) + 8)
    llm = open_llama(str(gguf_path), n_ctx=n_ctx, logits_all=True)
    try:
        mismatches = []
        for text, hf_ids in zip(texts, ref["text_ids"]):
            ids = llm.tokenize(text.encode(), add_bos=False, special=False)
            if ids != hf_ids:
                mismatches.append({"text": text, "hf": hf_ids, "gguf": ids})
        per_prompt, agree, agree5, total, sure, sure_agree = {}, 0, 0, 0, 0, 0
        for name, prompt in prompts.items():
            hf_ids, hf_logits = ref["prompts"][name]["ids"], ref["prompts"][name]["logits"]
            ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
            if ids != hf_ids:
                mismatches.append({"prompt": name, "hf": hf_ids, "gguf": ids})
            logits = prompt_logits(llm, hf_ids)  # same ids on both sides, so logits compare even if tokenization differed
            hf_top = hf_logits.argmax(-1)
            same = logits.argmax(-1) == hf_top
            top5 = np.argpartition(-logits, 5, axis=-1)[:, :5]
            in5 = (top5 == hf_top[:, None]).any(-1)
            hf_two = np.partition(hf_logits, -2, axis=-1)[:, -2:]
            confident = (hf_two[:, 1] - hf_two[:, 0]) >= CONFIDENT_MARGIN
            diff = np.abs(logits - hf_logits)
            per_prompt[name] = {
                "tokens": len(hf_ids),
                "top1_agreement": round(float(same.mean()), 4),
                "hf_top1_in_gguf_top5": round(float(in5.mean()), 4),
                "hf_top1_margin_median": round(float(np.median(hf_two[:, 1] - hf_two[:, 0])), 5),
                "max_abs_logit_diff": round(float(diff.max()), 5),
                "mean_abs_logit_diff": round(float(diff.mean()), 6),
            }
            agree += int(same.sum())
            agree5 += int(in5.sum())
            total += len(hf_ids)
            sure += int(confident.sum())
            sure_agree += int((same & confident).sum())
        meta = llm.metadata
        embedded = meta.get("tokenizer.chat_template")
        eos_id = llm.token_eos()
        eos_token = llm.detokenize([eos_id], special=True).decode("utf-8", "replace")
    finally:
        llm.close()

    expected_eos = ref["eos_token"]
    top1 = agree / total
    # judged unrounded (the report shows 4 decimals); too few confident positions: measured, not judged
    measured = {"top1_agreement": top1, "hf_top1_in_gguf_top5": agree5 / total,
                "confident_top1_agreement": sure_agree / sure if sure >= MIN_CONFIDENT_POSITIONS else None}
    report = {
        "gguf": str(gguf_path),
        "hf_dir": str(hf_dir),
        "quant": quant,
        "size_bytes": gguf_path.stat().st_size,
        "tokenization": {"texts": len(texts), "prompts": len(prompts), "mismatches": mismatches},
        "top1_agreement": round(top1, 4),
        "hf_top1_in_gguf_top5": round(measured["hf_top1_in_gguf_top5"], 4),
        "confident_top1_agreement": (None if measured["confident_top1_agreement"] is None
                                     else round(measured["confident_top1_agreement"], 4)),
        "confident_positions": sure,
        "positions": total,
        "max_abs_logit_diff": max(p["max_abs_logit_diff"] for p in per_prompt.values()),
        "per_prompt": per_prompt,
        "chat_template": {"equal": embedded == expected_template, "embedded_sha256": _sha(embedded),
                          "expected_sha256": _sha(expected_template)},
        "eos": {"id": eos_id, "token": eos_token, "expected_token": expected_eos, "expected_id": ref["eos_id"]},
        "thresholds": thresholds,
    }
    failures = []
    if mismatches:
        first = mismatches[0]
        what = f"prompt {first['prompt']!r}" if "prompt" in first else f"text {first['text'][:40]!r}"
        failures.append(f"tokenization differs from HF on {len(mismatches)} sample(s), first: {what}")
    for metric, minimum in thresholds.items():
        value = measured.get(metric)
        if value is not None and value < minimum:
            where = f" over {sure} confident positions" if metric == "confident_top1_agreement" else ""
            failures.append(f"{metric} {value:.4f} < {minimum}{where} (threshold for {quant})")
    if embedded is None:
        failures.append("chat_template: the GGUF has no tokenizer.chat_template")
    elif embedded != expected_template:
        failures.append(f"chat_template: embedded template (sha {_sha(embedded)}) differs from the project's "
                        f"{template!r} (sha {_sha(expected_template)})")
    if eos_token != expected_eos or eos_id != ref["eos_id"]:
        failures.append(f"eos: GGUF EOS is {eos_token!r} (id {eos_id}), expected {expected_eos!r} (id {ref['eos_id']})")
    report["failures"] = failures
    report["pass"] = not failures
    return report


def thresholds_text(report: dict) -> str:
    """A report's minimums as text (``"confident_top1_agreement ≥ 0.97, ..."``), or ``"no threshold"``."""
    return ", ".join(f"{k} ≥ {v}" for k, v in (report.get("thresholds") or {}).items()) or "no threshold"


def format_report(report: dict) -> str:
    """One line per GGUF for the terminal."""
    verdict = "PASS" if report["pass"] else "FAIL"
    c = report.get("confident_top1_agreement")
    sure = f"{c:.4f}" if c is not None else "not judged"
    line = (f"{verdict} {Path(report['gguf']).name} ({thresholds_text(report)}): top-1 agreement "
            f"{report['top1_agreement']:.4f} over {report['positions']} positions, {sure} over the "
            f"{report.get('confident_positions', 0)} confident ones, HF top-1 in top-5 "
            f"{report['hf_top1_in_gguf_top5']:.4f}, "
            f"max |Δlogit| {report['max_abs_logit_diff']:.4g}, "
            f"tokenization {'ok' if not report['tokenization']['mismatches'] else 'DIFFERS'}, "
            f"template {'ok' if report['chat_template']['equal'] else 'DIFFERS'}, eos {report['eos']['token']}")
    return line + "".join(f"\n    - {f}" for f in report["failures"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("hf_dir")
    p.add_argument("gguf")
    p.add_argument("--quant", help="quantization (threshold key); default: from the file name")
    p.add_argument("--template", default="llama-3.2")
    a = p.parse_args(argv)
    report = check_gguf(a.hf_dir, a.gguf, quant=a.quant, template=a.template)
    print(format_report(report))
    print(json.dumps({k: v for k, v in report.items() if k != "tokenization"}, indent=2), file=sys.stderr)
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
