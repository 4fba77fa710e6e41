"""Training under ``accelerate launch`` (DDP, FSDP, DeepSpeed ZeRO): who writes, how the adapter is saved, the
effective batch.

    accelerate launch --config_file configs/accelerate/ddp.yaml -m llamatune.cli train RECIPE

Every process runs the same :func:`llamatune.train.train`; only the main process (global rank 0) writes the
run's own files (``run.json``, ``config.yaml``, ``trainer_state.json``, ``loss.png``). Checkpoints are written
by the trainer (each rank its own RNG state; FSDP/DeepSpeed each rank its shard), and the final adapter by
:func:`save_adapter` on every rank, because under ZeRO-3 or FSDP the weights must be gathered from all of them
before rank 0 writes the file. Without a launcher everything here is the single-process case (rank 0 of 1).

The rank and world size come from the launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; set by
``accelerate launch``/``torchrun``) until ``torch.distributed`` is initialised, and from it afterwards, so they can
be asked before the trainer exists.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from llamatune.jsonl import read_json


@dataclass(frozen=True)
class Dist:
    rank: int = 0  # global rank
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(env, name: str, default: int) -> int:
    value = env.get(name, "")
    try:
        return int(value) if value != "" else default
    except ValueError:
        raise ValueError(f"${name}={value!r}: expected an integer (set by accelerate launch / torchrun)") from None


def dist_state(env=None) -> Dist:
    """This process's :class:`Dist`: from ``torch.distributed`` when it is initialised, else from the launcher's
    environment variables (``env``, default ``os.environ``), else rank 0 of 1."""
    if env is None:
        try:
            import torch.distributed as td

            if td.is_available() and td.is_initialized():
                return Dist(td.get_rank(), _env_int(os.environ, "LOCAL_RANK", 0), td.get_world_size())
        except ImportError:  # the bare package (no torch)
            pass
        env = os.environ
    world = _env_int(env, "WORLD_SIZE", 1)
    rank = _env_int(env, "RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={world}: the rank must be in [0, WORLD_SIZE)")
    return Dist(rank, _env_int(env, "LOCAL_RANK", rank), world)


def is_main_process() -> bool:
    return dist_state().is_main


def barrier() -> None:
    """Wait for every process (a no-op in a single process)."""
    try:
        import torch.distributed as td
    except ImportError:
        return
    if td.is_available() and td.is_initialized() and td.get_world_size() > 1:
        td.barrier()


def on_main(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on the main process only (``None`` elsewhere): the run's own files are written once."""
    return fn(*args, **kwargs) if is_main_process() else None


def effective_batch(per_device: int, grad_accum: int, world_size: int) -> int:
    """Sequences (packed rows) per optimizer step: ``per_device × grad_accum × world_size``."""
    if min(per_device, grad_accum, world_size) < 1:
        raise ValueError(f"batch {per_device} × accumulation {grad_accum} × processes {world_size}: all must be >= 1")
    return per_device * grad_accum * world_size


def backend_name(trainer) -> str:
    """``"single"``, ``"ddp"``, ``"fsdp"`` or ``"deepspeed"`` for a built trainer (what ``run.json`` records)."""
    if getattr(trainer, "is_deepspeed_enabled", False):
        return "deepspeed"
    if getattr(trainer, "is_fsdp_enabled", False):
        return "fsdp"
    return "ddp" if trainer.args.world_size > 1 else "single"


def scale_info(trainer, env=None) -> dict:
    """What ``run.json`` records about the scale of a run, from the trainer's own arguments. Raises when the
    launcher started more processes than the trainer joined (each would train alone and overwrite the others)."""
    args = trainer.args
    world = int(args.world_size)
    launched = dist_state(os.environ if env is None else env).world_size
    if launched != world:
        raise RuntimeError(f"launched as {launched} processes but the trainer runs as {world}: without GPUs, "
                           "`accelerate launch --multi_gpu --num_processes N` needs ACCELERATE_USE_CPU=true (or "
                           "`--use_cpu true` in the recipe) to join them over gloo; `accelerate launch --cpu` starts "
                           "one process unless mpirun is given a hostfile")
    return {"world_size": world, "distributed": backend_name(trainer),
            "per_device_train_batch_size": int(args.per_device_train_batch_size),
            "gradient_accumulation_steps": int(args.gradient_accumulation_steps),
            "effective_batch_size": effective_batch(int(args.per_device_train_batch_size),
                                                    int(args.gradient_accumulation_steps), world)}


def describe(scale: dict) -> str:
    return (f"effective batch size {scale['effective_batch_size']} = {scale['per_device_train_batch_size']} per "
            f"device × {scale['gradient_accumulation_steps']} accumulation × {scale['world_size']} "
            f"process{'es' if scale['world_size'] != 1 else ''} ({scale['distributed']})")


