"""Merge a LoRA run into its base model, convert it to GGUF, quantize, and check fidelity.

    llamatune export runs/tiny --quant f16,q8_0,q4_k_m            # a training run (runs/<run>/adapter/)
    llamatune export --model HF_DIR --out runs/base --name base   # a plain HF model (no adapter)
    llamatune export runs/tiny --push-to-hub user/name            # then `llamatune push` (llamatune.hub)

Writes into the run directory (or ``--out``):

* ``merged/`` — the LoRA merged into the base, safetensors, with the tokenizer whose ``chat_template`` is the
  project template and whose EOS is the template's (``<|eot_id|>``), generation_config EOS including it
  (for a plain model: ``hf/``, the model's files linked, tokenizer and generation config rewritten);
* ``gguf/<name>-<quant>.gguf`` — f16 from llama.cpp's ``convert_hf_to_gguf.py`` (the sdist of the installed
  llama-cpp-python), every other quantization from that f16 with ``llama_cpp.llama_model_quantize``
  (the f16 file is always kept: it is the source of the others);
* ``fidelity.json`` — :func:`llamatune.fidelity.check_gguf` per GGUF. The command fails (exit 1) when a GGUF
  misses a check, naming the file and the check (f16 top-1 agreement < 0.99, Q8_0 < 0.95, tokenization,
  template, EOS).

Every step is skipped when its output exists and is newer than its inputs ("exists, skipping"); outputs
are written to ``*.part`` and renamed, so an interrupted export resumes.

The base model of a run is, in this order: ``--base``, ``run.json`` ``recipe.model_name_or_path``, the
adapter's ``base_model_name_or_path``; ``tiny`` means the tiny offline model (:mod:`llamatune.models`).
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

from llamatune.chat import TEMPLATES, template_text
from llamatune.jsonl import read_json, replacing, write_json

DEFAULT_QUANTS = ("f16", "q8_0", "q4_k_m")
MERGE_STAMP = "llamatune_merge.json"  # in merged/: what it was merged from (a rerun with another base re-merges)
# Files of an HF model directory that export rewrites rather than links (tokenizer, template, generation).
_REWRITTEN = {"tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json",
              "generation_config.json", "tokenizer.json", "tokenizer.model", "added_tokens.json"}


class FidelityError(RuntimeError):
    """A GGUF failed a fidelity check; the message names the file and the check."""


def _log(msg: str) -> None:
    print(f"[export] {msg}", file=sys.stderr, flush=True)


def _newest_mtime(paths) -> float:
    times = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            times += [f.stat().st_mtime for f in p.rglob("*") if f.is_file()]
        elif p.exists():
            times.append(p.stat().st_mtime)
    return max(times, default=0.0)


def _fresh(output: Path, inputs) -> bool:
    """``output`` exists and is newer than every file in ``inputs``."""
    return output.exists() and output.stat().st_mtime >= _newest_mtime(inputs)


def is_model_dir(path: str | Path) -> bool:
    """A plain HF model directory (config + weights, no adapter)."""
    p = Path(path)
    return (p / "config.json").exists() and (
        any(p.glob("*.safetensors")) or any(p.glob("*.bin")) or (p / "model.safetensors.index.json").exists()
    ) and not (p / "adapter_config.json").exists()


def _adapter_dir(run_dir: Path) -> Path:
    status = read_json(run_dir / "run.json", {}).get("status")
    if status not in (None, "done"):  # killed while training or while writing adapter/: nothing here is final
        raise ValueError(f"{run_dir}: training did not finish (run.json status {status!r}); resume it first with "
                         f"`llamatune train {run_dir}/config.yaml --output_dir {run_dir} --resume`")
    for cand in (run_dir / "adapter", run_dir):
        if (cand / "adapter_config.json").exists():
            return cand
    raise FileNotFoundError(f"{run_dir}: no adapter/adapter_config.json (not a training run; for a plain HF model "
                            f"use `llamatune export --model DIR --out OUT`)")


def run_recipe(run_dir: str | Path) -> dict:
    """The ``recipe`` of ``run_dir/run.json`` ({} when absent)."""
    return read_json(Path(run_dir) / "run.json", {}).get("recipe", {}) or {}


def _resolve_path(name: str) -> str:
    from llamatune.models import resolve_model  # "tiny", "gemma-3-270m" → local directories

    return resolve_model(name)


def resolve_base(run_dir: str | Path, base: str | None = None) -> str:
    """Base model of a run: ``base``, else run.json recipe ``model_name_or_path``, else the adapter's
    ``base_model_name_or_path``. ``"tiny"`` resolves to the tiny model's directory."""
    run_dir = Path(run_dir)
    if base:
        return _resolve_path(base)
    if name := run_recipe(run_dir).get("model_name_or_path"):
        return _resolve_path(name)
    cfg = read_json(_adapter_dir(run_dir) / "adapter_config.json", {})
    if name := cfg.get("base_model_name_or_path"):
        return _resolve_path(name)
    raise ValueError(f"{run_dir}: cannot tell the base model (no --base, no recipe.model_name_or_path in run.json, "
                     f"no base_model_name_or_path in adapter_config.json)")


