import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import torch
import yaml
from conftest import given_rewards_recipe, run_cli, scoring_recipe, write_recipe
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from corpmerge.population import Entry
from corpmerge.recipe import parse_recipe
from corpmerge.scoring.evaluator import Request
from corpmerge.scoring.scorer import entry_update
from corpmerge.scoring.session import open_session
from corpmerge.scoring.subjects import entry_subject


def test_scorer_sets_exact_perturbation_and_restores_bit_exactly(tmp_path, tiny_model, tiny_task):
    recipe = parse_recipe(scoring_recipe(tiny_model, tiny_task, tmp_path / "out"))
    session = open_session(recipe)
    try:
        original = {n: p.detach().clone() for n, p in session.model.named_parameters()}
        entry = Entry(seed=77, sigma=0.05)
        update = entry_update(entry)
        session.scorer.apply(update)
        for name, param in session.model.named_parameters():
            expected = original[name] + update.delta(name, param.shape)
            assert torch.equal(param, expected), name
        session.scorer.restore()
        for name, param in session.model.named_parameters():
            assert torch.equal(param, original[name]), name
        base_before = session.scorer.evaluate(None, session.folds["A"])
        for e in [Entry(1, 0.1), Entry(2, 0.3), Entry(3, 0.02)]:
            session.scores(Request(entry_subject(e), "A", session.folds["A"], entry_update(e)))
            for name, param in session.model.named_parameters():  # every evaluation sees exactly θ₀ + Δ
                assert torch.equal(param, original[name] + entry_update(e).delta(name, param.shape)), name
        assert session.scorer.evaluate(None, session.folds["A"]) == base_before  # restored lazily, bit-exactly
        for name, param in session.model.named_parameters():
            assert torch.equal(param, original[name]), name
        assert not session.store.missing(entry_subject(Entry(2, 0.3)), "A", [(t, d) for t in session.folds["A"] for d in session.folds["A"][t]])
    finally:
        session.close()


def test_run_end_to_end_then_resume_rescores_nothing(tmp_path, tiny_model, tiny_task):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, scoring_recipe(tiny_model, tiny_task, out, evaluate={"limit": 12}))
    first = run_cli("run", str(recipe))
    assert first.returncode == 0, first.stderr
    accepted = out.exists()
    report_path = (out if accepted else tmp_path / "out.work") / "report.json"
    report = json.loads(report_path.read_text())
    assert report["gate"]["accepted"] == accepted
    assert set(report["base"]) == {"A", "B", "C"} and report["folds"] == {"A": 40, "B": 20, "C": 20}
    assert report["candidates_tried"] == 2 and report["evaluations"] > 6
    assert {"load", "score", "gate", "evaluate", "write"} <= set(report["timings_s"])
    assert set(report["evaluation"]["rows"]) >= {"base", "best_entry"}
    if accepted:
        assert "gate passed" in first.stdout
        AutoModelForCausalLM.from_pretrained(out)
        assert "Validation gate" in (out / "README.md").read_text()
    else:
        assert "ABSTAINED" in first.stdout and "fold B" in first.stdout
    again = run_cli("-q", "run", str(recipe), "--overwrite")
    assert again.returncode == 0, again.stderr
    assert json.loads(report_path.read_text())["evaluations"] == 0  # everything came from the store


def test_gate_disabled_run_writes_a_loadable_model(tmp_path, tiny_model, tiny_task):
    out = tmp_path / "out"
    data = scoring_recipe(tiny_model, tiny_task, out, gate={"enabled": False}, parameters={"quantile": 0.5})
    result = run_cli("-q", "run", str(write_recipe(tmp_path, data)))
    assert result.returncode == 0, result.stderr
    AutoModelForCausalLM.from_pretrained(out)
    report = json.loads((out / "report.json").read_text())
    gate = report["gate"]
    assert gate.pop("ess") > 0 and gate.pop("step_rms") > 0  # what the weights did (ESS = 1/Σw², step RMS)
    assert gate == {
        "enabled": False,
        "accepted": True,
        "reason": "gate disabled",
        "params": gate["params"],
        "multiplier": 1.0,
        "candidates_probed": 0,
        "fallback": False,
    }
    lineage = yaml.safe_load((out / "corpmerge.yaml").read_text())
    assert all(isinstance(p["reward"], float) for p in lineage["recipe"]["population"])


