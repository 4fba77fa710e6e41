"""A model soup: the uniform average of the weights of several fine-tunes of one base (Wortsman et al., "Model soups",
ICML 2022), written as an HF model directory that ``llamatune export --model`` turns into GGUFs.

    llamatune soup runs/decision-seeds/narrow-seed0 runs/decision-seeds/narrow-seed1 runs/decision-seeds/narrow-seed2 \\
        --out runs/decision-seeds/narrow-soup/merged

Why here: the fold's seed-to-seed spread (README part 11: 14 pp between two seeds of one setting) is as large as any
lever's effect, and averaging the seeds' weights is the cheapest try at a model that does not depend on one seed's
luck. Measured (README part 12, SmolLM2-135M, three seeds a soup): no consistent gain, one soup below its seeds' mean
on the fold and one above; seeds with different LoRA initialisations likely share no basin to average in.
A source is a training run (its LoRA merged first, as the export stage does, so the soup averages the full updates
``B @ A``, not the factors) or an HF model directory. Every source must be a fine-tune of the same base with the same
chat template (the merge stamps say so) and have the same tensors; the soup is computed tensor by tensor (one model's
memory, whatever the count), in float32, and saved in the sources' dtype and shard layout, next to ``soup.json``
(the sources and each weights file's sha256). The write is atomic: an interrupted soup leaves no half-written directory.

Whether the ingredients share a basin can be read from their updates: when the base named by the stamps is on disk,
``soup.json``'s ``updates`` gives each source's update ``W - W_base`` (all tensors together) as its norm, the cosine
between every two sources' updates, and ``kept``, the norm of the soup's update over the sources' mean norm (1 when
the updates agree, ``1/sqrt(n)`` when they are orthogonal and of equal size: the average then shrinks each one).
README part 13: three runs from one LoRA initialisation in other row orders have cosines 0.3, three seeds 0.15.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from llamatune.jsonl import read_json, replacing, sha256_file, write_json

SOUP_STAMP = "soup.json"


def _model_dir(source: Path) -> Path:
    """``source`` as an HF model directory: a run's merged model (merged now if missing), or the directory itself."""
    from llamatune.export import is_model_dir, merge

    if (source / "adapter").is_dir() or (source / "adapter_config.json").exists():
        return Path(merge(source))
    if is_model_dir(source):
        return source
    raise FileNotFoundError(f"{source}: neither a training run (adapter/) nor an HF model directory (config.json + "
                            "*.safetensors)")


