"""`llamatune soup`: the uniform weight average of fine-tunes of one base, on the tiny Llama (real tokenizer)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import requires

pytestmark = requires("torch", "transformers", "safetensors")


def _finetune(tiny_model_dir: Path, out: Path, seed: int, shard: str | None = None) -> Path:
    """A stand-in fine-tune: the tiny base with seeded noise on every weight, saved as export.merge saves one."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    model.save_pretrained(out, **({"max_shard_size": shard} if shard else {}))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(tiny_model_dir / f, out / f)
    stamp = {"base": str(tiny_model_dir), "template": "llama-3.2"}
    (out / "llamatune_merge.json").write_text(json.dumps({"stamp": stamp, "dtype": "float32",
                                                          "adapter": f"runs/s{seed}/adapter"}))
    return out


def _weights(d: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_the_soup_is_the_mean_of_the_weights_and_loads_as_a_model(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from llamatune import soup
    from llamatune.jsonl import sha256_file

    srcs = [_finetune(tiny_model_dir, tmp_path / f"s{i}", seed=i) for i in range(3)]
    out = soup.soup(srcs, tmp_path / "soup")
    got, ws = _weights(out), [_weights(s) for s in srcs]
    assert set(got) == set(ws[0]) and len(got) > 5
    for k, t in got.items():
        assert t.dtype == ws[0][k].dtype
        torch.testing.assert_close(t, (ws[0][k] + ws[1][k] + ws[2][k]) / 3, rtol=0, atol=1e-6)
    assert not torch.equal(got[k], ws[0][k])  # a soup, not a copy of one source
    stamp = json.loads((out / "soup.json").read_text())
    assert [s["path"] for s in stamp["sources"]] == [str(s) for s in srcs]
    assert len({s["sha256"]["model.safetensors"] for s in stamp["sources"]}) == 3
    assert stamp["sources"][1]["sha256"] == {"model.safetensors": sha256_file(srcs[1] / "model.safetensors")}
    assert stamp["stamp"]["template"] == "llama-3.2"
    assert not (out / "llamatune_merge.json").exists()  # no source's adapter claimed for the soup
    assert (out / "tokenizer.json").read_bytes() == (srcs[0] / "tokenizer.json").read_bytes()
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[1, 2, 3, 4]])
    srcm = AutoModelForCausalLM.from_pretrained(srcs[0])
    assert model(ids).logits.shape == srcm(ids).logits.shape
    assert not torch.allclose(model(ids).logits, srcm(ids).logits)
    # a soup of a model and its exact copy is that model, and a soup can join another soup (its stamp is read)
    twin = tmp_path / "twin"
    shutil.copytree(srcs[0], twin)
    same = soup.soup([srcs[0], twin], tmp_path / "same")
    assert all(torch.equal(t, ws[0][k]) for k, t in _weights(same).items())
    soup.soup([out, srcs[0]], tmp_path / "again")


def test_the_sources_updates_are_measured_against_their_base(tiny_model_dir, tmp_path):
    """soup.json's ``updates``: each source's ``W - W_base`` norm, the cosines between them and ``kept`` equal what
    the weights give by hand; a copy of a source has cosine 1 with it; a source's negation has cosine -1 and
    cancels it; without the base on disk there is no such entry."""
    import torch

    from llamatune import soup

    base_w = _weights(tiny_model_dir)
    srcs = [_finetune(tiny_model_dir, tmp_path / f"s{i}", seed=i) for i in range(2)]
    twin = tmp_path / "twin"
    shutil.copytree(srcs[0], twin)
    ws = [_weights(s) for s in srcs]
    mirror = tmp_path / "mirror"  # base - (s0 - base): the opposite update
    shutil.copytree(srcs[0], mirror)
    from safetensors.torch import save_file
    save_file({k: 2 * base_w[k] - t for k, t in ws[0].items()}, str(mirror / "model.safetensors"),
              metadata={"format": "pt"})

    def flat(w):
        return torch.cat([(w[k].double() - base_w[k].double()).flatten() for k in sorted(w)])

    d0, d1 = flat(ws[0]), flat(ws[1])
    up = json.loads((soup.soup([srcs[0], srcs[1], twin], tmp_path / "soup") / "soup.json").read_text())["updates"]
    assert up["base"] == str(tiny_model_dir)
    assert up["norm"][0] == pytest.approx(float(d0.norm()), rel=1e-5) == up["norm"][2]
    cos01 = float(d0 @ d1 / d0.norm() / d1.norm())
    assert abs(cos01) < 0.05  # independent noise: near orthogonal
    assert up["pairwise_cosine"][0][1] == pytest.approx(cos01, abs=1e-4) == up["pairwise_cosine"][1][0]
    assert up["pairwise_cosine"][0][2] == pytest.approx(1.0, abs=1e-4)
    mean_norm = (2 * float(d0.norm()) + float(d1.norm())) / 3
    assert up["kept"] == pytest.approx(float((2 * d0 + d1).norm()) / 3 / mean_norm, abs=1e-4)
    from safetensors import safe_open  # read in blocks of a few rows, the mean and the Gram matrix are the same
    with safe_open(str(srcs[0] / "model.safetensors"), "pt") as f0, safe_open(str(srcs[1] / "model.safetensors"),
                                                                              "pt") as f1, \
            safe_open(str(tiny_model_dir / "model.safetensors"), "pt") as fb:
        whole, blocks = [[0.0] * 2 for _ in range(2)], [[0.0] * 2 for _ in range(2)]
        for k in f0.keys():
            mean = soup.average([f0.get_slice(k), f1.get_slice(k)], fb.get_slice(k), whole)
            by_rows = soup.average([f0.get_slice(k), f1.get_slice(k)], fb.get_slice(k), blocks, rows_at_once=7)
            assert torch.equal(by_rows, mean)
            torch.testing.assert_close(mean, (ws[0][k] + ws[1][k]) / 2, rtol=0, atol=1e-6)
    assert blocks[0] == pytest.approx(whole[0], rel=1e-9) and blocks[1][1] == pytest.approx(whole[1][1], rel=1e-9)
    assert whole[0][1] == pytest.approx(float(d0 @ d1), rel=1e-9)
    opposite = json.loads((soup.soup([srcs[0], mirror], tmp_path / "zero") / "soup.json").read_text())["updates"]
    assert opposite["pairwise_cosine"][0][1] == pytest.approx(-1.0, abs=1e-4) and opposite["kept"] < 1e-3
    stamp = json.loads((srcs[1] / "llamatune_merge.json").read_text())
    for s in srcs:
        (s / "llamatune_merge.json").write_text(json.dumps({**stamp, "stamp": {**stamp["stamp"],
                                                                               "base": str(tmp_path / "gone")}}))
    assert json.loads((soup.soup(srcs, tmp_path / "nobase") / "soup.json").read_text())["updates"] is None


