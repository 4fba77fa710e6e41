"""`llamatune push`: the upload plan of a run (which file goes to which repo, in which commit, with which card),
the Space it serves, dry-run output, errors before anything is uploaded, and the executor against a fake HfApi.
No network: the plan is pure and the executor gets a recording fake."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from llamatune import hub
from llamatune.export import gguf_name
from llamatune.fidelity import THRESHOLDS
from tests.conftest import REPO

RUN = "llama-3.2-3b-funccall"  # a recipe's run_name, so the template's tuned entry is this run's
QUANTS = ("f16", "q8_0", "q4_k_m")


def _front(text: str) -> dict:
    m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert m, text[:200]
    return yaml.safe_load(m.group(1))


def _prop(k, n, lo, hi):
    return {"value": k / n, "k": k, "n": n, "low": lo, "high": hi}


@pytest.fixture
def run_dir(tmp_path, monkeypatch) -> Path:
    """A run as `llamatune train` + `llamatune export` + evals leave it (small stand-in files)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "finetome").mkdir(parents=True)
    (tmp_path / "data" / "finetome" / "manifest.json").write_text(
        json.dumps({"source": "mlabonne/FineTome-100k", "counts": {"train": 20000, "eval": 200}}))
    run = tmp_path / "runs" / RUN
    base = "unsloth/Llama-3.2-3B-Instruct"
    files = {
        "adapter/adapter_config.json": json.dumps({"base_model_name_or_path": base, "r": 16}),
        "adapter/adapter_model.safetensors": "A" * 1000,
        "adapter/tokenizer.json": "{}", "adapter/tokenizer_config.json": "{}",
        "adapter/chat_template.jinja": "{{ x }}", "adapter/README.md": "PEFT's own placeholder card",
        "run.json": json.dumps({"recipe": {"model_name_or_path": base, "dataset_path": "data/finetome",
                                           "chat_template": "llama-3.2", "r": 16, "lora_alpha": 32},
                                "data": {"train_rows": 20000, "eval_rows_used": 200},
                                "git": {"commit": "abc123", "dirty": False}}),
        "config.yaml": "r: 16\n", "trainer_state.json": "{}", "loss.png": "png",
        "checkpoint-10/adapter_model.safetensors": "old",
        "merged/config.json": "{}", "merged/model.safetensors": "M" * 3000, "merged/tokenizer.json": "{}",
        "merged/tokenizer_config.json": "{}", "merged/generation_config.json": "{}",
        "merged/chat_template.jinja": "{{ x }}", "merged/llamatune_merge.json": '{"stamp": {"base": "/root/x"}}',
        "merged/__pycache__/x.pyc": "",
        **{f"gguf/{gguf_name(RUN, q)}": "G" * 2048 for q in QUANTS},
        "gguf/partial.gguf.part": "",
    }
    for rel, text in files.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(text)
    report = lambda q: {"gguf": str(run / "gguf" / gguf_name(RUN, q)), "quant": q, "size_bytes": 2048,  # noqa: E731
                        "top1_agreement": 1.0 if q != "q4_k_m" else 0.87, "confident_top1_agreement": 0.99,
                        "thresholds": THRESHOLDS.get(q, {}),
                        "hf_top1_in_gguf_top5": 1.0, "max_abs_logit_diff": 0.01, "tokenization": {"mismatches": []},
                        "chat_template": {"equal": True}, "eos": {"token": "<|eot_id|>"}, "failures": [], "pass": True}
    (run / "fidelity.json").write_text(json.dumps({"reports": {q: report(q) for q in QUANTS}, "pass": True}))
    (run / "results").mkdir()
    (run / "results" / "toolcall.json").write_text(json.dumps({
        "kind": "toolcall", "model": f"runs/{RUN}/gguf/{gguf_name(RUN, 'q4_k_m')}", "icl": 0, "items": [],
        "aggregate": {"overall": {"n": 120, "accuracy": _prop(42, 120, 0.2705, 0.4388),
                                  "calls_per_turn": {"value": 1.55, "low": 1.47, "high": 1.64, "n": 120}},
                      "by_category": {"no_tool": {"n": 14, "accuracy": _prop(14, 14, 0.78, 1.0)}}}}))
    extra = tmp_path / "results" / "arc"
    extra.mkdir(parents=True)
    (extra / "arc-arc_challenge.json").write_text(json.dumps({
        "kind": "arc", "name": "tuned", "n": 1172, "items": [],
        "aggregate": {"acc": {"value": 0.45, "k": 527, "n": 1172, "low": 0.4217, "high": 0.4787}}}))
    (extra / "judge.json").write_text(json.dumps({
        "kind": "judge", "name": "tuned vs base", "items": [],
        "aggregate": {"n": 100, "wins": 60, "win_rate": {"value": 0.6, "low": 0.502, "high": 0.691, "n": 100},
                      "sign_test_p": 0.02}}))
    return run


