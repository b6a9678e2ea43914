"""Few-shot prompts are a function of the example alone: the same document gets the same few-shot examples in every
evaluation, whatever else the evaluation holds and however many came before (lm-eval's sampler advances one generator
per task, so a paired difference between two evaluations measured their prompts too)."""

from __future__ import annotations

from corpmerge.recipe import ScoringSpec
from corpmerge.scoring.lmeval import TaskSuite


def test_an_examples_few_shot_prompt_does_not_depend_on_the_evaluation():
    suite = TaskSuite(ScoringSpec(tasks=["corpmerge_arith_gen"], num_fewshot=2), split="test")
    task = suite.tasks["corpmerge_arith_gen"]
    docs = [task.eval_docs[i] for i in range(6)]
    first = [task.fewshot_context(doc, 2) for doc in docs]
    again = [task.fewshot_context(doc, 2) for doc in reversed(docs)][::-1]  # another order, after six draws
    alone = task.fewshot_context(docs[3], 2)
    assert first == again and alone == first[3]
    assert len(set(first)) == len(docs)  # still drawn per document, not one fixed context
    other = TaskSuite(ScoringSpec(tasks=["corpmerge_arith_gen"], num_fewshot=2), split="test").tasks["corpmerge_arith_gen"]
    assert other.fewshot_context(docs[0], 2) == first[0]  # another process or session: the same prompt
