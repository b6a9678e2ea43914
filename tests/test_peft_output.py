"""Issue 46, item 3: ``output.format: peft`` — a rank-r run scores every update through low-rank adapters and ships the
merge as a PEFT LoRA adapter (no full weights) that loads in PEFT and lm-eval, equals the full-format output once
merged, passes the shipped check, is carded, pushed and rebuilt byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli, scoring_recipe
from peft import PeftModel
from safetensors.torch import load_file
from tiny import build_tiny_model, byte_tokenizer
from transformers import AutoModelForCausalLM

from corpmerge.errors import CorpmergeError
from corpmerge.model_io import BaseRef
from corpmerge.output.peft_adapter import CONFIG_FILE, WEIGHTS_FILE
from corpmerge.pipeline import run_recipe
from corpmerge.plan import check_recipe
from corpmerge.rebuild import Lineage, open_lineage, rebuild
from corpmerge.recipe import parse_recipe
from corpmerge.scoring.scorer import entry_update
from corpmerge.scoring.session import open_session

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
RANK = 2


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The tiny model with as many embeddings as its tokenizer has tokens (lm-eval's ``peft=`` resizes them to it)."""
    return build_tiny_model(tmp_path_factory.mktemp("peft-base") / "base", vocab_size=len(byte_tokenizer()))


def recipe(base: Path, tasks: Path, out: Path, form: str = "peft", **overrides) -> dict:
    defaults = {
        "population": {"size": 4, "sigmas": [0.02, 0.05], "seed": 3, "rank": RANK},
        "parameters": {"quantile": 0.5, "beta": 10, "alpha": 2},
        "gate": {"enabled": False},  # the merge is written, and the shipped check re-scores it against what was scored
        "evaluate": {},
        "output": {"path": str(out), "format": form},
    }
    data = scoring_recipe(base, tasks, out, **{**defaults, **overrides})
    data["scoring"]["support"]["limit"] = 40
    return data


@pytest.fixture(scope="module")
def runs(tmp_path_factory, base, tiny_task) -> dict:
    """The recipe run with ``output.format: peft``, and its merge written again with ``output.format: full`` from the
    lineage (the writer of a full-format run; scoring it again would only repeat the same amplitudes)."""
    folder = tmp_path_factory.mktemp("peft-run")
    data = {form: recipe(base, tiny_task, folder / form, form) for form in ("peft", "full")}
    report = run_recipe(parse_recipe(data["peft"]))
    shipped = open_lineage(folder / "peft")
    full = shipped.recipe.model_copy(update={"output": shipped.recipe.output.model_copy(update={"format": "full"})})
    rebuild(Lineage(shipped.folder, shipped.document, full), BaseRef(str(base)), folder / "full")
    return {"folder": folder, "data": data, "report": report}


def test_the_peft_output_is_an_adapter_folder_without_full_weights(runs, base):
    out = runs["folder"] / "peft"
    files = sorted(p.name for p in out.iterdir())
    assert CONFIG_FILE in files and WEIGHTS_FILE in files and "corpmerge.yaml" in files and "report.json" in files and "README.md" in files
    assert "tokenizer.json" in files or "tokenizer_config.json" in files
    assert not [f for f in files if f.startswith("model") or f == "config.json"], files
    config = json.loads((out / CONFIG_FILE).read_text())
    lineage = yaml.safe_load((out / "corpmerge.yaml").read_text())
    k = sum(1 for row in lineage["lineage"] if row["amplitude"] != 0)
    assert config["r"] == config["lora_alpha"] == k * RANK and config["base_model_name_or_path"] == str(base.resolve())
    assert lineage["recipe"]["output"]["format"] == "peft"


def test_peft_loads_it_and_merged_it_equals_the_full_format_output(runs, base):
    out = runs["folder"]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, out / "peft").merge_and_unload().state_dict()
    full = load_file(out / "full" / "model.safetensors")
    theta0 = load_file(base / "model.safetensors")
    assert yaml.safe_load((out / "peft" / "corpmerge.yaml").read_text())["lineage"] == yaml.safe_load((out / "full" / "corpmerge.yaml").read_text())["lineage"]
    changed = 0
    for name, tensor in full.items():
        torch.testing.assert_close(merged[name], tensor, rtol=0, atol=1e-6)
        changed += not torch.equal(tensor, theta0[name])
    assert changed == 14  # the Linear matrices of both layers; norms and the tied embedding stay θ₀


def test_the_shipped_check_passes_through_peft(runs):
    check = runs["report"]["shipped_check"]
    assert check["identical"] is True and check["examples"] > 0, check


def test_the_card_says_it_is_an_adapter_and_how_to_load_it(runs, base):
    out = runs["folder"] / "peft"
    card = (out / "README.md").read_text()
    rank = json.loads((out / CONFIG_FILE).read_text())["r"]
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "peft" and "lora" in front["tags"]
    assert "LoRA adapter" in card and f"rank R = K·r = {rank}" in card and "scaling α/R is 1" in card
    assert f'PeftModel.from_pretrained(base, "{out.resolve()}")' in card
    assert f"pretrained={base.resolve()},peft={out.resolve()},dtype=float32" in card
    assert f"--enable-lora --max-lora-rank 8 --lora-modules corpmerge={out.resolve()}" in card
    assert "pretrained=" + str(out.resolve()) not in card


