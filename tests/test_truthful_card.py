"""Issue 44, point 2: the card says what the weights are, which examples its number stands on, and a pasted
lm_eval command reproduces that number."""

import glob
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import run_cli, scoring_recipe, write_recipe
from huggingface_hub import metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

from corpmerge.output.model_card import card_tags, relation, render_model_card


def card_command(card: str) -> str:
    block = re.search(r"Evaluate with lm-eval:\n\n```bash\n(.*?)```", card, re.S)
    (line,) = [c for c in block.group(1).splitlines() if c.startswith("lm_eval")]
    return line


def test_the_card_states_its_examples_and_its_command_reproduces_its_number(tmp_path, tiny_model, tiny_task):
    out = tmp_path / "out"
    data = scoring_recipe(tiny_model, tiny_task, out, evaluate={"limit": 12}, gate={"enabled": False}, parameters={"quantile": 0.5, "beta": 10, "alpha": 1})
    data["scoring"]["num_fewshot"] = 1
    result = run_cli("-q", "run", str(write_recipe(tmp_path, data)))
    assert result.returncode == 0, result.stderr
    _, (res,) = model_index_to_eval_results(metadata_load(out / "README.md")["model-index"])
    assert res.dataset_split == "test[:12]" and res.metric_name == "accuracy on the first 12 of 16 test examples (evaluate.limit) (corpmerge)"
    card = (out / "README.md").read_text()
    line = card_command(card)
    assert f"pretrained={out},dtype=float32" in line and "--num_fewshot 1" in line and "--limit 12" in line and "<this folder" not in line
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    ran = subprocess.run(["bash", "-c", f"{line} --batch_size 8 --output_path {tmp_path / 'lm'}"], capture_output=True, text=True, env=env, timeout=600)
    assert ran.returncode == 0, ran.stderr[-2000:]
    (found,) = glob.glob(str(tmp_path / "lm" / "**" / "results_*.json"), recursive=True)
    acc = json.loads(Path(found).read_text())["results"]["tiny_mc"]["acc,none"]
    assert round(acc, 4) == res.metric_value

    rebuilt = run_cli("-q", "rebuild", str(out), "-o", str(tmp_path / "again"))  # 3. the card keeps its model-index
    assert rebuilt.returncode == 0, rebuilt.stderr
    again = metadata_load(tmp_path / "again" / "README.md")
    assert again["model-index"] == metadata_load(out / "README.md")["model-index"]


def lineage(method: str, rows: list | None, merge: bool = True, card_base: str | None = "org/base") -> dict:
    return {
        "noise": "scheme",
        "recipe": {"base_model": "/models/base", "dtype": "float32", "output": {"path": "/models/out"}},
        "merge": {"method": method, "parameters": {}, "multiplier": 2.0, "elite_seeds": [1]} if merge else None,
        "population_summary": {"size": 2, "sigmas": {0.01: 2}, "reward_min": 0.1, "reward_mean": 0.2, "reward_max": 0.3},
        "lineage": rows,
        "base": {"model": "/models/base", "card_base_model": card_base} if card_base else {"model": "/models/base"},
    }


def test_a_best_merge_is_neither_corp_nor_a_merge():
    doc = lineage("best", [{"seed": 1, "amplitude": 0.01}])
    assert card_tags(doc) == ["corpmerge"] and relation(doc, "org/base") is None
    card = render_model_card(doc)
    assert "CoRP's operator" not in card and "RandOpt K=1" in card and "base plus one seeded Gaussian perturbation" in card
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["tags"] == ["corpmerge"] and "base_model_relation" not in meta and meta["base_model"] == "org/base"


def test_a_corp_merge_is_tagged_and_related_only_with_a_base_model():
    doc = lineage("corp", [{"seed": 1, "amplitude": 0.01}, {"seed": 2, "amplitude": 0.02}])
    assert card_tags(doc) == ["merge", "corpmerge", "corp"] and relation(doc, "org/base") == "merge"
    assert "CoRP's operator" in render_model_card(doc)
    bare = lineage("corp", doc["lineage"], card_base=None)
    meta = yaml.safe_load(render_model_card(bare).split("---")[1])
    assert "base_model" not in meta and "base_model_relation" not in meta


def test_a_write_on_abstain_copy_is_not_a_merge():
    doc = lineage("corp", None, merge=False)
    assert card_tags(doc) == ["corpmerge"] and relation(doc, "org/base") is None


# --- 3. rebuild reproduces the whole lineage and the card ------------------------------------------------------------


def test_rebuild_keeps_the_multiplier_the_lineage_and_the_model_index(tmp_path, tiny_model, tiny_task):
    from conftest import given_rewards_recipe

    from corpmerge.amplitudes import Cloud
    from corpmerge.model_io import ensure_checkpoint, load_tokenizer
    from corpmerge.output.folder import write_output
    from corpmerge.plan import check_recipe
    from corpmerge.recipe import parse_recipe

    recipe = parse_recipe(given_rewards_recipe(tiny_model, tmp_path / "out"))
    checked = check_recipe(recipe, needs_rewards=True)
    result = checked.method(Cloud.from_entries(checked.entries), checked.grid[0]).scaled(2.0)
    ref = ensure_checkpoint(checked.base)
    write_output(tmp_path / "out", recipe=recipe, entries=checked.entries, result=result, tokenizer=load_tokenizer(ref), base=checked.base, ref=ref)
    rebuilt = run_cli("-q", "rebuild", str(tmp_path / "out"), "-o", str(tmp_path / "again"))
    assert rebuilt.returncode == 0, rebuilt.stderr
    shipped, again = (yaml.safe_load((tmp_path / d / "corpmerge.yaml").read_text()) for d in ("out", "again"))
    assert again["merge"]["multiplier"] == 2.0 and {k: v for k, v in again.items() if k != "base"} == {k: v for k, v in shipped.items() if k != "base"}
