"""evaluate.tasks beyond the support's: each further task reported on its own, in report.json and the model card."""

from __future__ import annotations

import json

import yaml
from conftest import scoring_recipe
from tiny import write_mc_task

from corpmerge.output.report_schema import RunReport
from corpmerge.recipe import parse_recipe
from corpmerge.report.view import evaluation_view


def test_a_task_the_support_does_not_train_is_reported_beside_the_main_one(tmp_path, tiny_model):
    from corpmerge.pipeline import run_recipe

    tasks = write_mc_task(tmp_path / "tasks")
    write_mc_task(tasks, name="tiny_other", n_test=12)
    out = tmp_path / "out"
    data = scoring_recipe(tiny_model, tasks, out, evaluate={"tasks": ["tiny_mc", "tiny_other"], "split": "test"})
    data["output"]["write_on_abstain"] = True
    report = run_recipe(parse_recipe(data))
    held = report["evaluation"]
    assert held["tasks"] == ["tiny_mc"] and held["n"] == 16  # the main rows: the task the support trains
    other = held["other_tasks"]["tiny_other"]
    assert other["n"] == other["split_size"] == 12
    shipped = "merged" if "merged" in held["rows"] else "base"
    assert {"base", "best_entry"} <= set(other["rows"]) and shipped in other["rows"]
    k1 = other["rows"]["best_entry"]
    assert k1["ci_low"] <= k1["diff"] <= k1["ci_high"] and k1["n"] == 12
    saved = json.loads((out / "report.json").read_text())
    assert saved["evaluation"]["other_tasks"]["tiny_other"]["rows"]["base"] == other["rows"]["base"]
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    results = {r["dataset"]["name"]: r for entry in front["model-index"] for r in entry["results"]}
    assert set(results) == {"tiny_mc", "tiny_other"}
    value = results["tiny_other"]["metrics"][0]["value"]
    assert value == round(other["rows"][shipped]["accuracy"], 4)
    assert "Tasks the support does not train" in card and "`tiny_other`" in card
    parsed = RunReport.of_run({k: v for k, v in report.items() if k != "report_path"}).evaluation
    assert any("tiny_other" in str(getattr(part, "title", "")) for part in evaluation_view(parsed, "corp"))


def test_without_further_tasks_the_report_has_no_other_tasks(tmp_path, tiny_model):
    from corpmerge.pipeline import run_recipe

    tasks = write_mc_task(tmp_path / "tasks")
    report = run_recipe(parse_recipe(scoring_recipe(tiny_model, tasks, tmp_path / "out", evaluate={"split": "test"})))
    assert "other_tasks" not in report["evaluation"] and report["evaluation"]["tasks"] == ["tiny_mc"]