def _shards(model_dir: Path) -> dict[str, str]:
    """Tensor name -> the safetensors file (in ``model_dir``) that holds it."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        return dict(read_json(index)["weight_map"])
    files = sorted(model_dir.glob("*.safetensors"))
    if len(files) != 1:
        raise FileNotFoundError(f"{model_dir}: expected model.safetensors or an index of shards, found "
                                f"{[f.name for f in files]}")
    from safetensors import safe_open

    with safe_open(str(files[0]), "pt") as f:
        return {k: files[0].name for k in f.keys()}


def _stamp(model_dir: Path) -> dict | None:
    """The base and template a merged model (``export.merge``'s stamp) or a soup was made from, if it says."""
    from llamatune.export import MERGE_STAMP

    return (read_json(model_dir / MERGE_STAMP, {}) or read_json(model_dir / SOUP_STAMP, {}) or {}).get("stamp")


def check_sources(dirs: list[Path]) -> list[dict[str, str]]:
    """Refuse sources that cannot be averaged (fewer than two, one given twice, another base or template, other
    tensors or shapes); each source's shard map."""
    from safetensors import safe_open

    if len(dirs) < 2:
        raise ValueError(f"a soup needs two or more models, got {len(dirs)}")
    if len({d.resolve() for d in dirs}) != len(dirs):
        raise ValueError(f"a source is given twice: {[str(d) for d in dirs]}")
    stamps = [_stamp(d) for d in dirs]
    for d, s in zip(dirs, stamps):
        if s != stamps[0]:
            raise ValueError(f"{d}: merged from {s}, but {dirs[0]} from {stamps[0]}: a soup averages fine-tunes of "
                             "one base with one chat template")
    maps, shapes = [_shards(d) for d in dirs], {}
    for d, shards in zip(dirs, maps):
        if set(shards) != set(maps[0]):
            odd = sorted(set(shards) ^ set(maps[0]))[:3]
            raise ValueError(f"{d}: its tensors differ from {dirs[0]}'s (e.g. {odd})")
        for name in sorted(set(shards.values())):
            with safe_open(str(d / name), "pt") as f:
                for k in f.keys():
                    shape = tuple(f.get_slice(k).get_shape())
                    if shapes.setdefault(k, shape) != shape:
                        raise ValueError(f"{d}: tensor {k} has shape {list(shape)}, {dirs[0]}'s {list(shapes[k])}")
    return maps


def _base_dir(dirs: list[Path], maps: list[dict[str, str]]) -> Path | None:
    """The sources' base model directory (from their stamp), when it is on disk with the sources' tensors."""
    from llamatune.export import is_model_dir

    base = (_stamp(dirs[0]) or {}).get("base")
    if not base or not is_model_dir(Path(base)):
        return None
    return Path(base) if set(_shards(Path(base))) == set(maps[0]) else None


def update_stats(gram: list[list[float]]) -> dict:
    """Norms, pairwise cosines and ``kept`` (see the module doc) from the Gram matrix of the sources' updates."""
    n = len(gram)
    norms = [gram[i][i] ** 0.5 for i in range(n)]
    cos = [[gram[i][j] / (norms[i] * norms[j]) if norms[i] and norms[j] else 0.0 for j in range(n)] for i in range(n)]
    mean_norm = sum(norms) / n
    soup_norm = max(sum(map(sum, gram)), 0.0) ** 0.5 / n
    return {"norm": [round(x, 6) for x in norms], "pairwise_cosine": [[round(c, 4) for c in row] for row in cos],
            "kept": round(soup_norm / mean_norm, 4) if mean_norm else None}


def average(sources: list, base=None, gram: list[list[float]] | None = None, rows_at_once: int = 1 << 22):
    """The uniform mean of one tensor over ``sources`` (safetensors slices of it): summed in float32 in the sources'
    order, returned in their dtype. With ``base`` (its slice in the base model), the tensor's share of the Gram
    matrix of the sources' updates is added to ``gram``'s upper triangle, in float64. Each file is read once, a block
    of rows at a time, so the statistics cost a few blocks of memory whatever the tensor's size or the count."""
    import torch

    shape = sources[0].get_shape()
    per_row = math.prod(shape[1:]) if shape else 1
    step = max(1, rows_at_once // max(1, per_row))
    blocks = [slice(r, r + step) for r in range(0, shape[0], step)] if shape else [...]
    out = None
    for rows in blocks:
        parts = [s[rows] for s in sources]
        acc = parts[0].to(torch.float32, copy=True)
        for t in parts[1:]:
            acc.add_(t.to(torch.float32))
        if out is None:
            out = torch.empty(shape, dtype=parts[0].dtype)
        out[rows] = (acc / len(sources)).to(parts[0].dtype)
        if base is not None and gram is not None:
            b = base[rows].to(torch.float64).flatten()
            deltas = [t.to(torch.float64).flatten() - b for t in parts]
            for i, di in enumerate(deltas):
                for j in range(i, len(deltas)):
                    gram[i][j] += float(di @ deltas[j])
    return out


def soup(sources: list[str | Path], out: str | Path) -> Path:
    """Average the models of ``sources`` uniformly into the HF model directory ``out`` (see the module doc)."""
    from contextlib import ExitStack

    from safetensors import safe_open
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from llamatune.export import MERGE_STAMP
    from llamatune.progress import tqdm_disable

    dirs = [_model_dir(Path(s)) for s in sources]
    maps = check_sources(dirs)
    base = _base_dir(dirs, maps)
    base_map = _shards(base) if base else {}
    gram = [[0.0] * len(dirs) for _ in dirs]
    by_file: dict[str, list[str]] = {}
    for k, name in maps[0].items():  # the soup keeps the first source's shard layout
        by_file.setdefault(name, []).append(k)
    with replacing(Path(out)) as tmp, ExitStack() as stack:
        tmp.mkdir(parents=True)
        for f in dirs[0].iterdir():  # config, tokenizer, chat template, generation config, shard index
            if f.is_file() and not f.name.endswith(".safetensors") and f.name not in (MERGE_STAMP, SOUP_STAMP):
                shutil.copy2(f, tmp / f.name)
        handles: dict[Path, object] = {}

        def part(d: Path, shards: dict[str, str], k: str):
            """Tensor ``k`` of the model in ``d`` as a safetensors slice (each file opened once)."""
            path = d / shards[k]
            if path not in handles:
                handles[path] = stack.enter_context(safe_open(str(path), "pt"))
            return handles[path].get_slice(k)

        total = sum(len(v) for v in by_file.values())
        with tqdm(total=total, desc=f"averaging {len(dirs)} models", unit="tensor", disable=tqdm_disable()) as bar:
            for name, keys in sorted(by_file.items()):
                out_tensors = {}
                for k in keys:
                    out_tensors[k] = average([part(d, m, k) for d, m in zip(dirs, maps)],
                                             part(base, base_map, k) if base is not None else None, gram)
                    bar.update(1)
                save_file(out_tensors, str(tmp / name), metadata={"format": "pt"})
        for i in range(len(dirs)):
            for j in range(i):
                gram[i][j] = gram[j][i]
        write_json(tmp / SOUP_STAMP, {
            "method": "uniform average of the weights (model soup)", "stamp": _stamp(dirs[0]),
            "sources": [{"path": str(d), "sha256": {f: sha256_file(d / f) for f in sorted(set(m.values()))}}
                        for d, m in zip(dirs, maps)],
            "updates": {"base": str(base), **update_stats(gram)} if base is not None else None}, indent=2)
    return Path(out)


def add_arguments(parser) -> None:
    parser.add_argument("sources", nargs="+", help="training runs (adapter/: merged first) or HF model directories, "
                                                   "fine-tunes of one base")
    parser.add_argument("--out", required=True, help="the soup's HF model directory (then: llamatune export --model "
                                                     "OUT --out DIR)")


def main(args) -> int:
    out = soup(args.sources, args.out)
    updates = read_json(out / SOUP_STAMP).get("updates") or {}
    print(json.dumps({"soup": str(out), "sources": len(args.sources), "kept": updates.get("kept"),
                      "pairwise_cosine": updates.get("pairwise_cosine")}))
    return 0