def save_adapter(trainer, out_dir) -> None:
    """The final adapter (and tokenizer) in ``out_dir``, on every rank: ``trainer.save_model`` gathers ZeRO-3 and
    FSDP shards and writes on the main process only. FSDP is switched to a full state dict first, so the adapter
    is one ordinary ``adapter_model.safetensors`` (what PEFT's FSDP examples do) rather than a sharded DCP folder."""
    if getattr(trainer, "is_fsdp_enabled", False):
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(out_dir))
    if is_main_process():  # the adapter directory holds what it held before (Trainer adds its pickled arguments)
        (Path(out_dir) / "training_args.bin").unlink(missing_ok=True)
    barrier()  # nobody reads or exits before the adapter is complete


# --- checkpoints: what resume reads ---------------------------------------------------------------------------
def last_checkpoint(run_dir) -> Path | None:
    """The highest ``checkpoint-N`` in ``run_dir`` that is complete (its ``trainer_state.json``, written last,
    is whole); a checkpoint cut short by a kill, even inside that file, is ignored."""
    found = []
    for p in Path(run_dir).glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and _whole_state(p / "trainer_state.json"):
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def _whole_state(path: Path) -> bool:
    try:
        return "global_step" in read_json(path, expect=dict)
    except (OSError, ValueError):
        return False


def is_final(checkpoint: Path) -> bool:
    state = read_json(checkpoint / "trainer_state.json", expect=dict)
    return 0 < int(state.get("max_steps") or 0) <= int(state.get("global_step") or 0)


def restore_final(trainer, checkpoint: Path) -> dict:
    """Load a final checkpoint's adapter weights and trainer state into ``trainer`` (no training); every rank."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerState

    set_peft_model_state_dict(trainer.model, load_file(checkpoint / "adapter_model.safetensors"))
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    return {}


# Recipe keys a resumed run may change: where it writes, how often it logs, and how the same effective batch is
# split over processes (a 2-process run resumed on 1 process doubles the per-device batch).
RESUME_FREE = {"output_dir", "logging_steps", "report_to", "save_total_limit", "dataloader_num_workers",
               "per_device_train_batch_size", "gradient_accumulation_steps", "per_device_eval_batch_size"}


DATA_FILES = ("train.jsonl", "eval.jsonl", "manifest.json")  # the data files a run records the hashes of


def data_hashes(data_dir: str | Path) -> dict:
    """``{"<file>_sha256": hash}`` of the :data:`DATA_FILES` present in ``data_dir`` (recorded in ``run.json``)."""
    from llamatune.jsonl import sha256_file

    return {f"{name}_sha256": sha256_file(Path(data_dir) / name) for name in DATA_FILES
            if (Path(data_dir) / name).exists()}


def run_differences(before: dict, recipe: dict, data: dict) -> list[str]:
    """Every difference between a run's ``run.json`` (``before``) and a new ``recipe`` and ``data`` hashes, in
    words (``learning_rate: 0.0005 → 0.001``); the keys of :data:`RESUME_FREE` do not count."""
    old = before.get("recipe") or {}
    diffs = [f"{k}: {old.get(k)!r} → {recipe.get(k)!r}" for k in sorted(set(old) | set(recipe))
             if k not in RESUME_FREE and old.get(k) != recipe.get(k)]
    old_data = before.get("data") or {}
    diffs += [f"{k}: {old_data[k][:12]}… → {str(data.get(k))[:12]}…" for k in sorted(old_data)
              if k.endswith("_sha256") and old_data[k] != data.get(k)]
    return diffs


def check_resumable(before: dict, recipe: dict, data: dict, scale: dict, run_dir) -> None:
    """``ValueError`` naming every difference when a resume would continue ``before`` (the run's ``run.json``)
    with another recipe, other data or another effective batch: the result would be neither run."""
    diffs = run_differences(before, recipe, data)
    if before.get("effective_batch_size") not in (None, scale.get("effective_batch_size")):
        diffs.append(f"effective_batch_size: {before['effective_batch_size']} → {scale.get('effective_batch_size')}")
    if diffs:
        raise ValueError(f"{run_dir}: --resume would continue this run with another recipe or data ("
                         + "; ".join(diffs) + "). Resume with the recipe and data it was started with, or train "
                         "into another output_dir")


def set_aside_stale(run_dir: Path, recipe: dict, data_dir: Path) -> Path | None:
    """A run in ``run_dir`` made with another recipe or other data (an edited recipe file, new rows) is moved to
    ``run_dir.stale-<time>`` (kept, not deleted), so the stage trains again instead of reusing or resuming it;
    returns where it went (``None``: nothing there, or the same recipe and data)."""
    import time

    before = read_json(run_dir / "run.json", None)
    if before is None or not (diffs := run_differences(before, recipe, data_hashes(data_dir))):
        return None
    stamp, k = time.strftime("%Y%m%d-%H%M%S"), 1
    while (aside := run_dir.with_name(f"{run_dir.name}.stale-{stamp}" + (f"-{k}" if k > 1 else ""))).exists():
        k += 1
    run_dir.rename(aside)
    print(f"[llamatune] {run_dir} was trained with another recipe or data ({'; '.join(diffs)}): moved to {aside}",
          flush=True)
    return aside
