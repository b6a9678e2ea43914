"""Issue 36, item 6: the smaller things a new user met."""

import os
import signal
import subprocess
import sys
import time

from conftest import given_rewards_recipe, run_cli, scoring_recipe, write_recipe


def test_sigma_for_sigmas_names_the_unknown_key(tmp_path, tiny_model, tiny_task):
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out", population={"size": 4, "sigma": [0.01]})
    result = run_cli("validate", str(write_recipe(tmp_path, data)))
    assert result.returncode == 2 and "sigma: unknown key" in result.stderr and "did you mean `sigmas`?" in result.stderr


def test_merge_of_a_sampled_population_with_scoring_points_to_run(tmp_path, tiny_model, tiny_task):
    data = given_rewards_recipe(
        tiny_model, tmp_path / "out", population={"size": 4, "sigmas": [0.01]}, scoring={"tasks": ["tiny_mc"], "include_path": str(tiny_task)}
    )
    result = run_cli("merge", str(write_recipe(tmp_path, data)))
    assert result.returncode == 2 and "use `corpmerge run`" in result.stderr and "add a `scoring:` section" not in result.stderr


def test_sigterm_ends_in_one_line_exit_143_and_a_log_line(tmp_path, tiny_model, tiny_task):
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out", population={"size": 200, "sigmas": [0.02], "seed": 3})
    log = tmp_path / "out.work" / "corpmerge.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "corpmerge", "score", str(write_recipe(tmp_path, data))], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    while proc.poll() is None and not (log.is_file() and "scoring population" in log.read_text()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-2000:]
    assert "terminated (SIGTERM): finished work is kept" in stderr and "Traceback" not in stderr
    assert "terminated by SIGTERM" in log.read_text()


def test_methods_text_is_whole():
    result = run_cli("methods", env={"COLUMNS": "400"})
    assert "singular vectors of the weighted cloud [√wᵢ·vᵢ]." in result.stdout


def test_a_quick_write_logs_two_progress_lines_not_eleven(tmp_path, tiny_model):
    result = run_cli("merge", str(write_recipe(tmp_path, given_rewards_recipe(tiny_model, tmp_path / "out"))))
    assert result.returncode == 0, result.stderr
    assert "writing weights" in result.stderr and os.isatty(2) is not None
    assert sum("writing weights:" in line for line in result.stderr.splitlines()) == 2