def test_abstain_writes_nothing_unless_asked(tmp_path, tiny_model, tiny_task):
    gate = {"enabled": True, "z": 100.0}
    out = tmp_path / "out"
    result = run_cli("-q", "run", str(write_recipe(tmp_path, scoring_recipe(tiny_model, tiny_task, out, gate=gate))))
    assert result.returncode == 0 and "ABSTAINED" in result.stdout and not out.exists()
    assert json.loads((tmp_path / "out.work" / "report.json").read_text())["output"] is None
    data = scoring_recipe(tiny_model, tiny_task, out, gate=gate, output={"path": str(out), "write_on_abstain": True})
    result = run_cli("-q", "run", str(write_recipe(tmp_path, data)))
    assert result.returncode == 0, result.stderr
    written, base = load_file(out / "model.safetensors"), load_file(tiny_model / "model.safetensors")
    assert written.keys() == base.keys() and all(torch.equal(written[k], base[k]) for k in base)
    assert "abstained" in (out / "README.md").read_text()


def test_killed_scoring_resumes_without_rescoring(tmp_path, tiny_model, tiny_task):
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out", population={"size": 120, "sigmas": [0.01], "seed": 1})
    recipe = write_recipe(tmp_path, data)
    db = tmp_path / "out.work" / "scores.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "corpmerge", "-q", "score", str(recipe)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    finished = {}
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    finished = dict(con.execute("SELECT subject, finished FROM units"))
            except sqlite3.OperationalError:
                finished = {}
            if len(finished) >= 5:
                break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 5 <= len(finished) < 121, "the run finished before it could be killed"
    result = run_cli("-q", "score", str(recipe))
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(db) as con:
        after = dict(con.execute("SELECT subject, finished FROM units"))
        rows = con.execute("SELECT COUNT(*), COUNT(DISTINCT subject || ':' || doc_id) FROM scores").fetchone()
    assert len(after) == 121  # 120 entries + the base on fold A
    assert all(after[s] == t for s, t in finished.items())  # finished units were not redone
    assert rows[0] == rows[1] <= 121 * 40  # no example scored twice (racing may stop entries early)
    rewards = yaml.safe_load((tmp_path / "out.work" / "rewards.yaml").read_text())
    assert len(rewards["population"]) == 120


def test_store_refuses_a_different_base_or_folds(tmp_path, tiny_model, tiny_untied, tiny_task):
    store = str(tmp_path / "shared.sqlite")

    def recipe(base, seed=0):
        data = scoring_recipe(base, tiny_task, tmp_path / "out", population={"size": 2, "sigmas": [0.01]})
        data["scoring"]["store"] = store
        data["scoring"]["support"]["split_seed"] = seed
        return write_recipe(tmp_path, data, f"r-{base.parent.name}-{seed}.yaml")

    assert run_cli("-q", "score", str(recipe(tiny_model))).returncode == 0
    other_base = run_cli("-q", "score", str(recipe(tiny_untied)))
    assert other_base.returncode == 2 and "different base model" in other_base.stderr
    assert len(other_base.stderr.strip().splitlines()) == 1
    other_folds = run_cli("-q", "score", str(recipe(tiny_model, seed=1)))
    assert other_folds.returncode == 2 and "different fold assignment" in other_folds.stderr


def test_scored_rewards_feed_a_merge_recipe(tmp_path, tiny_model, tiny_task):
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out")
    assert run_cli("-q", "score", str(write_recipe(tmp_path, data))).returncode == 0
    rewards = yaml.safe_load((tmp_path / "out.work" / "rewards.yaml").read_text())
    merge = given_rewards_recipe(tiny_model, tmp_path / "merged", population=rewards["population"], merge_method="best", parameters={})
    result = run_cli("-q", "merge", str(write_recipe(tmp_path, merge, "merge.yaml")))
    assert result.returncode == 0, result.stderr


def test_run_errors_are_one_line(tmp_path, tiny_model, tiny_task):
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out")
    data["scoring"]["tasks"] = ["no_such_task"]
    result = run_cli("run", str(write_recipe(tmp_path, data)))
    assert result.returncode == 2 and "scoring.tasks" in result.stderr and "Traceback" not in result.stderr
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out")
    data["scoring"]["support"]["split"] = "test"
    result = run_cli("run", str(write_recipe(tmp_path, data)))
    assert result.returncode == 2 and "must not use it" in result.stderr