def _plan(run_dir, **kw):
    return hub.push_plan(run_dir, kw.pop("repo", "me/tuned"), results_dirs=[run_dir.parents[1] / "results" / "arc"],
                         **kw)


def test_each_part_goes_to_its_own_repo_in_one_commit(run_dir):
    plan = _plan(run_dir)
    assert [(c.repo_id, c.repo_type) for c in plan] == [("me/tuned-LoRA", "model"), ("me/tuned", "model"),
                                                        ("me/tuned-GGUF", "model")]
    lora, merged, gguf = ({p: src for p, src in c.files} for c in plan)
    assert set(lora) == {"README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json",
                         "tokenizer_config.json", "chat_template.jinja", "training/run.json", "training/config.yaml",
                         "training/trainer_state.json", "training/loss.png"}
    assert lora["adapter_model.safetensors"] == (run_dir / "adapter" / "adapter_model.safetensors").resolve()
    assert lora["training/run.json"] == (run_dir / "run.json").resolve()
    assert b"PEFT's own placeholder" not in lora["README.md"]  # our card replaces PEFT's
    assert set(merged) == {"README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                           "generation_config.json", "chat_template.jinja"}  # no merge stamp, no caches
    assert set(gguf) == {"README.md", "fidelity.json", *(gguf_name(RUN, q) for q in QUANTS)}
    assert all(isinstance(src, bytes) for p, src in gguf.items() if p == "README.md")
    assert plan[2].message.startswith("Add GGUF files of") and gguf_name(RUN, "q4_k_m") in plan[2].message


def test_cards_carry_the_hub_front_matter_and_metrics_with_cis(run_dir):
    lora, merged, gguf = (_front(c.text("README.md")) for c in _plan(run_dir))
    base = "unsloth/Llama-3.2-3B-Instruct"
    assert (lora["base_model"], lora["base_model_relation"], lora["library_name"]) == (base, "adapter", "peft")
    assert (merged["base_model"], merged["base_model_relation"], merged["library_name"]) == (base, "finetune",
                                                                                            "transformers")
    # the GGUFs are quantizations of the merged repo: the Hub draws base → fine-tune → quantized
    assert (gguf["base_model"], gguf["base_model_relation"], gguf["library_name"]) == ("me/tuned", "quantized", "gguf")
    for front in (lora, merged, gguf):
        assert front["license"] == "llama3.2" and front["pipeline_tag"] == "text-generation"
        assert front["datasets"] == ["mlabonne/FineTome-100k"] and "llama-3.2" in front["tags"]
    card = _plan(run_dir)[2].text("README.md")
    assert "| toolcall.json | accuracy | 0.35 | [0.271, 0.439] | 120 | llama-3.2-3b-funccall-q4_k_m.gguf |" in card
    assert "| toolcall.json | calls_per_turn | 1.55 | [1.470, 1.640] | 120 |" in card
    assert "| arc-arc_challenge.json | acc | 0.45 | [0.422, 0.479] | 1172 | tuned |" in card
    assert "| judge.json | win_rate | 0.6 | [0.502, 0.691] | 100 | tuned vs base |" in card
    assert ("| `llama-3.2-3b-funccall-q4_k_m.gguf` | 0.0 MiB | 0.8700 | 0.99 | confident_top1_agreement ≥ 0.97, "
            "hf_top1_in_gguf_top5 ≥ 0.97 |") in card and "All checks passed: **yes**" in card
    assert "| `lora_alpha` | `32` |" in card and "source `mlabonne/FineTome-100k` (train: 20000, eval: 200)" in card
    assert "[`me/tuned-LoRA`](https://huggingface.co/me/tuned-LoRA)" in card  # links to the sibling repos
    assert 'Llama.from_pretrained("me/tuned-GGUF", "llama-3.2-3b-funccall-q4_k_m.gguf"' in card


def test_space_models_point_at_the_gguf_just_pushed(run_dir):
    plan = _plan(run_dir, space="me/agents")
    gguf, space = plan[2], plan[3]
    assert (space.repo_id, space.repo_type) == ("me/agents", "space")
    models = yaml.safe_load(space.text("models.yaml"))["models"]
    tuned = next(e for e in models if e["name"] == "Llama-3.2-3B FuncCall-tuned")  # the template's entry, kept
    assert (tuned["repo"], tuned["file"]) == ("me/tuned-GGUF", gguf_name(RUN, "q4_k_m"))
    assert tuned["file"] in gguf.paths() and tuned["repo"] == gguf.repo_id
    owner = hub.project_owner()
    others = [(e["repo"], e["file"]) for e in models if e is not tuned]
    assert others == [("bartowski/Llama-3.2-3B-Instruct-GGUF", "Llama-3.2-3B-Instruct-Q4_K_M.gguf"),
                      (f"{owner}/llama-3.2-3b-finetome-GGUF", "llama-3.2-3b-finetome-q4_k_m.gguf")]
    assert space.requires == others  # not in this plan: checked on the Hub before uploading
    front = _front(space.text("README.md"))
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py" and front["sdk_version"] == "6.31.0"
    assert front["preload_from_hub"] == [f"{e['repo']} {e['file']}" for e in models]  # every GGUF, in order
    assert set(front["models"]) == {r for r, _ in others} | {"me/tuned-LoRA", "me/tuned", "me/tuned-GGUF"}
    paths = space.paths()
    assert {"app.py", "requirements.txt", "llamatune/serving.py", "llamatune/templates/llama-3.2.jinja"} <= set(paths)
    assert not [p for p in paths if "__pycache__" in p or p.endswith(".pyc")]
    assert dict(space.files)["app.py"] == hub.SPACE_DIR / "app.py"


def test_space_appends_a_run_the_template_does_not_know(run_dir, tmp_path):
    template = tmp_path / "m.yaml"
    template.write_text("models:\n  - name: base\n    path: base.gguf\n")
    plan = _plan(run_dir, space="me/agents", space_quant="Q8_0", space_models=template)
    models = yaml.safe_load(plan[-1].text("models.yaml"))["models"]
    assert models[1] == {"name": RUN, "repo": "me/tuned-GGUF", "file": gguf_name(RUN, "q8_0"),
                         "template": "llama-3.2", "n_ctx": 4096}
    assert plan[-1].requires == []


def test_dry_run_prints_the_plan_and_uploads_nothing(run_dir, monkeypatch, capsys):
    import huggingface_hub

    from llamatune.cli import main

    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: pytest.fail("network access attempted"))
    assert main(["push", str(run_dir), "--repo", "me/tuned", "--space", "me/agents", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^model me/tuned-LoRA: 10 files, [\d.]+ KiB in one commit", out, re.M)
    assert re.search(r"^model me/tuned-GGUF: 5 files", out, re.M) and re.search(r"^space me/agents: \d+ files", out, re.M)
    line = next(x for x in out.splitlines() if gguf_name(RUN, "q8_0") in x and "2.0 KiB" in x)
    assert line.rstrip().endswith(str((run_dir / "gguf" / gguf_name(RUN, "q8_0")).resolve()))
    assert "needs on the Hub already: bartowski/Llama-3.2-3B-Instruct-GGUF/Llama-3.2-3B-Instruct-Q4_K_M.gguf" in out


@pytest.mark.parametrize("missing, message", [
    ("adapter", r"adapter: no LoRA adapter .*`llamatune train RECIPE`"),
    ("merged", r"merged: no merged weights .*`llamatune export .*llama-3.2-3b-funccall`"),
    ("gguf", r"gguf: no \*\.gguf files .*`llamatune export "),
])
def test_missing_stage_outputs_name_the_path_and_the_command(run_dir, missing, message):
    import shutil

    shutil.rmtree(run_dir / missing)
    with pytest.raises(hub.HubError, match=message) as err:
        _plan(run_dir)
    assert str(run_dir / missing) in str(err.value)
    assert [c.repo_id for c in _plan(run_dir, parts=[p for p in hub.PARTS if p != missing])]  # the rest still plans


@pytest.mark.parametrize("repo", ["tuned", "me/tu ned", "me/bad--name", "a/b/c", "me/" + "x" * 95])
def test_a_bad_repo_id_is_rejected_before_anything_is_uploaded(run_dir, repo, monkeypatch, capsys):
    import huggingface_hub

    from llamatune.cli import main

    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: pytest.fail("network access attempted"))
    assert main(["push", str(run_dir), "--repo", repo]) == 2
    assert repr(repo)[1:-1][:20] in capsys.readouterr().err
    with pytest.raises(hub.HubError, match="--space"):
        _plan(run_dir, space="not a repo")


def test_other_errors_say_what_to_do(run_dir, tmp_path, monkeypatch):
    import huggingface_hub

    with pytest.raises(hub.HubError, match="--results .*nope: no such directory"):
        hub.push_plan(run_dir, "me/tuned", results_dirs=[tmp_path / "nope"])
    with pytest.raises(hub.HubError, match="--space-quant q2_k: no such GGUF .*there: "):
        _plan(run_dir, space="me/agents", space_quant="q2_k")
    with pytest.raises(hub.HubError, match="keep gguf in --parts"):
        _plan(run_dir, space="me/agents", parts=["adapter"])
    with pytest.raises(hub.HubError, match="no such run directory"):
        hub.push_plan(tmp_path / "runs" / "none", "me/x")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: pytest.fail("no token: no client"))
    with pytest.raises(hub.HubError, match=r"no Hugging Face token: run `hf auth login`.*huggingface-cli login.*"
                                           r"Colab add a secret named HF_TOKEN"):
        hub.push(_plan(run_dir))