def test_rebuild_reproduces_the_adapter_byte_for_byte(runs, base, tmp_path):
    out = runs["folder"] / "peft"
    path, comparison = rebuild(open_lineage(out), BaseRef(str(base)), tmp_path / "again")
    assert comparison.equal and comparison.tensors > 0
    assert (path / WEIGHTS_FILE).read_bytes() == (out / WEIGHTS_FILE).read_bytes()
    assert (path / CONFIG_FILE).read_bytes() == (out / CONFIG_FILE).read_bytes()
    assert not (path / "model.safetensors").exists()


def test_scores_through_adapters_equal_scores_through_weights_per_example(runs):
    data = runs["data"]
    entry = parse_recipe(data["peft"]).entries()[0]
    scores = {}
    for form in ("peft", "full"):
        with open_session(parse_recipe(data[form])) as session:
            assert session.scorer.adapters == (form == "peft") and session.identity.get("form") == ("adapters" if form == "peft" else "weights")
            before = {n: p.detach().clone() for n, p in session.model.named_parameters()}
            scores[form] = session.scorer.evaluate(entry_update(entry), session.folds["A"])
            after = dict(session.model.named_parameters())
            assert all(torch.equal(before[n], after[n]) for n in before) == (form == "peft")  # adapters: the weights stay θ₀
    assert scores["peft"].keys() == scores["full"].keys() and len(scores["peft"]) > 0
    assert [s.correct for s in scores["peft"].values()] == [scores["full"][k].correct for k in scores["peft"]]
    np.testing.assert_allclose([s.value for s in scores["peft"].values()], [scores["full"][k].value for k in scores["peft"]], rtol=0, atol=1e-4)


def test_a_store_of_scores_through_adapters_is_refused_for_weights(runs):
    data = runs["data"]
    store = {**data["full"]["scoring"], "store": str(runs["folder"] / "peft.work" / "scores.sqlite")}  # the peft run's
    with pytest.raises(CorpmergeError, match=r"different form of a scored update .*\(adapters ≠ weights\)") as caught:
        check_recipe(parse_recipe({**data["full"], "scoring": store}), needs_rewards=False)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"population": {"size": 4, "sigmas": [0.01]}}, "output.format: peft writes a LoRA adapter of the rank-r merge; set population.rank"),
        ({"scoring.backend": "vllm"}, "output.format: peft is scored through low-rank adapters by the hf backend in this version"),
        ({"output.write_on_abstain": True}, "output.write_on_abstain: an abstention writes the base unchanged, which is no LoRA adapter"),
        ({"output.format": "lora"}, "output.format: Input should be 'full' or 'peft'"),
    ],
)
def test_a_recipe_peft_cannot_serve_is_refused_in_one_line(tmp_path, tiny_task, change, message):
    data = recipe(tmp_path / "base", tiny_task, tmp_path / "out")
    for key, value in change.items():
        section, _, field = key.partition(".")
        data[section] = {**data[section], field: value} if field else value
    with pytest.raises(CorpmergeError) as caught:
        parse_recipe(data)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_ties_is_refused_with_peft_in_one_line(tmp_path, base, tiny_task):
    data = recipe(base, tiny_task, tmp_path / "out", merge_method="ties", parameters={"quantile": 0.5})
    with pytest.raises(CorpmergeError, match=r"^output.format: peft writes the merge as a LoRA adapter.*'ties'.*use one of .*corp") as caught:
        check_recipe(parse_recipe(data), needs_rewards=False)
    assert "\n" not in str(caught.value)


def test_lm_eval_with_peft_reproduces_the_reports_number(runs, base, tiny_task):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    out = runs["folder"] / "peft"
    lm = HFLM(pretrained=str(base), peft=str(out), dtype="float32", device="cpu", batch_size=8)
    result = simple_evaluate(model=lm, tasks=["tiny_mc"], task_manager=TaskManager(include_path=str(tiny_task)), verbosity="ERROR")
    merged = runs["report"]["evaluation"]["rows"]["merged"]
    assert result["results"]["tiny_mc"]["acc,none"] == pytest.approx(merged["accuracy"], abs=1e-12)


def test_push_uploads_the_adapter_folder_and_its_card_names_the_repo(runs, tmp_path):
    from hubserver import HubServer

    out, token = runs["folder"] / "peft", "hf_corpmergeTestToken1234567890"
    with HubServer(token) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "0", "HF_TOKEN": token}
        result = run_cli("-q", "push", str(out), "me/corp-lora", env=env)
        assert result.returncode == 0, result.stderr
        tree = hub.state.repos["me/corp-lora"]["branches"]["main"]
    assert set(tree) == {p.name for p in out.iterdir()} and {CONFIG_FILE, WEIGHTS_FILE} <= set(tree)
    assert all(tree[name] == (out / name).read_bytes() for name in tree if name != "README.md")
    card = tree["README.md"].decode()
    assert "peft=me/corp-lora," in card and 'PeftModel.from_pretrained(base, "me/corp-lora")' in card and "corpmerge=me/corp-lora" in card
    assert str(out.resolve()) not in card
