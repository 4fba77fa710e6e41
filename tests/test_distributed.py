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
    # killed inside trainer_state.json itself (opened and truncated, or half written): not a checkpoint either
    (tmp_path / "checkpoint-12" / "trainer_state.json").write_text("")
    (tmp_path / "checkpoint-16").mkdir()
    (tmp_path / "checkpoint-16" / "trainer_state.json").write_text('{"best_metric": null, "global_st')
    assert last_checkpoint(tmp_path).name == "checkpoint-8"


@pytest.mark.parametrize("name, kind, extra", [
    ("ddp", "MULTI_GPU", {}),
    ("fsdp", "FSDP", {"fsdp_version": 2, "fsdp_state_dict_type": "SHARDED_STATE_DICT",
                      "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}),
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


# --- 2 processes on the CPU (DDP over gloo) -------------------------------------------------------------------
TINY = REPO / "FineTome" / "recipes" / "tiny-cpu.yaml"
STEPS, SAVE = 8, 4
FAST = ["--max_steps", str(STEPS), "--save_steps", str(SAVE), "--eval_steps", "4", "--eval_samples", "4",
        "--max_length", "128", "--learning_rate", "5e-3"]
# Tolerances against the single-process run with the same effective batch (measured: losses agree to 1e-7
# relative, adapter weights to 2e-5 absolute). Losses are float32 sums in another order; weights pass through
# Adam, whose first steps move every LoRA-B entry by about ±lr whatever the size of its gradient, so an entry whose
# gradient is ~0 can take a rounding-sized difference much further than the loss does.
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-4

# Run under `accelerate launch`: records which process wrote what, and can stop both processes for good
# (os._exit, like SIGKILL: no cleanup) once both have finished checkpoint KILL_AT.
LAUNCHED = textwrap.dedent("""
    import json, os, sys
    import llamatune, llamatune.train as T
    from transformers import Trainer, TrainerCallback

    rank = int(os.environ.get("RANK", "0"))
    trace = open(os.path.join(os.environ["TRACE_DIR"], f"rank{rank}.jsonl"), "a")

    def note(what, path):
        trace.write(json.dumps({"rank": rank, "what": what, "path": str(path)}) + "\\n")
        trace.flush()

    note("import", llamatune.__file__)
    write_json, save = T.write_json, Trainer._save
    T.write_json = lambda path, obj, **kw: (note("write_json", path), write_json(path, obj, **kw))[1]
    # every rank enters Trainer._save (ZeRO-3/FSDP gather there); args.should_save decides who writes
    Trainer._save = lambda self, output_dir=None, state_dict=None: (
        note("save" if self.args.should_save else "no-write", output_dir), save(self, output_dir, state_dict))[1]

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == int(os.environ.get("KILL_AT", "0")):
                import torch.distributed as td
                td.barrier()  # both ranks have written their part of the checkpoint
                os._exit(137)

    from llamatune.recipe import load_recipe
    from llamatune.train import train
    argv = sys.argv[1:]
    train(load_recipe(argv[0], argv[1:]), callbacks=[Kill()])
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two(tmp_path, run_dir: Path, data_dir: Path, *extra: str, kill_at: int = 0):
    """``accelerate launch`` 2 processes of the tiny recipe at batch 1 per process: (completed process, trace rows).

    ``--cpu`` is not the way: in accelerate 1.15 it starts *one* process unless mpirun is given a hostfile. The
    multi-GPU launcher (torchrun) with ``ACCELERATE_USE_CPU=true`` starts two that join over gloo."""
    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED)
    trace = tmp_path / f"trace-{run_dir.name}"
    trace.mkdir()
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(script), str(TINY), *FAST, "--per_device_train_batch_size", "1", "--dataset_path", str(data_dir),
           "--output_dir", str(run_dir), *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "TRACE_DIR": str(trace), "KILL_AT": str(kill_at)}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    rows = [json.loads(line) for f in sorted(trace.glob("*.jsonl")) for line in f.read_text().splitlines()]
    return proc, rows


def losses(run_dir: Path, key: str = "loss") -> list[float]:
    return [h[key] for h in json.loads((run_dir / "trainer_state.json").read_text())["log_history"] if key in h]


def assert_same_adapter(a_dir: Path, b_dir: Path) -> float:
    import torch
    from safetensors.torch import load_file

    a, b = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (a_dir, b_dir))
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=WEIGHT_ATOL, msg=k)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from llamatune.data.finetome import prepare

    out = tmp_path_factory.mktemp("finetome")
    prepare(str(FIXTURES / "finetome_sample.jsonl"), out, 40, 12, max_bad_fraction=0.2)
    return out


@pytest.fixture(scope="module")
def single_run(data_dir, tmp_path_factory) -> Path:
    """The reference: 1 process × batch 2, the effective batch of 2 processes × batch 1."""
    from llamatune.recipe import load_recipe
    from llamatune.train import train

    run_dir = tmp_path_factory.mktemp("single") / "run"
    return train(load_recipe(TINY, [*FAST, "--per_device_train_batch_size", "2", "--dataset_path", str(data_dir),
                                    "--output_dir", str(run_dir)]))


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_effective_batch(single_run, data_dir, tmp_path):
    run_dir = tmp_path / "ddp"
    t0 = time.time()
    proc, trace = launch_two(tmp_path, run_dir, data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"2-process run: {time.time() - t0:.1f} s")
    # both processes ran this checkout's package, and only rank 0 wrote the run's files and the adapter
    assert {(r["rank"], r["path"]) for r in trace if r["what"] == "import"} == {
        (0, str(REPO / "llamatune" / "__init__.py")), (1, str(REPO / "llamatune" / "__init__.py"))}
    writes = [(r["rank"], Path(r["path"]).name) for r in trace if r["what"] in ("write_json", "save")]
    assert writes == [(0, "run.json"), (0, f"checkpoint-{SAVE}"), (0, f"checkpoint-{STEPS}"), (0, "adapter"),
                      (0, "run.json")]
    assert {Path(r["path"]).name for r in trace if r["what"] == "no-write" and r["rank"] == 1} == {
        f"checkpoint-{SAVE}", f"checkpoint-{STEPS}", "adapter"}  # rank 1 took part in every save, wrote none
    assert proc.stderr.count("[llamatune] effective batch size 2 = 1 per device × 1 accumulation × 2 processes "
                             "(ddp)") == 1
    run = json.loads((run_dir / "run.json").read_text())
    assert (run["status"], run["world_size"], run["effective_batch_size"], run["distributed"]) == ("done", 2, 2, "ddp")
    assert json.loads((single_run / "run.json").read_text())["effective_batch_size"] == 2
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(p.name for p in single_run.iterdir())
    assert sorted(p.name for p in (run_dir / "adapter").iterdir()) == sorted(
        p.name for p in (single_run / "adapter").iterdir())
    assert sorted(p.name for p in (run_dir / f"checkpoint-{SAVE}").glob("rng_state*")) == [
        "rng_state_0.pth", "rng_state_1.pth"]
    # the same training: every logged loss, the held-out losses and the final adapter
    one, two = losses(single_run), losses(run_dir)
    assert len(one) == len(two) == STEPS
    assert two == pytest.approx(one, rel=LOSS_RTOL)
    assert losses(run_dir, "eval_loss") == pytest.approx(losses(single_run, "eval_loss"), rel=LOSS_RTOL)
    diff = assert_same_adapter(single_run, run_dir)
    print(f"max |loss diff| {max(abs(a - b) for a, b in zip(one, two)):.2e}, max |weight diff| {diff:.2e}")


@pytest.mark.slow
def test_two_process_run_killed_after_a_checkpoint_resumes_on_one_process(single_run, data_dir, tmp_path):
    """DDP checkpoints hold one replica (adapter, optimizer, scheduler) plus one RNG file per rank, so a run killed on
    2 processes continues on 1 with the same effective batch (2 × 1 → 1 × 2) and ends where the uninterrupted run
    ends."""
    from llamatune import cli

    run_dir = tmp_path / "killed"
    proc, trace = launch_two(tmp_path, run_dir, data_dir, kill_at=SAVE)
    assert proc.returncode != 0 and (run_dir / f"checkpoint-{SAVE}" / "trainer_state.json").exists()
    assert not (run_dir / "adapter").exists() and not (run_dir / f"checkpoint-{SAVE + 1}").exists()
    assert {r["rank"] for r in trace if r["what"] in ("write_json", "save")} == {0}
    run = json.loads((run_dir / "run.json").read_text())
    assert (run["status"], run["world_size"]) == ("running", 2)

    args = [*FAST, "--per_device_train_batch_size", "2", "--dataset_path", str(data_dir), "--output_dir", str(run_dir)]
    assert cli.main(["train", str(TINY), *args, "--resume"]) == 0
    run = json.loads((run_dir / "run.json").read_text())
    assert (run["status"], run["resumed_from"], run["resumed_from_world_size"], run["world_size"],
            run["effective_batch_size"], run["global_step"]) == ("done", f"checkpoint-{SAVE}", 2, 1, 2, STEPS)
    assert losses(run_dir) == pytest.approx(losses(single_run), rel=LOSS_RTOL)
    assert_same_adapter(single_run, run_dir)