class FakeApi:
    """Records what push() asks of the Hub; ``on_hub`` holds the (repo, file) pairs that exist already."""

    def __init__(self, on_hub=()):
        self.calls, self.on_hub = [], set(on_hub)

    def file_exists(self, repo_id, filename, **kw):
        self.calls.append(("file_exists", repo_id, filename))
        return (repo_id, filename) in self.on_hub

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id, operations, *, commit_message, repo_type=None, **kw):
        self.calls.append(("create_commit", repo_id, list(operations), commit_message, repo_type))


def test_push_makes_one_commit_per_repo_with_the_right_operations(run_dir):
    from huggingface_hub import CommitOperationAdd

    plan = _plan(run_dir, space="me/agents", private=True)
    api = FakeApi(on_hub=plan[-1].requires)
    urls = hub.push(plan, api)
    assert urls == ["https://huggingface.co/me/tuned-LoRA", "https://huggingface.co/me/tuned",
                    "https://huggingface.co/me/tuned-GGUF", "https://huggingface.co/spaces/me/agents"]
    kinds = [c[0] for c in api.calls]
    assert kinds == ["file_exists"] * 2 + ["create_repo", "create_commit"] * 4  # checks first, then repo by repo
    creates = [c for c in api.calls if c[0] == "create_repo"]
    assert [(c[1], c[2]) for c in creates][-1] == ("me/agents", {"repo_type": "space", "private": True,
                                                               "exist_ok": True, "space_sdk": "gradio"})
    assert all(c[2]["exist_ok"] and c[2]["private"] for c in creates)
    commits = [c for c in api.calls if c[0] == "create_commit"]
    assert [c[1] for c in commits] == [c.repo_id for c in plan] and [c[4] for c in commits] == ["model"] * 3 + ["space"]
    for (_, repo, ops, message, _), c in zip(commits, plan):
        assert all(isinstance(op, CommitOperationAdd) for op in ops) and message == c.message
        assert [op.path_in_repo for op in ops] == c.paths()
        got = {op.path_in_repo: op.path_or_fileobj for op in ops}
        for path, src in c.files:
            assert got[path] == (src if isinstance(src, bytes) else str(src)), (repo, path)


