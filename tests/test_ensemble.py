import json

from conftest import run_cli, scoring_recipe, write_recipe
from corpmerge.scoring.answers import prediction
from corpmerge.report.ensemble import majority_vote, recovered_fraction


def test_majority_vote_rules():
    predictions = [["a", "x", None, "p"], ["b", "y", None, "q"], ["b", "x", None, None]]
    correct = [[0, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]]
    # ex0: b wins 2-1; ex1: x wins; ex2: no answer at all → wrong; ex3: p/q tie → best-ranked (model 0)
    assert majority_vote(predictions, correct).tolist() == [1.0, 1.0, 0.0, 1.0]


def test_partial_credit_is_not_correct():
    # a ROCStories-style partial answer: the winner's own correct flag (False) is used, not its reward
    assert majority_vote([["B A C D E"], ["B A C D E"]], [[False], [False]]).tolist() == [0.0]


def test_predictions_per_task():
    assert prediction("any_mc", "multiple_choice", [(-3.0, False), (-1.0, True), (-2.0, False)]) == "1"
    assert prediction("corpmerge_gsm8k", "generate_until", "so #### 18.0") == prediction("corpmerge_gsm8k", "generate_until", "#### 18")
    assert prediction("corpmerge_gsm8k", "generate_until", "no answer") is None
    assert prediction("corpmerge_rocstories", "generate_until", "<answer>A B C D E</answer>") == "ABCDE"
    assert prediction("corpmerge_countdown", "generate_until", "<answer>1 + 2</answer>") == "1+2"
    assert prediction("other_gen", "generate_until", "  ") is None


def test_recovered_fraction():
    assert abs(recovered_fraction(0.4, 0.5, 0.45) - 0.5) < 1e-12
    assert recovered_fraction(0.4, 0.4, 0.45) is None


def test_run_reports_ensembles_and_the_command_matches(tmp_path, tiny_model, tiny_task):
    out = tmp_path / "out"
    data = scoring_recipe(tiny_model, tiny_task, out, gate={"enabled": False}, parameters={"quantile": 0.5},
                          evaluate={"limit": 12, "ensemble_k": [1, 3]})
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
