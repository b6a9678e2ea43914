import json
import random

import numpy as np
import pytest
from conftest import given_rewards_recipe, run_cli, scoring_recipe, write_recipe
from transformers import AutoModelForCausalLM, AutoTokenizer

from corpmerge import recipe as recipes
from corpmerge import yaml_io
from corpmerge.amplitudes import Cloud
from corpmerge.errors import CorpmergeError
from corpmerge.methods import get_method
from corpmerge.output import folder
from corpmerge.output.folder import lineage_document, shipped_update
from corpmerge.output.location import LINEAGE_FILE
from corpmerge.recipe import ScoringSpec, load_recipe
from corpmerge.report.ensemble import majority_vote, recovered_fraction
from corpmerge.scoring.answers import ANSWERS, prediction
from corpmerge.scoring.lmeval import TaskSuite, make_lm
from corpmerge.yaml_io import dump_yaml, read_yaml


def write_length_task(folder, n: int = 12):
    """A 4-choice task whose options differ a lot in length, reporting acc and acc_norm."""
    rng = random.Random(0)
    rows = []
    for i in range(n):
        choices = ["no", "maybe so", "yes indeed, certainly", "x"]
        rng.shuffle(choices)
        rows.append({"question": f"Q{i}:", "choices": choices, "answer": i % 4})
    data = folder / "tiny_norm.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "tiny_norm.yaml").write_text(
        "task: tiny_norm\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    train: {data}\n    test: {data}\n"
        "output_type: multiple_choice\ntraining_split: train\ntest_split: test\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    return rows


def test_majority_vote_rules():
    predictions = [["a", "x", None, "p"], ["b", "y", None, "q"], ["b", "x", None, None]]
    correct = [[0, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]]
    # ex0: b wins 2-1; ex1: x wins; ex2: no answer at all → wrong; ex3: p/q tie → best-ranked (model 0)
    assert majority_vote(predictions, correct).tolist() == [1.0, 1.0, 0.0, 1.0]


def test_partial_credit_is_not_correct():
    # a ROCStories-style partial answer: the winner's own correct flag (False) is used, not its reward
    assert majority_vote([["B A C D E"], ["B A C D E"]], [[False], [False]]).tolist() == [0.0]


def test_predictions_per_task():
    gsm8k, stories, countdown = (ANSWERS[name] for name in ("gsm8k_strict", "story_order", "countdown_expression"))
    assert prediction("multiple_choice", [(-3.0, False), (-1.0, True), (-2.0, False)]) == "1"
    assert prediction("generate_until", "so #### 18.0", extract=gsm8k) == prediction("generate_until", "#### 18", extract=gsm8k)
    assert prediction("generate_until", "no answer", extract=gsm8k) is None
    assert prediction("generate_until", "<answer>A B C D E</answer>", extract=stories) == "ABCDE"
    assert prediction("generate_until", "<answer>1 + 2</answer>", extract=countdown) == "1+2"
    assert prediction("generate_until", "  ") is None and prediction("generate_until", " 7 ") == "7"


def test_multiple_choice_vote_follows_the_metric():
    # ℓ = (-3, -4) over options "a", "bbbb": raw argmax 0; per character (-3, -1): option 1
    lls = [(-3.0, False), (-4.0, False)]
    assert prediction("multiple_choice", lls, "acc", ["a", "bbbb"]) == "0"
    assert prediction("multiple_choice", lls, "acc_norm", ["a", "bbbb"]) == "1"
    # "éé" is 2 characters but 4 bytes: per character (-1.5, -1.33) → 1, per byte (-0.75, -1.33) → 0
    assert prediction("multiple_choice", lls, "acc_norm", ["éé", "bbb"]) == "1"
    assert prediction("multiple_choice", lls, "acc_bytes", ["éé", "bbb"]) == "0"
    # mutual information: conditional ℓ then unconditional ℓ; (-3+1, -4+5) → option 1
    assert prediction("multiple_choice", [-3.0, -4.0, -1.0, -5.0], "acc_mutual_info", ["a", "b"]) == "1"
    assert prediction("multiple_choice", [-3.0, -4.0, -1.0, -5.0], "acc", ["a", "b"]) == "0"  # only the n options
    with pytest.raises(ValueError, match="acc_norm"):
        prediction("multiple_choice", lls, "acc_norm")


