"""Padding-free packing (``packing: true``): no row of a pack attends to another, and assistant-only labels survive.

The loss of a pack (several rows concatenated into one sequence, ``position_ids`` restarting at every row) must equal
the loss of the same rows fed one at a time, and so must the LoRA gradients: a row that saw its neighbours would
change both. Checked on the tiny Llama in fp32 for the project's ``packed`` attention (:mod:`llamatune.train_fast`)
and for transformers' ``sdpa`` and ``eager`` (whose mask utilities detect the pack from ``position_ids``);
tolerance rel 1e-5 on the summed loss and 1e-4 on every LoRA gradient (||pack − rows|| / ||rows||; fp32: the pack
and the rows sum the same products in other orders). A control feeds the same pack without ``position_ids``: rows
then see their neighbours and the gradients move by over 1e-2, so the comparison can fail.
"""

from __future__ import annotations


import pytest

from tests.conftest import REPO

pytest.importorskip("trl")
pytest.importorskip("peft")

TINY = REPO / "FuncCall" / "recipes" / "tiny-cpu.yaml"


@pytest.fixture(scope="module")
def packed_trainer(funccall_data, tmp_path_factory):
    import torch

    from llamatune.recipe import load_recipe
    from llamatune.train import build_trainer

    out = tmp_path_factory.mktemp("packed")
    recipe = load_recipe(TINY, [f"--dataset_path={funccall_data}", f"--output_dir={out}", "--eval_samples=0",
                                "--max_length=2048", "--packing=true", "--padding_free=true",
                                "--per_device_train_batch_size=3"])
    trainer, info = build_trainer(recipe, out)
    assert info["padding_free"] and info["attn_implementation"] == "packed"  # the default on a CPU
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:  # lora_B starts at zero: give it values, so that every LoRA weight counts
                p.normal_(0, 0.02)
            elif "q_proj.base_layer" in name or "k_proj.base_layer" in name:
                p.mul_(8.0)  # sharper attention than the random init's near-uniform one: a neighbour would matter
    return trainer


def _rows_of(trainer, n_packs: int) -> tuple[list[dict], dict]:
    """The packed batch of the first ``n_packs`` packs, and its rows one by one (split by ``seq_lengths``)."""
    ds = trainer.train_dataset
    packs = [ds[i] for i in range(n_packs)]
    rows = []
    for pack in packs:
        start = 0
        for n in pack["seq_lengths"]:
            rows.append({"input_ids": pack["input_ids"][start:start + n], "labels": pack["labels"][start:start + n]})
            start += n
    return rows, trainer.data_collator(packs)


def _loss_and_grads(model, **batch):
    """Summed token loss, labelled tokens and LoRA gradients (through the label-only head: the fast path, and the
    one whose equality with the stock loss ``tests/test_label_head.py`` checks)."""
    model.zero_grad()
    out = model(**batch, fused_lm_head=True)
    n = int((batch["labels"][:, 1:] != -100).sum())
    (out.loss * n).backward()  # the summed token loss, so that rows add up
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.requires_grad}
    return float(out.loss.detach()) * n, n, grads


@pytest.mark.parametrize("attn", ["packed", "sdpa", "eager"])
def test_a_pack_trains_like_its_rows_one_at_a_time(packed_trainer, attn):
    import torch

    trainer = packed_trainer
    model = trainer.model
    model.get_base_model().set_attn_implementation(attn)
    model.train()
    rows, batch = _rows_of(trainer, 1)
    assert len(rows) >= 2, "the pack holds several rows"
    ids, labels, pos = batch["input_ids"], batch["labels"], batch["position_ids"]
    assert ids.shape[0] == 1 and "attention_mask" not in batch, "padding-free: one sequence, no padding"
    assert ids.shape[1] == sum(len(r["input_ids"]) for r in rows)
    # assistant-only labels survive packing: the rows' own labels, end to end (a row's first token never has one)
    want = torch.cat([torch.tensor([-100] + r["labels"][1:]) for r in rows])
    assert torch.equal(labels[0], want)
    assert 0 < int((labels != -100).sum()) < labels.numel() // 2

    fed = {"input_ids": ids, "labels": labels, "position_ids": pos}
    if attn == "packed":
        fed.update(cu_seq_lens_q=batch["cu_seq_lens_q"], cu_seq_lens_k=batch["cu_seq_lens_k"])
    packed_sum, packed_n, packed_grads = _loss_and_grads(model, **fed)
    row_sum, row_n, row_grads = 0.0, 0, None
    for r in rows:
        s, n, g = _loss_and_grads(model, input_ids=torch.tensor([r["input_ids"]]), labels=torch.tensor([r["labels"]]))
        row_sum, row_n = row_sum + s, row_n + n
        row_grads = g if row_grads is None else {k: row_grads[k] + g[k] for k in g}
    assert packed_n == row_n
    assert packed_sum == pytest.approx(row_sum, rel=1e-5)
    assert _worst_gradient_gap(packed_grads, row_grads) < 1e-4

    # control: the same pack without position_ids is one long causal sequence; its rows see their neighbours and
    # the gradients move by far more than the tolerance above
    blind_sum, _, blind_grads = _loss_and_grads(model, input_ids=ids, labels=labels)
    assert blind_sum != pytest.approx(row_sum, rel=1e-5)
    assert _worst_gradient_gap(blind_grads, row_grads) > 1e-2


def _worst_gradient_gap(grads: dict, reference: dict) -> float:
    """max over LoRA weights of ||g - ref|| / ||ref|| (every reference gradient non-zero)."""
    assert grads.keys() == reference.keys() and all(float(g.norm()) > 0 for g in reference.values())
    return max(float((grads[k] - g).norm() / g.norm()) for k, g in reference.items())


def test_packed_attention_without_row_bounds_is_eager(tiny_model_dir):
    """No ``cu_seq_lens_q`` (an unpacked batch, generation): the ``packed`` implementation is eager attention."""
    import torch
    from transformers import AutoModelForCausalLM

    from llamatune.train_fast import register_packed_attention

    register_packed_attention()
    ids = torch.tensor([[128000, 9906, 1917, 374, 264, 1296], [128000, 9906, 1917, 0, 0, 0]])
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])
    outs = {}
    for attn in ("packed", "eager"):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn, dtype=torch.float32)
        with torch.no_grad():
            outs[attn] = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(outs["packed"], outs["eager"], atol=0, rtol=0)