def test_a_sharded_source_keeps_its_shard_layout(tiny_model_dir, tmp_path):
    import torch

    from llamatune import soup

    srcs = [_finetune(tiny_model_dir, tmp_path / f"s{i}", seed=i, shard="2MB") for i in range(2)]
    assert (srcs[0] / "model.safetensors.index.json").exists()
    out = soup.soup(srcs, tmp_path / "soup")
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(p.name for p in srcs[0].glob("*.safetensors"))
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    got, a, b = _weights(out), _weights(srcs[0]), _weights(srcs[1])
    assert set(index) == set(got)
    for k, t in got.items():
        torch.testing.assert_close(t, (a[k] + b[k]) / 2, rtol=0, atol=1e-6)


def test_sources_that_cannot_be_averaged_are_refused_by_name(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from llamatune import soup

    a = _finetune(tiny_model_dir, tmp_path / "a", seed=0)
    b = _finetune(tiny_model_dir, tmp_path / "b", seed=1)
    with pytest.raises(ValueError, match="two or more models, got 1"):
        soup.soup([a], tmp_path / "out")
    with pytest.raises(ValueError, match="given twice"):
        soup.soup([a, a], tmp_path / "out")
    other = tmp_path / "other-base"
    shutil.copytree(b, other)
    (other / "llamatune_merge.json").write_text(json.dumps({"stamp": {"base": "gemma", "template": "gemma"}}))
    with pytest.raises(ValueError, match=f"{other}: merged from .*gemma.* one base with one chat template"):
        soup.soup([a, other], tmp_path / "out")
    w = load_file(str(b / "model.safetensors"))
    k = next(iter(sorted(w)))
    missing = tmp_path / "missing"
    shutil.copytree(b, missing)
    save_file({n: t for n, t in w.items() if n != k}, str(missing / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"{missing}: its tensors differ"):
        soup.soup([a, missing], tmp_path / "out")
    reshaped = tmp_path / "reshaped"
    shutil.copytree(b, reshaped)
    big = next(n for n, t in sorted(w.items()) if t.dim() == 2)
    save_file({**w, big: w[big][:-1].contiguous()}, str(reshaped / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"{reshaped}: tensor {big} has shape"):
        soup.soup([a, reshaped], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="neither a training run"):
        soup.soup([a, tmp_path / "nothing"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_interrupted_soup_leaves_no_directory_and_a_rerun_writes_it(tiny_model_dir, tmp_path, monkeypatch):
    import safetensors.torch

    from llamatune import soup

    srcs = [_finetune(tiny_model_dir, tmp_path / f"s{i}", seed=i, shard="2MB") for i in range(2)]
    real, calls = safetensors.torch.save_file, []

    def dies_on_the_second_shard(*a, **k):
        calls.append(a[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", dies_on_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        soup.soup(srcs, tmp_path / "soup")
    assert not (tmp_path / "soup").exists() and not (tmp_path / "soup.part").exists()
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    assert (soup.soup(srcs, tmp_path / "soup") / "soup.json").exists()


def test_a_training_run_is_merged_first(tiny_model_dir, tmp_path, monkeypatch):
    import llamatune.export as export

    from llamatune import soup

    runs = []
    for i in range(2):
        run = tmp_path / f"run{i}"
        (run / "adapter").mkdir(parents=True)
        runs.append(run)
    merged = {}

    def fake_merge(run_dir, *a, **k):  # export.merge is tested on real adapters in test_export.py
        merged[Path(run_dir)] = _finetune(tiny_model_dir, Path(run_dir) / "merged", seed=len(merged))
        return merged[Path(run_dir)]

    monkeypatch.setattr(export, "merge", fake_merge)
    out = soup.soup(runs, tmp_path / "soup")
    assert list(merged) == runs
    sources = json.loads((out / "soup.json").read_text())["sources"]
    assert [s["path"] for s in sources] == [str(r / "merged") for r in runs]