def _template_name(run_dir: Path | None, template: str | None) -> str:
    name = template or (run_recipe(run_dir).get("chat_template") if run_dir else None) or "llama-3.2"
    if name not in TEMPLATES:
        raise ValueError(f"chat_template {name!r} (run.json recipe or --template) is not one of {list(TEMPLATES)}")
    return name


def _write_tokenizer_and_generation(src_tok: str | Path, model_src: str | Path, out: Path, template: str) -> None:
    """Save the tokenizer of ``src_tok`` with the project template and its EOS, and a generation config whose
    EOS list includes the template's EOS id."""
    from transformers import AutoTokenizer, GenerationConfig

    spec = TEMPLATES[template]
    tok = AutoTokenizer.from_pretrained(src_tok)
    tok.chat_template = template_text(template)
    tok.eos_token = spec["eos_token"]
    tok.save_pretrained(out)
    eos_id = tok.convert_tokens_to_ids(spec["eos_token"])
    try:
        gen = GenerationConfig.from_pretrained(model_src)
    except OSError:
        gen = GenerationConfig()
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    eos = [e for e in eos if e is not None]
    gen.eos_token_id = eos + [eos_id] if eos_id not in eos else eos
    if gen.bos_token_id is None and tok.bos_token_id is not None:
        gen.bos_token_id = tok.bos_token_id
    gen.save_pretrained(out)


def merge(run_dir: str | Path, out_dir: str | Path | None = None, base: str | None = None, *,
          dtype: str | None = None, template: str | None = None) -> Path:
    """Merge ``run_dir``'s LoRA adapter into its base and save an HF model directory (default
    ``run_dir/merged``), in ``dtype`` (default: the base's dtype; PEFT computes B@A in float32). The saved
    tokenizer carries the project chat template. Skipped when up to date."""
    run_dir = Path(run_dir)
    adapter = _adapter_dir(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "merged"
    base_path = resolve_base(run_dir, base)
    template = _template_name(run_dir, template)
    stamp = {"base": base_path, "template": template}
    done = read_json(out / MERGE_STAMP, {})
    if (_fresh(out / "config.json", [adapter, run_dir / "run.json"]) and done.get("stamp") == stamp
            and dtype in (None, done.get("dtype"))):
        _log(f"{out}: exists, skipping merge")
        return out
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(base_path)
    if qc := getattr(cfg, "quantization_config", None):
        method = qc.get("quant_method", "?") if isinstance(qc, dict) else getattr(qc, "quant_method", "?")
        raise ValueError(f"base model {base_path} is quantized ({method}); "
                         f"merge into the full-precision base instead: --base meta-llama/Llama-3.2-3B-Instruct")
    save_dtype = getattr(torch, dtype) if dtype else (getattr(cfg, "dtype", None) or torch.float32)
    if isinstance(save_dtype, str):
        save_dtype = getattr(torch, save_dtype)
    _log(f"merging {adapter} into {base_path} ({save_dtype})")
    # Loaded in the dtype it is saved in (halves the memory of a bf16 3B merge); PEFT computes B@A in float32.
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=save_dtype)
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model = model.to(save_dtype)
    with replacing(out) as tmp:
        model.save_pretrained(tmp)
        del model
        has_tok = (adapter / "tokenizer.json").exists() or (adapter / "tokenizer_config.json").exists()
        _write_tokenizer_and_generation(adapter if has_tok else base_path, base_path, tmp, template)
        dtype_name = str(save_dtype).removeprefix("torch.")
        write_json(tmp / MERGE_STAMP, {"stamp": stamp, "dtype": dtype_name, "adapter": str(adapter)}, indent=2)
    return out


def prepare_model_dir(model_dir: str | Path, out_dir: str | Path, *, template: str = "llama-3.2") -> Path:
    """An HF directory for a plain model: its weights and config linked, the tokenizer and generation config
    rewritten with the project template and EOS (so its GGUF embeds the same template as the merged ones)."""
    model_dir, out = Path(model_dir).resolve(), Path(out_dir)
    if _fresh(out / "config.json", [model_dir]):
        _log(f"{out}: exists, skipping")
        return out
    with replacing(out) as tmp:
        tmp.mkdir(parents=True)
        for f in model_dir.iterdir():
            if f.is_file() and f.name not in _REWRITTEN:
                (tmp / f.name).symlink_to(f)
        _write_tokenizer_and_generation(model_dir, model_dir, tmp, template)
    return out