def test_push_refuses_a_space_whose_other_models_are_not_on_the_hub(run_dir):
    plan = _plan(run_dir, space="me/agents")
    api = FakeApi(on_hub=plan[-1].requires[:1])
    with pytest.raises(hub.HubError, match=r"not on the Hub.*llama-3.2-3b-finetome-GGUF/llama-3.2-3b-finetome-q4_k_m"
                                           r"\.gguf \(for me/agents\).*Nothing was uploaded"):
        hub.push(plan, api)
    assert {c[0] for c in api.calls} == {"file_exists"}


def test_export_push_flag_uses_the_same_implementation(run_dir, monkeypatch):
    pushed = []
    monkeypatch.setattr(hub, "push", lambda plan, api=None, **kw: pushed.append(plan) or [hub.url_of(plan[0])])
    assert hub.run_push(run_dir, "me/tuned") == 0
    assert [c.repo_id for c in pushed[0]] == ["me/tuned-LoRA", "me/tuned", "me/tuned-GGUF"]


def test_project_owner_is_the_one_slug_of_pyproject():
    import tomllib

    url = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    assert hub.project_repository() == url
    assert hub.project_owner() == url.removeprefix("https://github.com/").split("/")[0]
    assert hub.expand_owner("{owner}/x-GGUF") == f"{hub.project_owner()}/x-GGUF"


