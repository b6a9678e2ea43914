"""`corpmerge run` at `population.rank: r` with `scoring.backend: vllm`: entries in LoRA batches, what ships through its weights.

One run of a mirrored rank-4 population (3 pairs) on the tiny Llama in float32, max_loras 4: the entries' fold-A units go
to the engine in batches (several LoRA adapters in one engine call); the base and the merge (an ``update:`` subject, as
every gate candidate) go through ``load`` of round(θ₀ + Δ), so the written folder scores those bits (``output.verify``).
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

import vllm
from conftest import scoring_recipe
from vllm_tiny import ENGINE_ARGS, vllm_model, vllm_tasks  # noqa: F401 (fixtures)

from corpmerge.pipeline import run_recipe
from corpmerge.recipe import parse_recipe
from corpmerge.scoring.evaluator import LocalEvaluator
from corpmerge.scoring.subjects import entry_subject, is_entry

RANK, MAX_LORAS = 4, 4
LORA_TOLERANCE = 1e-4  # |Δ log-likelihood| per example, float32: W·x + B·(A·x) against round(W + B·A)·x (test_vllm_lora)


def lora_names(kwargs: dict) -> set[str]:
    requests = kwargs.get("lora_request")
    return {r.lora_name for r in (requests if isinstance(requests, list) else [requests]) if r is not None}


@pytest.fixture(scope="module")
def rank_run(tmp_path_factory, vllm_model, vllm_tasks) -> tuple[dict, list, list, dict, dict]:
    """(recipe, [(through LoRA, subjects)] per evaluated group, [LoRA names] per engine call, report, references): the first
    batch's entries are scored again in the run's engine, each alone through LoRA and through its full weights."""
    folder = tmp_path_factory.mktemp("vllm-rank-run")
    data = scoring_recipe(
        vllm_model,
        vllm_tasks,
        folder / "out",
        population={"size": 6, "sigmas": [0.05, 0.1], "seed": 1, "antithetic": True, "rank": RANK},
        merge_method="reward_avg",
        parameters={"quantile": 0.5, "beta": 10, "alpha": 1},
        gate={"enabled": False},  # the merge is written; fold B scores it as the gate would (update subject), then the folder
    )
    data["scoring"].update(backend="vllm", model_args={**ENGINE_ARGS, "max_loras": MAX_LORAS})
    groups: list[tuple[bool, list[str]]] = []
    calls: list[set[str]] = []
    references: dict[str, tuple] = {}  # subject → (batch's scores, alone through LoRA, through load of round(θ₀ + σ·ε_r))
    evaluate, generate = LocalEvaluator._evaluate, vllm.LLM.generate

    def spied(self, lora, group, then):
        groups.append((lora, [unit.subject for unit in group]))
        scores = evaluate(self, lora, group, then)
        if lora and not references:
            for unit, batched in zip(group, scores):
                (alone,) = self.scorer.evaluate_many([unit.update], unit.docs)
                references[unit.subject] = (batched, alone, self.scorer.evaluate(unit.update, unit.docs))
        return scores

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LocalEvaluator, "_evaluate", spied)
        patch.setattr(vllm.LLM, "generate", lambda self, *a, **kw: calls.append(lora_names(kw)) or generate(self, *a, **kw))
        report = run_recipe(parse_recipe(data))
    return data, groups, calls, report, references


def test_entries_are_scored_in_lora_batches_and_everything_else_through_the_weights(rank_run):
    data, groups, calls, _, _ = rank_run
    batched = [subjects for lora, subjects in groups if lora]
    alone = [subjects for lora, subjects in groups if not lora]
    assert all(is_entry(s) for subjects in batched for s in subjects) and max(map(len, batched)) == MAX_LORAS
    assert not any(is_entry(s) for subjects in alone for s in subjects)  # the base and every candidate: load of the weights
    assert any(s.startswith("update:") for subjects in alone for s in subjects)  # the merge, scored as the gate scores one
    assert {s for subjects in batched for s in subjects} == set(map(entry_subject, parse_recipe(data).entries()))
    assert max(map(len, calls)) == MAX_LORAS and all(len(names) <= MAX_LORAS for names in calls)  # several adapters per engine call


def test_each_entry_scores_in_its_batch_as_alone_and_as_its_full_weights(rank_run):
    references = rank_run[4]
    assert len(references) == MAX_LORAS
    for batched, alone, full in references.values():
        assert batched.keys() == alone.keys() == full.keys()
        for key, score in batched.items():
            assert alone[key].value == pytest.approx(score.value, abs=1e-5) and alone[key].correct == score.correct
            assert full[key].value == pytest.approx(score.value, abs=LORA_TOLERANCE) and full[key].correct == score.correct


def test_the_merge_was_scored_through_the_bits_that_were_written(rank_run):
    report = rank_run[3]
    assert report["shipped_check"]["identical"] and report["shipped_check"]["differing"] == 0  # output.verify: the folder, a fresh engine
    assert report["population"]["rank"] == RANK
