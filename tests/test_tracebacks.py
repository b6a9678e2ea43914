"""An unexpected exception stays one line for the user; its full traceback goes to corpmerge.log (and to stderr with -v)."""

from conftest import run_cli, scoring_recipe, write_recipe
from tiny import write_mc_task


def broken_task(folder, where: str):
    """tiny_mc whose dataset builder (``where="load"``) or reward (``where="score"``) raises a ZeroDivisionError."""
    write_mc_task(folder)
    (folder / "tiny_utils.py").write_text(
        "def build_dataset(**kwargs):\n    return 1 / 0\n\n"
        "def process_results(doc, results):\n    return {'acc': halve(len(results))}\n\n"
        "def halve(n):\n    return n / 0\n"
    )
    yaml_path = folder / "tiny_mc.yaml"
    text = yaml_path.read_text()
    if where == "load":
        text = text.replace("dataset_path: json\n", "custom_dataset: !function tiny_utils.build_dataset\ndataset_path: json\n")
    else:
        text += "process_results: !function tiny_utils.process_results\n"
    yaml_path.write_text(text)
    return folder


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return " ".join(stderr.split())


def test_a_broken_task_file_is_one_line_and_its_traceback_is_in_the_log(tmp_path, tiny_model):
    tasks = broken_task(tmp_path / "tasks", "load")
    recipe = write_recipe(tmp_path, scoring_recipe(tiny_model, tasks, tmp_path / "out"))
    result = run_cli("-q", "score", str(recipe))
    assert result.returncode == 2
    assert "scoring.tasks: cannot load tiny_mc: division by zero" in one_line(result.stderr)
    log = (tmp_path / "out.work" / "corpmerge.log").read_text()
    assert "ERROR traceback (loading tasks tiny_mc):\nTraceback (most recent call last):" in log
    assert "in build_dataset" in log and "ZeroDivisionError: division by zero" in log
    verbose = run_cli("-v", "score", str(recipe))
    assert verbose.returncode == 2 and "in build_dataset" in verbose.stderr  # -v shows it on the terminal too


def test_an_unexpected_error_is_one_line_exit_1_and_its_traceback_is_in_the_log(tmp_path, tiny_model):
    tasks = broken_task(tmp_path / "tasks", "score")
    recipe = write_recipe(tmp_path, scoring_recipe(tiny_model, tasks, tmp_path / "out"))
    result = run_cli("-q", "score", str(recipe))
    log_path = tmp_path / "out.work" / "corpmerge.log"
    assert result.returncode == 1
    assert f"error: unexpected ZeroDivisionError: division by zero (traceback in {log_path})" in one_line(result.stderr)
    log = log_path.read_text()
    assert "ERROR traceback (corpmerge score):\nTraceback (most recent call last):" in log
    assert "in halve" in log and "in process_results" in log  # down to the line that failed