def _recipes() -> dict[str, dict]:
    out = {}
    for path in sorted([*(REPO / "FineTome" / "recipes").glob("*.yaml"), *(REPO / "FuncCall" / "recipes").glob("*.yaml")]):
        recipe = yaml.safe_load(path.read_text()) or {}
        run_name = recipe.get("run_name", path.stem)
        # export's default GGUF name is the run directory's name: output_dir, else runs/<run_name> (llamatune.train)
        out[Path(recipe.get("output_dir") or f"runs/{run_name}").name] = recipe
    return out


def test_space_models_yaml_names_the_files_export_writes_for_the_recipes():
    from llamatune.serving import load_config

    recipes = _recipes()
    raw = yaml.safe_load((REPO / "space" / "models.yaml").read_text())["models"]
    tuned = [e for e in raw if e["repo"].startswith("{owner}/")]
    assert len(tuned) == 2
    for e in tuned:
        name = e["repo"].removeprefix("{owner}/").removesuffix("-GGUF")
        assert name in recipes and recipes[name]["run_name"] == name, e
        assert e["file"] == gguf_name(name, "q4_k_m")
        assert e["repo"] == "{owner}/" + name + hub.SUFFIX["gguf"]
        assert e["template"] == recipes[name].get("chat_template", "llama-3.2")
    # both 3B recipes are served
    assert {n for n, r in recipes.items() if r.get("model_name_or_path", "").endswith("Llama-3.2-3B-Instruct")} == \
        {e["file"].removesuffix("-q4_k_m.gguf") for e in tuned}
    specs, _ = load_config(REPO / "space" / "models.yaml")
    assert [s.repo for s in specs][1:] == [hub.expand_owner(e["repo"]) for e in tuned]
    assert specs[1].origin.endswith("models.yaml: models[1] (Llama-3.2-3B FineTome-tuned)")