@contextmanager
def _quiet_llama():
    """Silence llama.cpp's info log (quantization prints every tensor); errors still show."""
    try:
        from llama_cpp._logger import logger, set_verbose
    except ImportError:
        yield
        return
    level = logger.level
    set_verbose(False)
    try:
        yield
    finally:
        logger.setLevel(level)


def gguf_name(name: str, quant: str) -> str:
    """The file name export writes for ``name`` quantized as ``quant``: ``<name>-<quant>.gguf`` (quant lowercase)."""
    return f"{name}-{quant.lower()}.gguf"


def build_ggufs(hf_dir: str | Path, gguf_dir: str | Path, name: str, quants=DEFAULT_QUANTS) -> dict[str, Path]:
    """``{quant: path}``: f16 converted from ``hf_dir``, the others quantized from it. Skips fresh files."""
    from llamatune.gguf_convert import FTYPES, convert_hf_to_gguf, quantize

    hf_dir, gguf_dir = Path(hf_dir), Path(gguf_dir)
    unknown = [q for q in quants if q not in FTYPES and q != "bf16"]
    if unknown:
        raise ValueError(f"--quant: unknown quantization(s) {unknown}; known: {sorted(FTYPES)}")
    out: dict[str, Path] = {}
    f16 = gguf_dir / gguf_name(name, "f16")
    if _fresh(f16, [hf_dir]):
        _log(f"{f16}: exists, skipping")
    else:
        _log(f"converting {hf_dir} → {f16}")
        convert_hf_to_gguf(hf_dir, f16, "f16")
    out["f16"] = f16
    for q in quants:
        if q == "f16":
            continue
        dst = gguf_dir / gguf_name(name, q)
        if q in ("f32", "bf16"):  # not from f16: convert straight from the HF weights
            if not _fresh(dst, [hf_dir]):
                _log(f"converting {hf_dir} → {dst}")
                convert_hf_to_gguf(hf_dir, dst, q)
        elif _fresh(dst, [f16]):
            _log(f"{dst}: exists, skipping")
        else:
            _log(f"quantizing {f16.name} → {dst.name}")
            with _quiet_llama():
                quantize(f16, dst, q)
        out[q] = dst
    return out


def check_all(hf_dir: str | Path, ggufs: dict[str, Path], *, template: str = "llama-3.2",
              fidelity_path: str | Path | None = None) -> dict[str, dict]:
    """Fidelity report per GGUF (HF reference computed once); written to ``fidelity_path`` when given.
    A GGUF whose report in an existing ``fidelity_path`` matches its size and mtime is not re-checked."""
    from llamatune import fidelity

    old = read_json(Path(fidelity_path), {}).get("reports", {}) if fidelity_path else {}
    reports, ref, prompts = {}, None, fidelity.sample_prompts(template)
    for q, path in ggufs.items():
        st = Path(path).stat()
        stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "hf_dir": str(hf_dir),
                 "thresholds": fidelity.THRESHOLDS.get(q, {})}
        prev = old.get(q)
        if prev and prev.get("stamp") == stamp:
            _log(f"fidelity of {Path(path).name}: up to date, skipping")
            reports[q] = prev
            continue
        if ref is None:
            _log(f"computing HF reference logits from {hf_dir}")
            ref = fidelity.hf_reference(hf_dir, prompts, fidelity.SAMPLE_TEXTS, template)
        report = fidelity.check_gguf(hf_dir, path, prompts, fidelity.SAMPLE_TEXTS, quant=q, template=template,
                                     reference=ref)
        report["stamp"] = stamp
        reports[q] = report
        _log(fidelity.format_report(report))
    if fidelity_path:
        doc = {"thresholds": fidelity.THRESHOLDS, "template": template, "reports": reports,
               "pass": all(r["pass"] for r in reports.values())}
        write_json(fidelity_path, doc, indent=2)
    return reports


def _fidelity_failures(reports: dict[str, dict]) -> list[str]:
    return [f"{r['gguf']}: {f}" for r in reports.values() for f in r["failures"]]


