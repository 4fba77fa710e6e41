"""The output layer and the loss at labelled positions only (``fast_lm_head: true``, the default).

TRL's ``SFTTrainer`` already replaces the model's logits with a fused, chunked log-probability head
(``trl.trainer.utils.add_fused_lm_head``), but it gathers the positions that carry a label only on Triton devices
(CUDA/XPU); elsewhere, the CPU included, it projects *every* position through the vocabulary and masks afterwards.
With ``assistant_only_loss`` most positions are prompt (system text, tool schemas, user turns, tool results) and
carry no label, and the head is most of the model: gemma-3-270m's 262,144 × 640 head is ~60% of its forward FLOPs,
Llama-3.2-3B's 128,256 × 3,072 about a fifth. :func:`add_label_only_head` wraps TRL's fused forward so that, on
every device, the hidden states are gathered where the next-token label is not ``-100`` *before* the head, then go
through TRL's own kernel (``trl.kernels.ChunkedLogProbFunction``) with the same softcapping, scale and metrics. The
loss, its gradients and the logged entropy/accuracy are those of the stock path (``tests/test_label_head.py``
checks loss and LoRA gradients against it on the tiny Llama and both embedded models); only the work differs.

``fast_lm_head: false`` in a recipe keeps TRL's stock path. unsloth brings its own fused loss and is left alone.

**Decision weight** (recipe ``decision_weight``, default 1 = plain SFT). The first token an assistant turn writes is
where the model decides: a call (``<tool_call>`` / ``{"name"``) or an answer in words, and after a tool result,
another call or the answer. In a row it is one labelled token among tens, so plain SFT gives that choice a few per
cent of the gradient. With ``decision_weight: w`` each turn's first labelled token (:func:`decision_positions`)
counts ``w`` times in the loss; every other token counts once and the normaliser (the labelled-token count) is
unchanged, so ``w: 1`` is the stock loss to the bit. TRL's ``compute_loss`` sums ``-log_probs`` itself, so the
weighted output's ``log_probs`` are the weighted terms of its loss (the logged entropy and accuracy are not
weighted); ``loss_type: dft`` and label smoothing, which read ``log_probs`` otherwise, are refused with it.
"""

from __future__ import annotations

import functools
import types


def _logit_transform(config) -> tuple[float | None, float]:
    """``(final_logit_softcapping, logit_scale)`` as TRL reads them (the families this project trains need only
    these two; others are refused rather than trained wrongly)."""
    text = config.get_text_config()
    for attr in ("output_multiplier", "lm_head_multiplier", "logits_scaling"):
        if getattr(text, attr, None) is not None:
            raise NotImplementedError(f"fast_lm_head: {text.model_type} scales its logits ({attr}); set "
                                      "fast_lm_head: false in the recipe")
    scale = getattr(text, "logit_scale", None)
    return getattr(text, "final_logit_softcapping", None), 1.0 if scale is None else scale


def decision_positions(mask):
    """``[B, T]`` bool: the first position of every run of labelled positions in ``mask`` (each assistant turn's
    first token; turns are separated by unlabelled prompt tokens, packed rows by their prompts)."""
    import torch

    before = torch.nn.functional.pad(mask[:, :-1], (1, 0), value=False)
    return mask & ~before


def add_label_only_head(model, decision_weight: float = 1.0) -> None:
    """Patch ``model`` (the causal LM under PEFT, after ``SFTTrainer`` added its fused head) so that
    ``model(..., labels=..., fused_lm_head=True)`` projects only the positions whose next-token label is set, and
    weighs each assistant turn's first token ``decision_weight`` times (see the module doc)."""
    if not decision_weight > 0:
        raise ValueError(f"decision_weight must be > 0, got {decision_weight!r}")
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer import utils as trl_utils

    if getattr(model, "_llamatune_label_only_head", False):
        return
    fused_forward = model.forward  # TRL's: the stock fused head, and the plain forward when not fused
    softcap, scale = _logit_transform(model.config)
    chunk = trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE  # vocabulary columns per tile, as TRL's stock path

    @functools.wraps(type(model).forward)
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head or labels is None or shift_labels is not None or kwargs.get("output_router_logits"):
            extra = {k: v for k, v in (("labels", labels), ("shift_labels", shift_labels),
                                       ("num_items_in_batch", num_items_in_batch)) if v is not None}
            return fused_forward(*args, fused_lm_head=fused_lm_head, **extra, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        head = self.get_output_embeddings()
        targets = labels[:, 1:].to(head.weight.device)
        mask = targets != -100
        picked = hidden.to(head.weight.device)[mask]  # [K, H]: the only rows the head sees
        per_token = ChunkedLogProbFunction.apply(picked, head.weight, head.bias, targets[mask], 1.0, chunk, softcap,
                                                 scale, ("log_probs", "entropy", "is_top1"))
        log_probs, entropy, _, _, is_top1 = (
            None if x is None else x.new_zeros(mask.shape).masked_scatter(mask, x) for x in per_token)
        denom = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        if decision_weight != 1.0:  # TRL's compute_loss sums -log_probs itself: weigh the terms it sums
            log_probs = log_probs * (1.0 + (decision_weight - 1.0) * decision_positions(mask).to(log_probs.dtype))
        loss = -log_probs.sum() / denom
        return trl_utils.FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=entropy, is_top1=is_top1,
                                   label_mask=mask)

    model.forward = types.MethodType(forward, model)
    model._llamatune_label_only_head = True
