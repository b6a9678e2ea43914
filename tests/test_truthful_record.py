"""Issue 44, points 4, 5, 8 and 9: the log, rewards.yaml, the gate's record, racing's estimates and the ensemble's claims."""

import numpy as np
import yaml
from conftest import given_rewards_recipe, run_cli, scoring_recipe, write_recipe

from corpmerge.amplitudes import Amplitudes
from corpmerge.comparison import PairedStats
from corpmerge.gate.procedure import Candidate, GateDecision
from corpmerge.methods import MergeResult
from corpmerge.output.model_card import estimates_note
from corpmerge.output.report_schema import HeldOut, RunReport
from corpmerge.population import Entry
from corpmerge.recipe import GateSpec, parse_recipe
from corpmerge.report.ensemble import recovered_fraction
from corpmerge.report.sections import gate_section
from corpmerge.report.view import model_label, ordered_rows


def test_the_log_holds_the_tables_rewards_yaml_is_written_and_a_refusal_leaves_nothing(tmp_path, tiny_model, tiny_task):
    out = tmp_path / "out"
    data = scoring_recipe(tiny_model, tiny_task, out, evaluate={"limit": 8}, gate={"enabled": False}, parameters={"quantile": 0.5, "beta": 10, "alpha": 1})
    data["population"]["size"], data["scoring"]["support"]["limit"] = 4, 40  # small: the run is made three times
    recipe = write_recipe(tmp_path, data)
    result = run_cli("-q", "run", str(recipe))
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "out.work" / "corpmerge.log").read_text()
    assert "A construct" in log and "held-out: tiny_mc (test)" in log and "gate disabled: merged with" in log  # 8: the tables and the decision
    rewards = yaml.safe_load((tmp_path / "out.work" / "rewards.yaml").read_text())  # 8: run writes rewards.yaml
    assert len(rewards["population"]) == 4 and rewards["fold_A_examples"] == 20
    racing = RunReport.model_validate_json((out / "report.json").read_text()).racing
    assert [row.get("examples", 20) for row in rewards["population"]] == racing.examples
    lineage = yaml.safe_load((out / "corpmerge.yaml").read_text())["recipe"]["population"]
    assert [row.get("examples") for row in lineage] == [
        row.get("examples") for row in rewards["population"]
    ]  # and in the lineage  # 5: an estimate carries its n
    assert "local_files_only" not in (out / "tokenizer_config.json").read_text()  # 9

    moved = run_cli("-q", "run", str(recipe), "-o", str(tmp_path / "elsewhere"))  # 8: -o states where the store went
    assert moved.returncode == 0, moved.stderr
    assert f"-o: the work folder and score store move to {tmp_path / 'elsewhere.work'}" in moved.stderr
    assert f"the scores in {tmp_path / 'out.work' / 'scores.sqlite'} are not reused" in moved.stderr

    bad = dict(data, evaluate={"split": "validation"}, output={"path": str(tmp_path / "never")})
    refused = run_cli("-q", "run", str(write_recipe(tmp_path, bad, "bad.yaml")))
    assert refused.returncode == 2 and "evaluate.split:" in refused.stderr
    assert not (tmp_path / "never.work").exists() and not (tmp_path / "never").exists()  # 8: a refused run leaves no log
    again = run_cli("-q", "run", str(write_recipe(tmp_path, dict(data, evaluate={"split": "validation"}), "again.yaml")), "--overwrite")
    assert again.returncode == 2
    assert "ERROR error: evaluate.split: split 'validation' not found" in (tmp_path / "out.work" / "corpmerge.log").read_text()  # 8: the line


def stats(lcb: float) -> PairedStats:
    return PairedStats(n=20, fixes=2, regressions=1, constructive_score=0.05, mean_diff=0.05, sd=0.2, lcb=lcb, base_accuracy=0.3, accuracy=0.35)


def test_a_probe_abstention_keeps_the_fold_c_numbers():
    result = MergeResult("corp", {}, np.array([0]), np.array([1.0]), amplitudes=Amplitudes(np.array([1]), np.array([0.01])))
    cand = Candidate({"beta": 10}, result, "s", validate=stats(0.01), probe={0.5: stats(-0.02), 1.0: stats(-0.05)})
    gate = gate_section(GateSpec(), GateDecision(None, None, [cand], "no probe multiplier had LCB > 0", 1))
    assert not gate.accepted and gate.probe["0.5"].lcb == -0.02 and gate.probe["1.0"].lcb == -0.05


