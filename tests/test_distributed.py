"""Training under ``accelerate launch``: the distributed helpers, the accelerate config files, and (slow) a real
2-process DDP run on the CPU (gloo) against a single-process run with the same effective batch, killed and resumed.

Why the runs must agree: with ``per_device_train_batch_size`` 1 on 2 processes, accelerate's seedable sampler draws
the same permutation as 1 process with batch 2 and hands rows 2k and 2k+1 of it to ranks 0 and 1, so every step sees
the same two packed rows; the Trainer divides the summed token losses by the number of labelled tokens of the whole
step, counted across processes (``average_tokens_across_devices``), and DDP averages gradients, so the gradient is
the single-process one up to float32 rounding (a different order of additions, and gloo's all-reduce).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, REPO

CONFIGS = REPO / "configs" / "accelerate"


# --- helpers --------------------------------------------------------------------------------------------------
def test_dist_state_reads_the_launcher_environment():
    from llamatune.distributed import Dist, dist_state

    assert dist_state({}) == Dist(0, 0, 1) and dist_state({}).is_main and not dist_state({}).distributed
    two = dist_state({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"})
    assert (two.rank, two.world_size, two.is_main, two.distributed) == (1, 2, False, True)
    node2 = dist_state({"RANK": "9", "LOCAL_RANK": "1", "WORLD_SIZE": "16"})  # second node, second GPU
    assert (node2.rank, node2.local_rank, node2.is_main) == (9, 1, False)
    with pytest.raises(ValueError, match=r"RANK=2, WORLD_SIZE=2"):
        dist_state({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match=r"\$WORLD_SIZE='two'"):
        dist_state({"WORLD_SIZE": "two"})


def test_only_the_main_process_writes(monkeypatch, tmp_path):
    from llamatune import distributed

    calls = []
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not distributed.is_main_process()
    assert distributed.on_main(calls.append, "rank 1") is None and calls == []
    monkeypatch.setenv("RANK", "0")
    distributed.on_main(calls.append, "rank 0")
    assert calls == ["rank 0"]


def test_effective_batch_and_its_description():
    from types import SimpleNamespace

    from llamatune.distributed import describe, effective_batch, scale_info

    assert effective_batch(1, 4, 8) == 32 and effective_batch(2, 1, 1) == 2
    with pytest.raises(ValueError, match="all must be >= 1"):
        effective_batch(1, 0, 2)
    trainer = SimpleNamespace(args=SimpleNamespace(world_size=8, per_device_train_batch_size=1,
                                                   gradient_accumulation_steps=4))
    scale = scale_info(trainer, env={"RANK": "3", "WORLD_SIZE": "8"})
    assert scale == {"world_size": 8, "distributed": "ddp", "per_device_train_batch_size": 1,
                     "gradient_accumulation_steps": 4, "effective_batch_size": 32}
    assert describe(scale) == "effective batch size 32 = 1 per device × 4 accumulation × 8 processes (ddp)"
    trainer.is_fsdp_enabled = True
    assert scale_info(trainer, env={"RANK": "0", "WORLD_SIZE": "8"})["distributed"] == "fsdp"
    with pytest.raises(RuntimeError, match="launched as 2 processes but the trainer runs as 8"):
        scale_info(trainer, env={"RANK": "0", "WORLD_SIZE": "2"})


def test_last_checkpoint_skips_an_incomplete_one(tmp_path):
    from llamatune.distributed import is_final, last_checkpoint

    assert last_checkpoint(tmp_path) is None
    for step, complete in ((4, True), (8, True), (12, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(
                json.dumps({"global_step": step, "max_steps": 8}))
    (tmp_path / "checkpoint-x").mkdir()
    assert last_checkpoint(tmp_path).name == "checkpoint-8"
    assert is_final(tmp_path / "checkpoint-8") and not is_final(tmp_path / "checkpoint-4")


@pytest.mark.parametrize("name, kind, extra", [
    ("ddp", "MULTI_GPU", {}),
    ("fsdp", "FSDP", {"fsdp_version": 2, "fsdp_state_dict_type": "SHARDED_STATE_DICT",
                      "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                      "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer"}),
    ("zero2", "DEEPSPEED", {"zero_stage": 2}),
    ("zero3", "DEEPSPEED", {"zero_stage": 3, "zero3_save_16bit_model": True}),
])
def test_accelerate_configs_load_with_accelerates_own_loader(name, kind, extra):
    """Each file under configs/accelerate/ is read by accelerate's config loader and fills the launch arguments
    as ``accelerate launch --config_file`` would (DeepSpeed itself is not installed here, so that is all for ZeRO)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = CONFIGS / f"{name}.yaml"
    cfg = load_config_from_file(str(path))
    assert (cfg.distributed_type.value, cfg.num_processes, cfg.num_machines, cfg.use_cpu) == (kind, 8, 1, False)
    assert cfg.mixed_precision == "no"  # precision is the recipe's (bf16/fp16 by the device rule), not the launcher's
    section = {"FSDP": cfg.fsdp_config, "DEEPSPEED": cfg.deepspeed_config}.get(kind, {})
    assert {k: section[k] for k in extra} == extra
    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "llamatune.cli", "train", "R"])
    args, *_ = (lambda r: r if isinstance(r, tuple) else (r,))(_validate_launch_command(args))
    assert args.num_processes == 8 and args.module and args.training_script == "llamatune.cli"
    assert (bool(args.multi_gpu), bool(args.use_fsdp), bool(args.use_deepspeed)) == (
        kind == "MULTI_GPU", kind == "FSDP", kind == "DEEPSPEED")
