"""What the notebooks need from a Colab runtime, kept out of the notebooks so they stay thin and this is tested.

* :func:`check_gpu` — the GPU, its compute capability and memory, the precision training will use (fp16 on a T4,
  bf16 from compute capability 8.0: :mod:`llamatune.device` decides), whether llama.cpp can offload to it; on a
  CPU runtime, how to get a GPU (and that ``SMOKE = True`` runs on a CPU).
* :func:`hf_login` / :func:`openai_key` — the Colab secrets ``HF_TOKEN`` / ``OPENAI_API_KEY`` (or the same
  environment variables elsewhere) put into this process's environment, where huggingface_hub / openai read
  them; never printed, never written to a file. When one is missing they print the steps to add it.
* :func:`workdir` — where ``data/``, ``runs/`` and ``results/`` go: on Colab Google Drive
  (``/content/drive/MyDrive/llamatune``), so they survive a disconnect and every notebook (each its own VM) sees
  what the others wrote; ``.`` elsewhere.
* :func:`export_gguf` — one GGUF of a run (or of a base model) in ``<dest>/gguf/``, with the big intermediates
  (merged safetensors, the f16 GGUF) on the VM's own disk on Colab rather than on Drive's quota.
* (in :mod:`llamatune.fork_links`) ``make colab-links REPO=user/name``:
  point pyproject's ``Repository``, every notebook's badge and clone cell, and the README badges at a fork.

Nothing here imports torch, huggingface_hub or google.colab at module level: ``import llamatune.colab`` is cheap
and works anywhere (the links command needs only the standard library).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from llamatune.jsonl import replacing, write_json

GATED_MODEL = "meta-llama/Llama-3.2-3B-Instruct"
CLONE_DIR = "finetuning-llama-instruct"  # the notebooks clone into /content/<CLONE_DIR> whatever the fork is named
DRIVE_MOUNT = "/content/drive"  # Colab's usual mount point; Drive's root folder is <mount>/MyDrive
DRIVE_SUBDIR = "llamatune"
LOCAL_FALLBACK = "/content/llamatune"  # Colab without Drive (mount refused): the VM's disk, lost at a disconnect
SCRATCH = "/content/scratch"  # Colab: big files that can be made again (merged weights, f16 GGUFs)


def on_colab() -> bool:
    """True inside a Colab kernel (it imports ``google.colab`` at start; the notebooks test the same thing)."""
    return "google.colab" in sys.modules


# ---------------------------------------------------------------------------------------------------- the GPU

_PRECISION = {
    "float16": "fp16 (float16 weights and fp16 mixed precision: this GPU has no native bf16, compute capability < 8.0)",
    "bfloat16": "bf16 (bfloat16 weights and bf16 mixed precision: compute capability >= 8.0)",
}


def _no_gpu_message(needed: bool) -> str:
    if not needed:
        return "No GPU on this runtime: this notebook does not need one."
    how = ("On Colab: Runtime → Change runtime type → Hardware accelerator: T4 GPU → Save, then run this "
           "notebook again from the top (the runtime restarts)." if on_colab() else
           "Training the 3B recipes needs a CUDA GPU (a Colab T4 is enough; each notebook has an Open in Colab badge).")
    return (f"No GPU on this runtime (training and evaluation would run in float32 on the CPU). {how}\n"
            "SMOKE = True (in the parameters cell) runs the whole notebook on this CPU, on a tiny model, in minutes.")


def check_gpu(needed: bool = True) -> dict:
    """Print the GPU (name, compute capability, memory), the precision training will use and whether llama.cpp
    offloads to it; on a CPU runtime, what to do. Never raises. Returns what it printed, as a dict."""
    from llamatune.device import half_dtype

    try:
        import torch

        cuda = bool(torch.cuda.is_available())
    except Exception:  # no torch (a bare install) or a broken CUDA setup: report a CPU runtime
        cuda = False
    if not cuda:
        print(_no_gpu_message(needed))
        return {"gpu": None, "dtype": half_dtype(None)}
    try:
        name = torch.cuda.get_device_name(0)
        capability = tuple(torch.cuda.get_device_capability(0))
        memory_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    except Exception as e:  # a CUDA driver error: the first cell reports it instead of failing
        print(f"A CUDA device is present but could not be queried ({type(e).__name__}: {e}).")
        return {"gpu": None, "dtype": half_dtype(None)}
    dtype = half_dtype(capability)
    print(f"GPU: {name}, compute capability {capability[0]}.{capability[1]}, {memory_gib:.1f} GiB")
    print(f"Training precision: {_PRECISION[dtype]}")
    if memory_gib < 12:
        print("Under 12 GiB: the 3B recipes may not fit; add '--load_in_4bit', 'true' to OVERRIDES (QLoRA).")
    info = {"gpu": name, "capability": capability, "memory_gib": round(memory_gib, 1), "dtype": dtype}
    from llamatune.device import importable, n_gpu_layers

    if importable("llama_cpp"):
        try:
            offload = n_gpu_layers(cuda_available=True) != 0
        except Exception:  # a broken llama_cpp install: say so below rather than fail the first cell
            offload = False
        info["llama_cpp_offload"] = offload
        print("llama.cpp (GGUF evaluation): " + ("offloads to the GPU" if offload else
              "this llama-cpp-python build is CPU-only, so GGUF evaluation runs on the CPU"))
    return info


# ---------------------------------------------------------------------------------------------------- secrets

def _secret(name: str) -> tuple[str | None, str, str | None]:
    """``(value, where, problem)``: the environment variable ``name`` if set, else the Colab secret ``name``.
    ``problem`` says why there is no value (``None`` when there is one). The value is never printed."""
    value = os.environ.get(name, "").strip()
    if value:
        return value, "the environment", None
    if not on_colab():
        return None, "the environment", f"the environment variable {name} is not set"
    try:
        from google.colab import userdata

        value = (userdata.get(name) or "").strip()
    except Exception as e:  # userdata.SecretNotFoundError, NotebookAccessError, a timeout...
        kind = type(e).__name__
        if kind == "SecretNotFoundError":
            return None, "Colab secrets", f"there is no Colab secret named {name}"
        if kind == "NotebookAccessError":
            return None, "Colab secrets", (f"the Colab secret {name} exists but this notebook has no access to it "
                                           "(switch on 'Notebook access' next to it in the Secrets panel)")
        return None, "Colab secrets", f"reading the Colab secret {name} failed ({kind})"
    if not value:
        return None, "Colab secrets", f"the Colab secret {name} is empty"
    return value, "the Colab secret", None


def _secret_steps(name: str) -> str:
    return (f"  In Colab: click the key icon ('Secrets') in the left bar → 'Add new secret' → Name: {name}, "
            "Value: the key → switch 'Notebook access' on; then run this cell again.\n"
            f"  Elsewhere: export {name}=... in the shell that starts Jupyter.")


def hf_login(model: str = GATED_MODEL, check: bool = True) -> bool:
    """Give huggingface_hub the token from the Colab secret ``HF_TOKEN`` (or ``$HF_TOKEN``), by setting
    ``os.environ["HF_TOKEN"]`` for this process (huggingface_hub, transformers and datasets read it on every
    request; nothing is written to disk, unlike ``huggingface_hub.login``, which stores the token in
    ``~/.cache/huggingface/token``). With ``check``, asks the Hub who the token belongs to and whether it may
    download the gated ``model``. Prints the steps when the token is missing or has no access; returns whether
    ``model`` can be downloaded (True also when the check could not reach the Hub)."""
    token, where, problem = _secret("HF_TOKEN")
    license_step = f"accept Meta's license on https://huggingface.co/{model} (logged in to Hugging Face)"
    if token is None:
        print(f"No Hugging Face token: {problem}. {model} is a gated model; to download it:\n"
              f"  1. {license_step};\n"
              "  2. create a token with the 'Read' role at https://huggingface.co/settings/tokens;\n"
              "  3. store it as a secret named HF_TOKEN:\n" + _secret_steps("HF_TOKEN") + "\n"
              "(SMOKE = True needs no token.)")
        return False
    os.environ["HF_TOKEN"] = token
    if not check:
        print(f"Hugging Face token from {where} set for this session (not printed, not saved).")
        return True
    try:
        from huggingface_hub import auth_check, whoami
        from huggingface_hub.errors import GatedRepoError, HfHubHTTPError
    except ImportError:
        print(f"Hugging Face token from {where} set for this session (huggingface_hub is not installed: not checked).")
        return True
    try:
        user = whoami(token=token).get("name", "?")
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            print("The HF_TOKEN was refused by the Hub (invalid or revoked): create a new 'Read' token at "
                  "https://huggingface.co/settings/tokens and update the HF_TOKEN secret.")
            return False
        print(f"Hugging Face token from {where} set; the Hub could not be asked about it ({type(e).__name__}).")
        return True
    except Exception as e:  # offline, DNS, timeout: the token is set, downloads will say more
        print(f"Hugging Face token from {where} set; the Hub could not be reached to check it ({type(e).__name__}).")
        return True
    try:
        auth_check(model, token=token)
    except GatedRepoError:
        print(f"Logged in to Hugging Face as {user}, but this account may not download {model} yet: "
              f"{license_step}, wait for the approval e-mail, then run this cell again.")
        return False
    except Exception as e:
        print(f"Logged in to Hugging Face as {user} (token from {where}); access to {model} not checked "
              f"({type(e).__name__}).")
        return True
    print(f"Logged in to Hugging Face as {user} (token from {where}, not printed, not saved); {model}: access granted.")
    return True


def openai_key() -> bool:
    """Put the Colab secret ``OPENAI_API_KEY`` (or ``$OPENAI_API_KEY``) into ``os.environ`` for the judge (the
    openai client reads it there); never printed or saved. Prints the steps when it is missing."""
    key, where, problem = _secret("OPENAI_API_KEY")
    if key is None:
        print(f"No OpenAI API key: {problem}. The judge needs one:\n"
              "  1. create a key at https://platform.openai.com/api-keys;\n"
              "  2. store it as a secret named OPENAI_API_KEY:\n" + _secret_steps("OPENAI_API_KEY") + "\n"
              "Or set BASE_URL to another OpenAI-compatible server (a local llama.cpp server takes any key).")
        return False
    os.environ["OPENAI_API_KEY"] = key
    print(f"OpenAI API key from {where} set for this session (not printed, not saved).")
    return True


# ------------------------------------------------------------------------------------------------ where files go

def _mount_drive() -> Path | None:
    """Mount Google Drive (once per VM; Colab asks for permission) and return its root folder, or ``None``."""
    root = Path(DRIVE_MOUNT) / "MyDrive"
    if root.is_dir():
        return root
    try:
        from google.colab import drive

        drive.mount(DRIVE_MOUNT)
    except Exception as e:  # permission refused, a timeout, no Drive (Colab Enterprise)
        print(f"Google Drive was not mounted ({type(e).__name__}: {e}).")
        return None
    return root if root.is_dir() else None


def workdir(path: str | Path | None = None) -> Path:
    """The folder that holds ``data/``, ``runs/`` and ``results/`` (created), as an absolute path.

    ``path`` given: that folder (Drive is mounted first when it lies under ``/content/drive`` on Colab).
    ``None``: on Colab, ``MyDrive/llamatune`` on Google Drive (mounted here), so the outputs survive a disconnect
    and the notebooks, each on its own VM, share them; if Drive cannot be mounted, ``/content/llamatune`` on the
    VM's disk (with a warning). Elsewhere: the current directory.
    """
    if path is not None:
        out = Path(path).expanduser()
        if on_colab() and str(out.absolute()).startswith(DRIVE_MOUNT.rstrip("/") + "/"):
            _mount_drive()
    elif on_colab():
        root = _mount_drive()
        if root is None:
            out = Path(LOCAL_FALLBACK)
            print(f"Outputs go to {out} on this VM's disk: they are lost when the runtime disconnects, and the "
                  "other notebooks (other VMs) do not see them. Run this cell again to retry the mount.")
        else:
            out = root / DRIVE_SUBDIR
    else:
        out = Path(".")
    out = out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    print(f"Outputs (data/, runs/, results/) in {out}")
    return out


def scratch_dir(dest: str | Path) -> Path:
    """Where :func:`export_gguf` puts what it can make again (merged safetensors, the f16 GGUF: ~13 GB for a 3B
    model): on Colab ``/content/scratch/<name>`` on the VM's disk (fast, large, lost at a disconnect) rather than
    Drive (a free account has 15 GB in all); elsewhere ``dest`` itself."""
    dest = Path(dest)
    return Path(SCRATCH) / dest.name if on_colab() else dest


def reuse(path: str | Path) -> bool:
    """True (and says so) when ``path`` exists: a notebook step whose last output is ``path`` is done already."""
    path = Path(path)
    if path.exists():
        print(f"{path.parent}: already there, reusing it (delete that folder to make it again)")
        return True
    return False


def require(*paths: str | Path, hint: str) -> None:
    """``FileNotFoundError`` naming the missing ``paths`` and what makes them (``hint``)."""
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"not found: {', '.join(missing)}. {hint}")


EXPORT_STAMP = "export_gguf.json"  # in dest: {gguf file name: sha256 of the adapter it was made from}


def _read_stamp(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _copy(src: Path, dst: Path) -> None:
    if src.resolve() == dst.resolve():
        return
    with replacing(dst) as tmp:
        shutil.copyfile(src, tmp)


def _model_dir(model: str) -> Path:
    """A local HF model directory for an alias (``tiny``...), a directory, or a Hub id (downloaded, without
    Meta's ``original/`` consolidated checkpoint, which transformers does not read)."""
    from llamatune.models import resolve_model

    local = Path(resolve_model(str(model)))
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(model), ignore_patterns=["original/*"]))


