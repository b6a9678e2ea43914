"""Subject identity: every scored model is keyed by what defines its weights, so a shared store never mixes models."""

import hashlib
import json
import sqlite3

import numpy as np
from conftest import given_rewards_recipe, run_cli, write_recipe

from corpmerge.amplitudes import Amplitudes
from corpmerge.methods import MergeResult
from corpmerge.methods.ties import TiesDelta
from corpmerge.population import Entry
from corpmerge.scoring.subjects import entry_subject, update_subject


def ties_result(seeds, multiplier=1.0) -> MergeResult:
    vectors = np.diag([0.01, 0.02])
    delta = TiesDelta(np.array(seeds, dtype=np.int64), vectors, 0.5)
    return MergeResult("ties", {"density": 0.5}, np.arange(2), np.full(2, 0.5), tensor_delta=delta, multiplier=multiplier)


def test_subjects_name_content_and_keep_the_store_formats():
    assert entry_subject(Entry(101, 0.01, 0.4)) == "entry:101:0.01"
    amps = Amplitudes(np.array([3, 5, 9]), np.array([0.5, 0.0, -0.25]))
    old = (
        "update:" + hashlib.blake2b(repr((np.array([3, 9]).astype(np.int64).tobytes(), np.array([0.5, -0.25]).tobytes())).encode(), digest_size=10).hexdigest()
    )
    assert update_subject(amps) == old  # amplitude subjects of existing stores stay valid
    result = MergeResult("corp", {}, np.arange(2), np.full(2, 0.5), amplitudes=amps)
    assert update_subject(result) == old and update_subject(result.scaled(2.0)) == update_subject(amps.scaled(2.0))
    # a tensor-by-tensor update: same elite indices, other seeds → another subject; same content → same subject
    assert update_subject(ties_result([1, 2])) != update_subject(ties_result([7, 8]))
    assert update_subject(ties_result([1, 2])) == update_subject(ties_result([1, 2]))
    assert update_subject(ties_result([1, 2], 2.0)) == update_subject(ties_result([1, 2]).scaled(2.0)) != update_subject(ties_result([1, 2]))


def fold_subjects(store) -> set[str]:
    with sqlite3.connect(store) as db:
        return {row[0] for row in db.execute("SELECT subject FROM units WHERE fold='B'")}


def test_an_edited_population_is_rescored_not_read_back_from_the_store(tmp_path, tiny_model, tiny_task):
    store = tmp_path / "scores.sqlite"
    data = given_rewards_recipe(
        tiny_model,
        tmp_path / "out",
        merge_method="ties",
        parameters={"quantile": 0.5, "density": 0.5, "alpha": [1, 2]},
        gate={"enabled": True, "z": 0.0, "regression_penalty": 1.0},
        scoring={"tasks": ["tiny_mc"], "include_path": str(tiny_task), "support": {"limit": 80}, "batch_size": 8, "store": str(store)},
    )
    first = run_cli("-q", "run", str(write_recipe(tmp_path, data)))
    assert first.returncode == 0, first.stderr
    before = fold_subjects(store)
    assert len(before) == 3  # the base and the two candidates (α = 1, 2)
    # same rewards in the same order (so the same elite indices), other seeds: other models
    data["population"] = [{**e, "seed": e["seed"] + 1000} for e in data["population"]]
    second = run_cli("-q", "run", str(write_recipe(tmp_path, data)), "--overwrite")
    assert second.returncode == 0, second.stderr
    after = fold_subjects(store)
    assert len(after - before) == 2 and before <= after  # both candidates scored anew; the base read back
    work = tmp_path / "out" if (tmp_path / "out" / "report.json").is_file() else tmp_path / "out.work"
    report = json.loads((work / "report.json").read_text())
    assert report["evaluations"] >= 2
