"""What a task declares in its YAML: code execution (`unsafe_code`), the vote's answer extractor, its dataset."""

import subprocess
import sys

import pytest
from conftest import scoring_recipe, write_recipe
from transformers import AutoModelForCausalLM, AutoTokenizer

from corpmerge.errors import CorpmergeError
from corpmerge.recipe import ScoringSpec
from corpmerge.scoring.lmeval import TaskSuite, code_tasks, make_lm
from corpmerge.tasks import tasks_dir

NOT_ROOT = "import os, sys; os.geteuid = lambda: 1000; from corpmerge.cli import main; sys.exit(main())"


def write_gen_task(folder, name: str, extra: str = "", metadata: str = "") -> None:
    """A 3-example generation task (answer after 'Answer:'), with optional top-level keys and metadata."""
    data = folder / f"{name}.jsonl"
    data.write_text("".join(f'{{"question": "{i}+1=", "answer": "{i + 1}"}}\n' for i in range(3)))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\n{extra}dataset_path: json\ndataset_kwargs:\n  data_files:\n    train: {data}\n    test: {data}\n"
        "output_type: generate_until\ntraining_split: train\ntest_split: test\n"
        'doc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\n'
        "generation_kwargs: {until: ['\\n'], do_sample: false, max_gen_toks: 3}\n"
        "metric_list:\n  - {metric: exact_match, aggregation: mean, higher_is_better: true}\n"
        f"metadata:\n  version: 1.0\n{metadata}"
    )


def test_code_tasks_are_read_from_the_yaml_groups_included(tmp_path):
    write_gen_task(tmp_path, "user_code", extra="unsafe_code: true\n")
    write_gen_task(tmp_path, "user_plain")
    (tmp_path / "user_group.yaml").write_text("group: user_group\ntask: [user_plain, user_code]\n")
    spec = ScoringSpec(tasks=["user_group"], include_path=str(tmp_path))
    assert code_tasks(spec, ["user_group"]) == ["user_code"]
    assert code_tasks(spec, ["user_plain", "corpmerge_arith"]) == []
    assert code_tasks(ScoringSpec(tasks=["corpmerge_mbpp"]), ["corpmerge_mbpp", "corpmerge_gsm8k"]) == ["corpmerge_mbpp"]


def test_a_user_code_task_is_refused_up_front_without_isolation(tmp_path, tiny_model, tiny_task):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    write_gen_task(tasks, "user_code", extra="unsafe_code: true\n")
    data = scoring_recipe(tiny_model, tasks, tmp_path / "out")
    data["scoring"]["tasks"] = ["user_code"]
    recipe = write_recipe(tmp_path, data)
    # not root: the sandbox cannot make namespaces (as on a developer's machine)
    result = subprocess.run([sys.executable, "-c", NOT_ROOT, "run", str(recipe)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    line = " ".join(result.stderr.split())
    assert "scoring.tasks: user_code runs model-written code (unsafe_code: true" in line and "needs root" in line
    assert "scoring.allow_unsandboxed_code: true" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.work").exists()  # refused before anything ran
    # a held-out code task is refused too, naming its field
    data["scoring"]["tasks"], data["evaluate"] = ["tiny_mc"], {"tasks": ["corpmerge_mbpp"]}
    data["scoring"]["include_path"] = str(tiny_task)
    result = subprocess.run([sys.executable, "-c", NOT_ROOT, "run", str(write_recipe(tmp_path, data))], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "evaluate.tasks: corpmerge_mbpp runs model-written code" in " ".join(result.stderr.split())


def test_the_vote_uses_the_extractor_the_task_declares(tmp_path, tiny_model):
    (tmp_path / "user_answers.py").write_text("def shout(text):\n    return 'X' + text.strip()\n")
    write_gen_task(tmp_path, "user_fn", metadata="  answer: !function user_answers.shout\n")
    write_gen_task(tmp_path, "user_named", metadata="  answer: first_number\n  dataset: org/data\n")
    write_gen_task(tmp_path, "user_bad", metadata="  answer: telepathy\n")
    spec = ScoringSpec(tasks=["user_fn", "user_named"], include_path=str(tmp_path))
    suite = TaskSuite(spec, split="test")
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    scores = suite.evaluate(make_lm(model, AutoTokenizer.from_pretrained(tiny_model), batch_size=4), {"user_fn": [0, 1, 2]})
    assert all(s.prediction.startswith("X") for s in scores.values())
    assert suite.answers["user_named"]("it is 12 then 3") == "12"
    assert suite.datasets == {"user_named": "org/data"}
    first = TaskSuite(spec, split="test").fingerprint()
    assert first == suite.fingerprint()  # a declared function is named, not its address, in the store identity
    with pytest.raises(CorpmergeError, match=r"task 'user_bad': metadata.answer 'telepathy' is not an answer extractor; name one of first_number"):
        TaskSuite(ScoringSpec(tasks=["user_bad"], include_path=str(tmp_path)), split="test")


def test_the_store_identity_of_a_task_does_not_depend_on_where_its_yaml_lies(tmp_path):
    # corpmerge installed at another path (a second checkout, a new venv) must reuse a store: same task, same folds
    fingerprints = []
    for where in ("one", "two/deeper"):
        folder = tmp_path / where
        folder.mkdir(parents=True)
        (folder / "arith_data.py").write_text((tasks_dir() / "arith" / "arith_data.py").read_text())
        text = (tasks_dir() / "arith" / "corpmerge_arith.yaml").read_text().replace("task: corpmerge_arith", "task: moved_arith")
        (folder / "moved_arith.yaml").write_text(text)
        fingerprints.append(TaskSuite(ScoringSpec(tasks=["moved_arith"], include_path=str(folder)), split="test").fingerprint())
    assert fingerprints[0] == fingerprints[1]
    (tmp_path / "one" / "moved_arith.yaml").write_text(text.replace("  cluster_by: question", "  cluster_by: answer"))  # reporting only
    assert TaskSuite(ScoringSpec(tasks=["moved_arith"], include_path=str(tmp_path / "one")), split="test").fingerprint() == fingerprints[0]
    (tmp_path / "one" / "moved_arith.yaml").write_text(text.replace("Answer:", "A:"))  # what is scored changed: a new identity
    assert TaskSuite(ScoringSpec(tasks=["moved_arith"], include_path=str(tmp_path / "one")), split="test").fingerprint() != fingerprints[0]


def test_shipped_generation_tasks_declare_their_answers():
    spec = ScoringSpec(tasks=["corpmerge_countdown", "corpmerge_arith_gen"])
    suite = TaskSuite(spec, split="test")
    assert suite.answers["corpmerge_countdown"]("<answer>1 + 2</answer>") == "1+2"
    assert suite.answers["corpmerge_arith_gen"](" 12 apples") == "12"
    assert (tasks_dir() / "mbpp" / "corpmerge_mbpp.yaml").read_text().count("unsafe_code: true") == 1
