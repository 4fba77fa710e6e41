"""HF model directory → GGUF with llama.cpp's own converter, and GGUF quantization with llama.cpp.

The converter is ``convert_hf_to_gguf.py`` from the sdist of the *installed* llama-cpp-python (see
:mod:`llamatune.pypi`), so the files it writes are the ones the runtime reads.

    python -m llamatune.gguf_convert HF_DIR OUT.gguf --outtype f16
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from llamatune import pypi
from llamatune.embedded import converter_source
from llamatune.jsonl import replacing

# llama.cpp file types (enum llama_ftype) for llama_model_quantize.
FTYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}
CONVERTER_OUTTYPES = {"f32", "f16", "bf16", "q8_0"}


def convert_hf_to_gguf(hf_dir: str | Path, out: str | Path, outtype: str = "f16") -> Path:
    """Run llama.cpp's converter on ``hf_dir``; raise with its last output lines if it fails."""
    out = Path(out)
    if outtype not in CONVERTER_OUTTYPES:
        raise ValueError(f"converter outtype must be one of {sorted(CONVERTER_OUTTYPES)}, got {outtype!r}")
    script = pypi.llama_cpp_source() / "convert_hf_to_gguf.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("NO_LOCAL_GGUF", None)
    # Gemma 3: converter_source adds the vocabulary files the converter reads
    with converter_source(hf_dir) as src, replacing(out) as tmp:
        cmd = [sys.executable, str(script), str(src), "--outfile", str(tmp), "--outtype", outtype]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not tmp.exists():
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
            raise RuntimeError(f"convert_hf_to_gguf.py failed on {hf_dir} (exit {proc.returncode}):\n{tail}")
    return out


def quantize(src: str | Path, dst: str | Path, qtype: str, threads: int | None = None) -> Path:
    """Quantize a GGUF with ``llama_cpp.llama_model_quantize`` (``qtype`` e.g. ``q8_0``, ``q4_k_m``)."""
    import llama_cpp

    qtype = qtype.lower()
    if qtype not in FTYPES:
        raise ValueError(f"unknown quantization {qtype!r}; known: {', '.join(FTYPES)}")
    dst = Path(dst)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[qtype]
    params.nthread = threads or os.cpu_count() or 1
    with replacing(dst) as tmp:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0 or not tmp.exists():
            raise RuntimeError(f"llama_model_quantize({src} → {qtype}) failed with code {rc}")
    return dst


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("hf_dir")
    p.add_argument("out")
    p.add_argument("--outtype", default="f16")
    a = p.parse_args(argv)
    print(convert_hf_to_gguf(a.hf_dir, a.out, a.outtype))


if __name__ == "__main__":
    main()