def export(run_dir: str | Path, quants=DEFAULT_QUANTS, out_dir: str | Path | None = None, base: str | None = None,
           name: str | None = None, *, template: str | None = None, dtype: str | None = None, check: bool = True,
           strict: bool = True) -> dict:
    """Merge (for a run) or prepare (for a plain HF model dir), convert, quantize, check fidelity.

    ``run_dir`` is a training run (``adapter/``) or a plain HF model directory (then ``out_dir`` is required).
    Returns ``{"name", "hf_dir", "gguf": {quant: path}, "fidelity": {quant: report}, "fidelity_path",
    "pass", "failures", "timings"}``. With ``strict`` a failed check raises :class:`FidelityError` after
    ``fidelity.json`` is written.
    """
    run_dir = Path(run_dir)
    quants = tuple(q.strip().lower() for q in (quants.split(",") if isinstance(quants, str) else quants) if q.strip())
    plain = is_model_dir(run_dir)
    if plain and out_dir is None:
        raise ValueError(f"{run_dir} is a plain HF model directory: give an output directory (--out)")
    out = Path(out_dir) if out_dir else run_dir
    out.mkdir(parents=True, exist_ok=True)
    name = name or (out.resolve().name if plain else run_dir.resolve().name)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    if plain:
        template = _template_name(None, template)
        hf_dir = prepare_model_dir(run_dir, out / "hf", template=template)
    else:
        template = _template_name(run_dir, template)
        hf_dir = merge(run_dir, out / "merged", base, dtype=dtype, template=template)
    timings["merge" if not plain else "prepare"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    ggufs = build_ggufs(hf_dir, out / "gguf", name, quants)
    timings["gguf"] = round(time.perf_counter() - t, 2)
    result = {"name": name, "hf_dir": str(hf_dir), "gguf": {q: str(p) for q, p in ggufs.items()},
              "fidelity": {}, "fidelity_path": None, "pass": None, "failures": [], "timings": timings}
    if check:
        t = time.perf_counter()
        fpath = out / "fidelity.json"
        reports = check_all(hf_dir, ggufs, template=template, fidelity_path=fpath)
        timings["fidelity"] = round(time.perf_counter() - t, 2)
        failures = _fidelity_failures(reports)
        result.update({"fidelity": reports, "fidelity_path": str(fpath), "failures": failures, "pass": not failures})
        if failures and strict:
            raise FidelityError("fidelity check failed:\n  " + "\n  ".join(failures) + f"\n(details: {fpath})")
    return result


def export_base(model_dir: str | Path, out_dir: str | Path, quants=DEFAULT_QUANTS, *, name: str | None = None,
                **kwargs) -> dict:
    """:func:`export` for a plain HF model directory (no merge), e.g. the base model for comparisons."""
    if not is_model_dir(model_dir):
        raise FileNotFoundError(f"{model_dir}: not an HF model directory (config.json + weights)")
    return export(model_dir, quants, out_dir, name=name, **kwargs)


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", nargs="?", help="training run directory (with adapter/) or an HF model directory")
    parser.add_argument("--model", help="plain HF model directory to export instead of a run (needs --out)")
    parser.add_argument("--quant", default=",".join(DEFAULT_QUANTS),
                        help="comma-separated GGUF types (default %(default)s); f16 is always written")
    parser.add_argument("--out", help="output directory (default: the run directory)")
    parser.add_argument("--base", help="base model (overrides run.json and adapter_config.json); 'tiny' = tiny model")
    parser.add_argument("--name", help="GGUF file prefix (default: the run directory's name)")
    parser.add_argument("--template", help="project chat template (default: the recipe's, else llama-3.2)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="dtype of the merged safetensors (default: the base model's)")
    parser.add_argument("--no-check", action="store_true", help="skip the fidelity checks")
    parser.add_argument("--push-to-hub", metavar="USER/NAME",
                        help="then push as `llamatune push` does: USER/NAME-LoRA, USER/NAME, USER/NAME-GGUF "
                             "(a plain model: only USER/NAME-GGUF)")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create private repos")


def main(args) -> int:
    source = args.model or args.run_dir
    if not source or (args.model and args.run_dir):
        raise ValueError("give exactly one of RUN_DIR or --model DIR")
    result = export(source, args.quant, args.out, args.base, args.name, template=args.template,
                    dtype=args.dtype, check=not args.no_check)  # a FidelityError exits 1, bad input 2 (llamatune.cli)
    for q, path in result["gguf"].items():
        print(f"{q}\t{path}")
    if result["fidelity_path"]:
        print(f"fidelity: all checks passed ({result['fidelity_path']})")
    if args.push_to_hub:  # the one push implementation, as `llamatune push` (plain model: its GGUFs only)
        from llamatune.hub import run_push

        return run_push(args.out or source, args.push_to_hub, parts=("gguf",) if is_model_dir(source) else None,
                        private=args.private)
    return 0