def export_gguf(source: str | Path, quant: str, dest: str | Path | None = None, *, name: str | None = None,
                **export_kwargs) -> Path:
    """``<dest>/gguf/<name>-<quant>.gguf`` of a training run (``source`` = its run directory, ``dest`` = it by
    default) or of a plain model (``source`` = an HF directory, an alias such as ``tiny``, or a Hub id; ``dest``
    required). :func:`llamatune.export.export` (merge, convert, quantize, fidelity) works in
    :func:`scratch_dir` ``(dest)``; the one GGUF and ``fidelity.json`` are copied to ``dest`` when that is
    elsewhere (on Colab). Skipped when the GGUF is already in ``dest`` and was made from the run's current adapter
    (its sha256, kept in ``dest/export_gguf.json``; a rerun of ``train`` that saves the same weights again keeps
    it), or, for a plain model, whenever it is there."""
    from llamatune.export import _fresh, export, gguf_name, is_model_dir
    from llamatune.model_spec import ModelSpec, fingerprint

    source = Path(source) if Path(source).is_dir() else source
    run = isinstance(source, Path) and (source / "adapter").is_dir() and not is_model_dir(source)
    if dest is None:
        if not run:
            raise ValueError(f"{source}: not a training run (no adapter/): give dest")
        dest = source
    dest = Path(dest)
    name = name or (Path(source).resolve().name if run else dest.name)
    quant = quant.lower()
    gguf = dest / "gguf" / gguf_name(name, quant)
    stamp = _read_stamp(dest / EXPORT_STAMP)
    adapter = fingerprint(ModelSpec("hf", str(source / "adapter"))) if run else None  # content, not mtimes
    if gguf.exists():
        made_from = stamp.get(gguf.name)  # None: made some other way (llamatune export): compare times instead
        newer = _fresh(gguf, [source / "adapter"]) if run else True
        if not run or (made_from == adapter if made_from else newer):
            print(f"{gguf}: exists, skipping the export")
            return gguf
    work = scratch_dir(dest)
    result = export(source if run else _model_dir(str(source)), quants=[quant], out_dir=work, name=name,
                    **export_kwargs)
    _copy(Path(result["gguf"][quant]), gguf)
    if result.get("fidelity_path"):
        _copy(Path(result["fidelity_path"]), dest / "fidelity.json")
    if run:
        stamp[gguf.name] = adapter
        write_json(dest / EXPORT_STAMP, stamp)
    return gguf