def test_lmeval_votes_agree_with_the_reward_metric(tmp_path, tiny_model):
    rows = write_length_task(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    lm = make_lm(model, AutoTokenizer.from_pretrained(tiny_model), batch_size=8)
    votes = {}
    for metric in ("acc", "acc_norm"):
        suite = TaskSuite(ScoringSpec(tasks=["tiny_norm"], include_path=str(tmp_path), metric=metric), split="test")
        scores = suite.evaluate(lm, {"tiny_norm": list(range(len(rows)))})
        votes[metric] = {doc: s.prediction for (_, doc), s in scores.items()}
        for (_, doc), s in scores.items():  # the vote is right exactly when the reward metric says so
            assert (s.prediction == str(rows[doc]["answer"])) == s.correct, (metric, doc)
    # the test has teeth: some examples are right under acc_norm although the raw argmax is wrong
    assert any(votes["acc_norm"][d] == str(r["answer"]) != votes["acc"][d] for d, r in enumerate(rows))


def test_recovered_fraction():
    assert abs(recovered_fraction(0.4, 0.5, 0.45) - 0.5) < 1e-12
    assert recovered_fraction(0.4, 0.4, 0.45) is None


def test_run_reports_ensembles_and_the_command_matches(tmp_path, tiny_model, tiny_task):
    out = tmp_path / "out"
    data = scoring_recipe(tiny_model, tiny_task, out, gate={"enabled": False}, parameters={"quantile": 0.5}, evaluate={"limit": 12, "ensemble_k": [1, 3]})
    recipe = write_recipe(tmp_path, data)
    result = run_cli("run", str(recipe))
    assert result.returncode == 0, result.stderr
    assert "RandOpt top-3 vote" in result.stdout
    rows = json.loads((out / "report.json").read_text())["evaluation"]["rows"]
    assert {"base", "best_entry", "merged", "randopt_top1", "randopt_top3"} <= set(rows)
    assert rows["randopt_top1"]["accuracy"] == rows["best_entry"]["accuracy"]  # a vote of one is the best entry
    again = run_cli("ensemble", str(recipe), "-k", "1", "-k", "3")
    assert again.returncode == 0, again.stderr
    assert "RandOpt top-3 vote" in again.stdout and "corp (merged)" in again.stdout
    lineage = out / "corpmerge.yaml"  # a lineage edited by hand: one line naming the file, no traceback
    lineage.write_text(lineage.read_text().replace("amplitude:", "amp:"))
    broken = run_cli("ensemble", str(recipe), "-k", "1")
    assert broken.returncode == 2 and "Traceback" not in broken.stderr, broken.stderr
    assert f"{lineage}: 'lineage' must be a list of {{seed, amplitude}} rows" in " ".join(broken.stderr.split())


def test_the_lineage_of_a_big_population_is_read_and_an_oversized_one_is_refused(tmp_path, monkeypatch):
    """A lineage lists every entry, every elite and every shipped seed: past the 10,000 items the recipe reader allows
    any other list (still refused elsewhere in the file); its size is bounded; both errors are one line."""
    n = 10_001
    rows = [{"seed": s, "amplitude": 1e-3 / (s + 1)} for s in range(n)]
    document = {
        "corpmerge_version": "0",
        "recipe": {"population": [{"seed": s, "sigma": 0.01, "reward": 0.5} for s in range(n)]},
        "merge": {"elite_seeds": list(range(n)), "elite_weights": [1 / n] * n},
        "lineage": rows,
    }
    (tmp_path / LINEAGE_FILE).write_text(dump_yaml(document))
    amps = shipped_update(tmp_path)
    assert amps.seeds.tolist() == list(range(n)) and amps.values.tolist() == [r["amplitude"] for r in rows]

    (tmp_path / LINEAGE_FILE).write_text(dump_yaml({**document, "population_summary": {"sigmas": list(range(n))}}))
    with pytest.raises(CorpmergeError, match="more than 10,000 items") as refused:
        shipped_update(tmp_path)
    assert "\n" not in str(refused.value)

    monkeypatch.setattr(folder, "MAX_LINEAGE_BYTES", 1000)
    with pytest.raises(CorpmergeError, match="rerun the merge") as too_big:
        shipped_update(tmp_path)
    assert str(too_big.value).startswith(str(tmp_path / LINEAGE_FILE)) and "\n" not in str(too_big.value)


def test_the_lineage_of_the_largest_recipe_that_loads_is_read(tmp_path, monkeypatch):
    """Whatever recipe the reader accepts, its lineage (the recipe, 2 values per elite, 5 per shipped seed) is read
    back: the lineage's bound on YAML values follows the recipe's and the population cap, shown here with the
    recipe bound cut to 20,000 and the cap to the population's size."""
    monkeypatch.setattr(yaml_io, "MAX_NODES", 20_000)
    monkeypatch.setattr(recipes, "MAX_POPULATION", 2_800)
    n = 2_800  # 7 values per entry: just under the cut bound with the recipe's other fields
    data = given_rewards_recipe(tmp_path / "base", tmp_path / "out", merge_method="reward_avg", parameters={"quantile": 0.0, "beta": 1})
    data["population"] = [{"seed": s, "sigma": 0.01, "reward": s / n} for s in range(n)]
    recipe = load_recipe(write_recipe(tmp_path, data))
    entries = list(recipe.population)
    method = get_method("reward_avg")
    result = method(Cloud.from_entries(entries), method.grid(recipe.parameters)[0])
    text = dump_yaml(lineage_document(recipe, entries, result))
    with pytest.raises(CorpmergeError, match="more than 20,000 YAML values; a recipe may not be that big"):
        read_yaml(text, "lineage")
    (tmp_path / LINEAGE_FILE).write_text(text)
    amps = shipped_update(tmp_path)
    assert amps.seeds.tolist() == list(range(n)) and np.array_equal(amps.values, result.final_amplitudes().values)

    monkeypatch.setattr(recipes, "MAX_POPULATION", 100)
    with pytest.raises(CorpmergeError, match="the lineage file grows to more than 21,400 YAML values") as refused:
        shipped_update(tmp_path)
    assert str(refused.value).startswith(str(tmp_path / LINEAGE_FILE)) and "\n" not in str(refused.value)