def test_the_abstention_hint_cites_a_panel_that_exists():
    from corpmerge.cli import ABSTAIN_ADVICE

    assert "reward-by-σ panel of `corpmerge diagnose`'s plot" in ABSTAIN_ADVICE


def test_estimates_are_marked_with_their_examples(tmp_path):
    from corpmerge.pipeline import write_rewards

    recipe = parse_recipe({"base_model": "x", "population": {"size": 3, "sigmas": [0.01]}, "output": {"path": str(tmp_path / "o")}})
    entries = [Entry(1, 0.01, 0.30), Entry(2, 0.01, -0.0288), Entry(3, 0.01, 0.25)]
    rows = yaml.safe_load(write_rewards(recipe, entries, 0.28, [40, 10, 40], 40).read_text())["population"]
    assert rows[1] == {"seed": 2, "sigma": 0.01, "examples": 10, "reward": -0.0288} and "examples" not in rows[0]
    assert parse_recipe({"base_model": "x", "population": rows}).population[1].examples == 10  # pasted back as given rewards
    report = RunReport.model_validate(
        {
            "base_model": "x",
            "method": "corp",
            "population": {"size": 3, "sigmas": {0.01: 3}, "reward_min": -0.0288, "reward_mean": 0.17, "reward_max": 0.3, "rewards": [0.3, -0.0288, 0.25]},
            "folds": {"A": 40},
            "base": {"A": 0.28},
            "candidates_tried": 1,
            "gate": {"enabled": False, "accepted": True, "reason": "gate disabled"},
            "racing": {
                "enabled": True,
                "stages": [10, 20, 40],
                "z": 1.645,
                "keep": 1,
                "scored": 3,
                "stopped": 1,
                "example_evaluations": 90,
                "example_evaluations_without_racing": 120,
                "examples": [40, 10, 40],
            },
        }
    )
    note = estimates_note(report)
    assert "1 of 3 rewards are estimates: racing stopped those entries after 10–10 of the 40 fold-A examples" in note
    assert "min 0.2500, max 0.3000" in note


def held(rows: dict) -> HeldOut:
    return HeldOut(
        split="test", tasks=["t"], n=40, rows={k: {"accuracy": a, "n": 40, "diff": d, "ci_low": lo, "ci_high": hi} for k, (a, d, lo, hi) in rows.items()}
    )


def test_no_gain_ratio_when_an_interval_covers_zero_and_one_row_per_model():
    assert recovered_fraction(0.24, 0.26, 0.32, ((-0.01, 0.05), (0.02, 0.14))) is None
    assert recovered_fraction(0.24, 0.26, 0.32, ((0.01, 0.03), (0.02, 0.14))) == (0.32 - 0.24) / (0.26 - 0.24)
    evaluation = held({"base": (0.24, None, None, None), "best_entry": (0.3, 0.06, 0.0, 0.1), "randopt_top1": (0.3, 0.06, 0.0, 0.1)})
    assert [k for k, _ in ordered_rows(evaluation)] == ["base", "best_entry"]
    assert model_label("randopt_top1", held({"base": (0.2, None, None, None)}), "corp") == "RandOpt top-1 vote (1 pass)"


def test_ensemble_caps_k_at_the_population(tmp_path, tiny_model, tiny_task):
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out", population={"size": 3, "sigmas": [0.02], "seed": 3}, gate={"enabled": False})
    data.update(evaluate={"limit": 4}, parameters={"quantile": 0.5, "beta": 10, "alpha": 1})
    data["scoring"]["support"]["limit"] = 12
    result = run_cli("-q", "ensemble", str(write_recipe(tmp_path, data)), "-k", "50")
    assert result.returncode == 0, result.stderr
    assert "--top-k: 50 capped at 3, the population's size" in result.stderr and "top-50" not in result.stdout and "top-3 vote" in result.stdout


def test_validate_prints_a_note_once(tmp_path, tiny_model):
    population = [{"seed": 1, "sigma": 2.0, "reward": 0.5}]
    result = run_cli("validate", str(write_recipe(tmp_path, given_rewards_recipe(tiny_model, tmp_path / "out", population=population))))
    assert result.returncode == 0 and (result.stdout + result.stderr).count("is at least 1") == 1
