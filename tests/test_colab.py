"""llamatune.colab on fakes: a fake ``google.colab`` (userdata, drive), a fake ``torch.cuda``, fake Hub calls.

Each test asserts behaviour: what was mounted, which environment variable was set, what was printed (and that a
secret never was), which files the links command rewrote, what the notebooks' first cell runs on Colab."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from llamatune import colab, fork_links
from llamatune.model_spec import ModelSpec, fingerprint
from tests.conftest import REPO

NOTEBOOKS = ["FineTome/finetuning.ipynb", "FineTome/eval_benchmark.ipynb", "FineTome/eval_llm_judge.ipynb",
             "FuncCall/generate_dataset.ipynb", "FuncCall/finetuning.ipynb", "FuncCall/eval_llm_judge.ipynb"]
TOKEN = "hf_sEcReT0123456789abcdef"
KEY = "sk-test-sEcReT0123456789"


# ------------------------------------------------------------------------------------------------- fakes

class SecretNotFoundError(Exception):  # the names llamatune.colab tells apart, as in google.colab.userdata
    pass


class NotebookAccessError(Exception):
    pass


def fake_colab(monkeypatch, tmp_path, secrets=None, access=True, mount_error=None):
    """Install a fake ``google.colab`` with ``userdata`` and ``drive``; return it (``.mounts`` lists the mounts)."""
    mod = types.ModuleType("google.colab")
    mod.mounts = []

    def get(name):
        if name not in (secrets or {}):
            raise SecretNotFoundError(f"Secret {name} does not exist.")
        if not access:
            raise NotebookAccessError(f"Notebook does not have access to secret {name}")
        return secrets[name]

    def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
        mod.mounts.append(mountpoint)
        if mount_error is not None:
            raise mount_error
        (Path(mountpoint) / "MyDrive").mkdir(parents=True, exist_ok=True)

    mod.userdata = types.SimpleNamespace(get=get, SecretNotFoundError=SecretNotFoundError,
                                         NotebookAccessError=NotebookAccessError)
    mod.drive = types.SimpleNamespace(mount=mount)
    monkeypatch.setitem(sys.modules, "google.colab", mod)
    monkeypatch.setattr(colab, "DRIVE_MOUNT", str(tmp_path / "content" / "drive"))
    monkeypatch.setattr(colab, "LOCAL_FALLBACK", str(tmp_path / "content" / "llamatune"))
    monkeypatch.setattr(colab, "SCRATCH", str(tmp_path / "content" / "scratch"))
    return mod


def fake_torch(monkeypatch, name=None, capability=None, memory_gib=None):
    cuda = types.SimpleNamespace(
        is_available=lambda: name is not None,
        get_device_name=lambda i=0: name,
        get_device_capability=lambda i=0: capability,
        get_device_properties=lambda i=0: types.SimpleNamespace(total_memory=int(memory_gib * 2**30)),
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No secret in the environment, none on disk; whatever a test sets is undone afterwards."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY"):
        monkeypatch.setenv(var, "x")  # recorded as absent before, so the undo removes what the code sets
        monkeypatch.delenv(var)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)


@pytest.fixture
def hub(monkeypatch):
    """Fake ``whoami`` / ``auth_check``; ``login`` must not be called (it would write the token to disk)."""
    import huggingface_hub

    state = types.SimpleNamespace(user="alice", whoami_error=None, gated=False, calls=[])

    def whoami(token=None, **kw):
        state.calls.append(("whoami", token))
        if state.whoami_error is not None:
            raise state.whoami_error
        return {"name": state.user}

    def auth_check(repo_id, token=None, **kw):
        state.calls.append(("auth_check", repo_id, token))
        if state.gated:
            raise _http_error("GatedRepoError", 403)

    def login(*a, **kw):
        raise AssertionError("huggingface_hub.login stores the token on disk; hf_login must not call it")

    monkeypatch.setattr(huggingface_hub, "whoami", whoami)
    monkeypatch.setattr(huggingface_hub, "auth_check", auth_check)
    monkeypatch.setattr(huggingface_hub, "login", login)
    return state


def _http_error(kind, status):
    import httpx2
    from huggingface_hub import errors

    response = httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/api/x"))
    return getattr(errors, kind)(f"{status}", response=response)


def printed(capsys) -> str:
    out = capsys.readouterr()
    return out.out + out.err


# ------------------------------------------------------------------------------------------------ check_gpu

def test_check_gpu_t4_is_fp16(monkeypatch, capsys):
    fake_torch(monkeypatch, "Tesla T4", (7, 5), 14.74)
    monkeypatch.setattr("llamatune.device.n_gpu_layers", lambda **kw: 0)
    info = colab.check_gpu()
    out = printed(capsys)
    assert "GPU: Tesla T4, compute capability 7.5, 14.7 GiB" in out
    assert "Training precision: fp16" in out and "bf16 " not in out.split("Training precision:")[1].split("(")[0]
    assert info["dtype"] == "float16" and info["capability"] == (7, 5)
    if "llama_cpp_offload" in info:  # llama-cpp-python installed here: the build's offload is reported
        assert "CPU-only" in out and info["llama_cpp_offload"] is False


def test_check_gpu_a100_is_bf16_and_llama_cpp_offload(monkeypatch, capsys):
    import importlib.util

    fake_torch(monkeypatch, "NVIDIA A100-SXM4-40GB", (8, 0), 39.5)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "llama_cpp" else real(n, *a))
    monkeypatch.setattr("llamatune.device.n_gpu_layers", lambda **kw: -1)
    info = colab.check_gpu()
    out = printed(capsys)
    assert "compute capability 8.0" in out and "Training precision: bf16" in out
    assert "llama.cpp (GGUF evaluation): offloads to the GPU" in out
    assert info["dtype"] == "bfloat16" and info["llama_cpp_offload"] is True


def test_check_gpu_small_gpu_suggests_4bit(monkeypatch, capsys):
    fake_torch(monkeypatch, "Tesla K80", (3, 7), 11.2)
    monkeypatch.setattr("llamatune.device.n_gpu_layers", lambda **kw: 0)
    colab.check_gpu()
    assert "'--load_in_4bit', 'true'" in printed(capsys)


def test_check_gpu_on_a_colab_cpu_runtime_says_what_to_do(monkeypatch, tmp_path, capsys):
    fake_colab(monkeypatch, tmp_path)
    fake_torch(monkeypatch)  # torch present, no CUDA device
    info = colab.check_gpu()
    out = printed(capsys)
    assert "Runtime → Change runtime type → Hardware accelerator: T4 GPU → Save" in out
    assert "SMOKE = True" in out and "CPU" in out
    assert info == {"gpu": None, "dtype": "float32"}


def test_check_gpu_without_torch_does_not_crash(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    assert colab.check_gpu()["gpu"] is None
    out = printed(capsys)
    assert "No GPU" in out and "SMOKE = True" in out and "Runtime →" not in out  # not on Colab: no Colab menu


def test_check_gpu_driver_error_does_not_crash(monkeypatch, capsys):
    fake_torch(monkeypatch, "Tesla T4", (7, 5), 14.74)
    sys.modules["torch"].cuda.get_device_name = lambda i=0: (_ for _ in ()).throw(RuntimeError("CUDA error: unknown"))
    assert colab.check_gpu()["gpu"] is None
    assert "could not be queried (RuntimeError" in printed(capsys)


def test_check_gpu_not_needed(monkeypatch, capsys):
    fake_torch(monkeypatch)
    colab.check_gpu(needed=False)
    out = printed(capsys)
    assert "does not need one" in out and "Change runtime type" not in out


# ------------------------------------------------------------------------------------------------- secrets

def test_hf_login_from_the_colab_secret(monkeypatch, tmp_path, capsys, hub):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    fake_colab(monkeypatch, tmp_path, secrets={"HF_TOKEN": TOKEN})
    assert colab.hf_login() is True
    out = printed(capsys)
    assert os.environ["HF_TOKEN"] == TOKEN  # where huggingface_hub / transformers read it
    assert TOKEN not in out and "Logged in to Hugging Face as alice" in out and "access granted" in out
    assert ("auth_check", "meta-llama/Llama-3.2-3B-Instruct", TOKEN) in hub.calls
    assert not (tmp_path / "hf").exists()  # nothing written to disk


def test_hf_login_token_is_what_huggingface_hub_uses(monkeypatch, tmp_path, hub):
    from huggingface_hub import get_token

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    fake_colab(monkeypatch, tmp_path, secrets={"HF_TOKEN": TOKEN})
    colab.hf_login(check=False)
    assert get_token() == TOKEN


def test_hf_login_missing_secret_prints_the_steps(monkeypatch, tmp_path, capsys, hub):
    fake_colab(monkeypatch, tmp_path, secrets={})
    assert colab.hf_login() is False
    out = printed(capsys)
    assert "HF_TOKEN" not in os.environ and not hub.calls
    assert "there is no Colab secret named HF_TOKEN" in out
    for step in ("https://huggingface.co/meta-llama/Llama-3.2-3B-Instruct", "https://huggingface.co/settings/tokens",
                 "'Read'", "key icon", "Name: HF_TOKEN", "'Notebook access' on"):
        assert step in out, step


def test_hf_login_secret_without_notebook_access(monkeypatch, tmp_path, capsys, hub):
    fake_colab(monkeypatch, tmp_path, secrets={"HF_TOKEN": TOKEN}, access=False)
    assert colab.hf_login() is False
    out = printed(capsys)
    assert "has no access" in out and "Notebook access" in out and TOKEN not in out


def test_hf_login_from_the_environment_outside_colab(monkeypatch, capsys, hub):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert colab.hf_login() is True
    out = printed(capsys)
    assert TOKEN not in out and "token from the environment" in out and hub.calls[0] == ("whoami", TOKEN)


def test_hf_login_license_not_accepted(monkeypatch, tmp_path, capsys, hub):
    hub.gated = True
    fake_colab(monkeypatch, tmp_path, secrets={"HF_TOKEN": TOKEN})
    assert colab.hf_login() is False
    out = printed(capsys)
    assert "may not download meta-llama/Llama-3.2-3B-Instruct yet" in out and "accept Meta's license" in out
    assert TOKEN not in out


def test_hf_login_refused_token(monkeypatch, capsys, hub):
    hub.whoami_error = _http_error("HfHubHTTPError", 401)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert colab.hf_login() is False
    out = printed(capsys)
    assert "refused" in out and "https://huggingface.co/settings/tokens" in out and TOKEN not in out


def test_hf_login_offline_keeps_the_token(monkeypatch, capsys, hub):
    hub.whoami_error = ConnectionError("no network")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert colab.hf_login() is True
    out = printed(capsys)
    assert "could not be reached" in out and os.environ["HF_TOKEN"] == TOKEN and TOKEN not in out


def test_openai_key_from_the_colab_secret(monkeypatch, tmp_path, capsys):
    fake_colab(monkeypatch, tmp_path, secrets={"OPENAI_API_KEY": KEY})
    assert colab.openai_key() is True
    out = printed(capsys)
    assert os.environ["OPENAI_API_KEY"] == KEY and KEY not in out and "Colab secret" in out


def test_openai_key_missing_prints_the_steps(monkeypatch, tmp_path, capsys):
    fake_colab(monkeypatch, tmp_path, secrets={})
    assert colab.openai_key() is False
    out = printed(capsys)
    assert "OPENAI_API_KEY" not in os.environ
    for step in ("https://platform.openai.com/api-keys", "Name: OPENAI_API_KEY", "'Notebook access' on", "BASE_URL"):
        assert step in out, step


# --------------------------------------------------------------------------------------------- where files go

def test_workdir_on_colab_mounts_drive_once(monkeypatch, tmp_path, capsys):
    mod = fake_colab(monkeypatch, tmp_path)
    drive = tmp_path / "content" / "drive"
    work = colab.workdir()
    assert work == drive / "MyDrive" / "llamatune" and work.is_dir()
    assert mod.mounts == [str(drive)]
    assert colab.workdir() == work and mod.mounts == [str(drive)]  # a rerun does not mount again
    assert f"Outputs (data/, runs/, results/) in {work}" in printed(capsys)


def test_workdir_on_colab_without_drive_falls_back_with_a_warning(monkeypatch, tmp_path, capsys):
    fake_colab(monkeypatch, tmp_path, mount_error=ValueError("mount failed"))
    work = colab.workdir()
    assert work == tmp_path / "content" / "llamatune" and work.is_dir()
    out = printed(capsys)
    assert "Google Drive was not mounted" in out and "lost when the runtime disconnects" in out


def test_workdir_explicit_path_under_drive_mounts(monkeypatch, tmp_path):
    mod = fake_colab(monkeypatch, tmp_path)
    mine = tmp_path / "content" / "drive" / "MyDrive" / "elsewhere"
    assert colab.workdir(mine) == mine and mod.mounts == [str(tmp_path / "content" / "drive")]
    other = tmp_path / "local"
    assert colab.workdir(other) == other and len(mod.mounts) == 1  # not under Drive: no mount


def test_workdir_outside_colab_is_the_current_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert colab.workdir() == tmp_path
    assert colab.workdir("sub") == tmp_path / "sub" and (tmp_path / "sub").is_dir()


def test_scratch_dir(monkeypatch, tmp_path):
    run = tmp_path / "runs" / "r1"
    assert colab.scratch_dir(run) == run
    fake_colab(monkeypatch, tmp_path)
    assert colab.scratch_dir(run) == tmp_path / "content" / "scratch" / "r1"


def test_reuse_and_require(tmp_path, capsys):
    marker = tmp_path / "data" / "manifest.json"
    assert colab.reuse(marker) is False and printed(capsys) == ""
    marker.parent.mkdir()
    marker.write_text("{}")
    assert colab.reuse(marker) is True and "already there, reusing it" in printed(capsys)
    colab.require(marker, hint="never")
    with pytest.raises(FileNotFoundError, match=r"missing\.gguf.*Run the training notebook"):
        colab.require(marker, tmp_path / "missing.gguf", hint="Run the training notebook first.")


@pytest.fixture
def fake_export(monkeypatch):
    """``llamatune.export.export`` writing what the real one writes (merged/, gguf/, fidelity.json) into out_dir."""
    calls = []

    def export(run_dir, quants, out_dir=None, name=None, **kw):
        calls.append({"source": Path(run_dir), "out_dir": Path(out_dir), "name": name, "quants": list(quants)})
        out = Path(out_dir)
        (out / "merged").mkdir(parents=True, exist_ok=True)
        (out / "merged" / "model.safetensors").write_bytes(b"w" * 100)
        (out / "gguf").mkdir(exist_ok=True)
        ggufs = {}
        for q in ["f16", *quants]:
            ggufs[q] = out / "gguf" / f"{name}-{q}.gguf"
            ggufs[q].write_bytes(q.encode() * 10)
        (out / "fidelity.json").write_text('{"pass": true}')
        return {"gguf": {q: str(p) for q, p in ggufs.items()}, "fidelity_path": str(out / "fidelity.json")}

    monkeypatch.setattr("llamatune.export.export", export)
    return calls


def _run_dir(root: Path) -> Path:
    run = root / "runs" / "my-run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"a")
    return run


def test_export_gguf_on_colab_keeps_only_the_gguf_on_drive(monkeypatch, tmp_path, fake_export, capsys):
    fake_colab(monkeypatch, tmp_path)
    run = _run_dir(tmp_path / "content" / "drive" / "MyDrive" / "llamatune")
    gguf = colab.export_gguf(run, "q4_k_m")
    scratch = tmp_path / "content" / "scratch" / "my-run"
    assert gguf == run / "gguf" / "my-run-q4_k_m.gguf" and gguf.read_bytes() == b"q4_k_m" * 10
    assert (run / "fidelity.json").is_file()
    assert sorted(p.name for p in (run / "gguf").iterdir()) == ["my-run-q4_k_m.gguf"]  # no f16, no .part on Drive
    assert not (run / "merged").exists() and (scratch / "merged").is_dir()
    assert (scratch / "gguf" / "my-run-f16.gguf").exists()
    assert fake_export == [{"source": run, "out_dir": scratch, "name": "my-run", "quants": ["q4_k_m"]}]
    assert colab.export_gguf(run, "q4_k_m") == gguf and len(fake_export) == 1  # a rerun (or a new VM) skips
    assert "exists, skipping the export" in printed(capsys)
    later = gguf.stat().st_mtime + 10
    os.utime(run / "adapter" / "adapter_model.safetensors", (later, later))  # saved again, same weights (a rerun)
    colab.export_gguf(run, "q4_k_m")
    assert len(fake_export) == 1
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"retrained")  # new weights: the GGUF is stale
    colab.export_gguf(run, "q4_k_m")
    assert len(fake_export) == 2
    stamp = json.loads((run / "export_gguf.json").read_text())
    assert stamp == {"my-run-q4_k_m.gguf": fingerprint(ModelSpec("hf", str(run / "adapter")))}


def test_export_gguf_without_a_stamp_compares_times(tmp_path, fake_export):
    """A GGUF made by `llamatune export` (no stamp): kept while it is newer than the adapter."""
    run = _run_dir(tmp_path)
    (run / "gguf").mkdir()
    (run / "gguf" / "my-run-q8_0.gguf").write_bytes(b"old")
    colab.export_gguf(run, "q8_0")
    assert fake_export == []
    later = (run / "gguf" / "my-run-q8_0.gguf").stat().st_mtime + 10
    os.utime(run / "adapter" / "adapter_model.safetensors", (later, later))
    colab.export_gguf(run, "q8_0")
    assert len(fake_export) == 1


def test_export_gguf_elsewhere_exports_in_place(tmp_path, fake_export):
    run = _run_dir(tmp_path)
    gguf = colab.export_gguf(run, "f16")
    assert gguf == run / "gguf" / "my-run-f16.gguf" and gguf.is_file()
    assert fake_export[0]["out_dir"] == run and (run / "merged").is_dir()


def test_export_gguf_of_a_hub_model_downloads_it_only_when_needed(monkeypatch, tmp_path, fake_export):
    import huggingface_hub

    downloads = []

    def snapshot_download(repo_id, ignore_patterns=None, **kw):
        downloads.append((repo_id, ignore_patterns))
        d = tmp_path / "hub" / repo_id.replace("/", "--")
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text("{}")
        return str(d)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    fake_colab(monkeypatch, tmp_path)
    dest = tmp_path / "content" / "drive" / "MyDrive" / "llamatune" / "runs" / "base"
    gguf = colab.export_gguf("meta-llama/Llama-3.2-3B-Instruct", "q4_k_m", dest, name="base")
    assert gguf == dest / "gguf" / "base-q4_k_m.gguf" and gguf.is_file()
    assert downloads == [("meta-llama/Llama-3.2-3B-Instruct", ["original/*"])]  # not Meta's consolidated .pth
    assert fake_export[0]["source"] == tmp_path / "hub" / "meta-llama--Llama-3.2-3B-Instruct"
    assert fake_export[0]["out_dir"] == tmp_path / "content" / "scratch" / "base"
    colab.export_gguf("meta-llama/Llama-3.2-3B-Instruct", "q4_k_m", dest, name="base")
    assert len(downloads) == 1 and len(fake_export) == 1  # the kept GGUF is enough: no download on a new VM
    with pytest.raises(ValueError, match="give dest"):
        colab.export_gguf("meta-llama/Llama-3.2-3B-Instruct", "q4_k_m")


# ------------------------------------------------------------------------------------------ progress bars

def test_tqdm_disable_shows_bars_in_a_notebook_kernel_only(monkeypatch):
    from llamatune import progress

    assert progress.tqdm_disable() is None  # a terminal shows the bar, a CI log (not a TTY) does not
    shell = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    assert progress.in_notebook() and progress.tqdm_disable() is False
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
    assert progress.tqdm_disable() is None


# ---------------------------------------------------------------------------------- the notebooks' first cell

@pytest.mark.parametrize("path", NOTEBOOKS)
def test_bootstrap_cell_reruns_without_nesting_and_only_on_colab(path, tmp_path, monkeypatch):
    """The first code cell run twice in one (fake) Colab kernel: /content gets one clone, the kernel ends in it,
    pip runs visibly, check_gpu (and hf_login where gated) run; outside Colab the cell does nothing."""
    from IPython.core.inputtransformer2 import TransformerManager

    if shutil.which("git") is None:
        pytest.skip("git not installed")
    nb = json.loads((REPO / path).read_text(encoding="utf-8"))
    cell = "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])
    python = TransformerManager().transform_cell(cell)
    url = colab_url()
    origin, content = tmp_path / "origin", tmp_path / "content"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(origin)], check=True)
    (origin / "README.md").write_text("stand-in for the GitHub repository\n")
    subprocess.run([*git, "-C", str(origin), "add", "README.md"], check=True)
    subprocess.run([*git, "-C", str(origin), "commit", "-q", "-m", "init"], check=True)
    content.mkdir()
    calls = []

    class Shell:  # IPython's magics, with /content and the GitHub URL mapped to the stand-ins
        def run_line_magic(self, name, line):
            calls.append((name, line))
            if name == "cd":
                os.chdir(line.replace("/content", str(content)))

        def system(self, cmd):
            calls.append(("!", cmd))
            subprocess.run(cmd.replace(url, str(origin)).replace("/content", str(content)), shell=True, check=True,
                           capture_output=True)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(colab, "check_gpu", lambda *a, **kw: calls.append(("check_gpu", a, kw)))
    monkeypatch.setattr(colab, "hf_login", lambda *a, **kw: calls.append(("hf_login", a, kw)))
    shell = Shell()
    exec(compile(python, path, "exec"), {"get_ipython": lambda: shell})  # outside Colab
    assert calls == [] and Path.cwd() == tmp_path
    fake_colab(monkeypatch, tmp_path)
    for _ in range(2):
        exec(compile(python, path, "exec"), {"get_ipython": lambda: shell})
    clone = content / colab.CLONE_DIR
    assert (clone / "README.md").is_file() and not (clone / colab.CLONE_DIR).exists()
    assert sorted(p.name for p in content.iterdir()) == [colab.CLONE_DIR]
    assert Path.cwd() == clone
    pip = [line for name, line, *_ in calls if name == "pip"]
    assert len(pip) == 2 and pip[0].startswith("install -e ") and "-q" not in pip[0].split()
    assert [c[0] for c in calls].count("check_gpu") == 2
    gated = path != "FineTome/finetuning.ipynb" and path != "FuncCall/generate_dataset.ipynb"
    assert [c[0] for c in calls].count("hf_login") == (2 if gated else 0)


def colab_url() -> str:
    import re

    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    return re.search(r'(?m)^Repository\s*=\s*"([^"]+)"', text).group(1)


# --------------------------------------------------------------------------------------------- fork links

def _copy_checkout(dst: Path, *, package: bool = False) -> Path:
    for rel in ["pyproject.toml", "README.md", *NOTEBOOKS] + (["Makefile"] if package else []):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, dst / rel)
    if package:
        shutil.copytree(REPO / "llamatune", dst / "llamatune", ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def _badge(text: str) -> list[str]:
    import re

    return re.findall(r"https://colab\.research\.google\.com/github/([^)\s\"]+)", text)


def test_links_points_everything_at_a_fork(tmp_path):
    root = _copy_checkout(tmp_path / "checkout")
    old = colab_url()
    moved = root / "FuncCall" / "renamed.ipynb"  # a notebook moved or renamed: its badge follows it
    shutil.copy(root / "FuncCall" / "generate_dataset.ipynb", moved)
    readme_before = (root / "README.md").read_text(encoding="utf-8")
    changed = fork_links.links(root, "alice/my-fork")
    assert root / "pyproject.toml" in changed and moved in changed
    assert 'Repository = "https://github.com/alice/my-fork"' in (root / "pyproject.toml").read_text()
    for rel in [*NOTEBOOKS, "FuncCall/renamed.ipynb"]:
        raw = (root / rel).read_text(encoding="utf-8")
        nb = json.loads(raw)
        assert raw == json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"  # nbformat's layout
        first = "".join(nb["cells"][0]["source"])
        assert _badge(first) == [f"alice/my-fork/blob/main/{rel}"], rel
        boot = "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])
        assert f"git clone https://github.com/alice/my-fork {colab.CLONE_DIR}" in boot
        assert old not in raw
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert old not in readme
    assert len(_badge(readme)) == len(_badge(readme_before))
    assert all(b.startswith("alice/my-fork/blob/") for b in _badge(readme))
    assert fork_links.links(root, "https://github.com/alice/my-fork.git") == []  # idempotent; a URL works too
    with pytest.raises(ValueError, match="user/name"):
        fork_links.links(root, "not a slug")


def test_links_consistency_checker_accepts_a_fork(tmp_path, monkeypatch):
    """After `links`, the copy passes the same notebook rules as the repository (badge = own path, clone URL)."""
    import tests.conftest as conftest

    root = _copy_checkout(tmp_path / "checkout")
    fork_links.links(root, "bob/other-name")
    monkeypatch.setattr(conftest, "REPO", root)
    for rel in NOTEBOOKS:
        gated = rel not in ("FineTome/finetuning.ipynb", "FuncCall/generate_dataset.ipynb")
        conftest.assert_thin_notebook(root / rel, gated=gated)


def test_make_colab_links_on_a_copy(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    root = _copy_checkout(tmp_path / "checkout", package=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MAKEFLAGS", "MFLAGS")}
    usage = subprocess.run(["make", "-s", "-C", str(root), "colab-links"], capture_output=True, text=True, env=env)
    assert usage.returncode != 0 and "usage: make colab-links REPO=user/name" in usage.stdout
    done = subprocess.run(["make", "-s", "-C", str(root), "colab-links", "REPO=carol/fork", f"PYTHON={sys.executable}"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "now point at https://github.com/carol/fork" in done.stdout
    assert 'Repository = "https://github.com/carol/fork"' in (root / "pyproject.toml").read_text()
    badge = "github/carol/fork/blob/main/FineTome/eval_benchmark.ipynb"
    assert badge in (root / "FineTome/eval_benchmark.ipynb").read_text()
    assert colab_url() != "https://github.com/carol/fork"  # the real checkout was not touched


def test_cli_reports_a_bad_slug(tmp_path, capsys):
    root = _copy_checkout(tmp_path / "checkout")
    assert fork_links.main(["--repo", "a/b/c", "--root", str(root)]) == 2  # bad input (llamatune.cli)
    assert "expected user/name" in printed(capsys)


def test_readme_badges_point_at_the_notebooks():
    """The README's "Run it on Colab" table: one badge per notebook, at the repository of pyproject."""
    slug = colab_url().removeprefix("https://github.com/")
    badges = _badge((REPO / "README.md").read_text(encoding="utf-8"))
    assert sorted(badges) == sorted(f"{slug}/blob/main/{rel}" for rel in NOTEBOOKS)


def test_no_placeholder_owner_where_the_address_lives():
    """One real repository address: no placeholder owner in pyproject, requirements, the READMEs, the notebooks."""
    placeholder = "OWN" + "ER"
    files = ["pyproject.toml", "requirements.txt", "README.md", *NOTEBOOKS]
    assert [rel for rel in files if placeholder in (REPO / rel).read_text(encoding="utf-8")] == []
    url = colab_url()
    assert url.startswith("https://github.com/") and fork_links._SLUG.match(url.removeprefix("https://github.com/"))
