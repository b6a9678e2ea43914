"""Issue 36, item 3: the card's lm-eval command works when pasted by someone who has only the card."""

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import given_rewards_recipe, run_cli, write_recipe

from corpmerge.output.model_card import render_model_card


def card_commands(card: str, folder: Path) -> list[str]:
    """The shell lines of the card's evaluation block, pointed at ``folder``."""
    block = re.search(r"Evaluate with lm-eval:\n\n```bash\n(.*?)```", card, re.S)
    assert block, card
    return [line.replace("<this folder or repo>", str(folder)) for line in block.group(1).splitlines()]


def paste(line: str) -> subprocess.CompletedProcess:
    """Run a pasted lm_eval line in bash (corpmerge and lm_eval on PATH, as after `pip install corpmerge`), briefly."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(["bash", "-c", f"{line} --limit 4 --batch_size 4"], capture_output=True, text=True, env=env, timeout=600)


def test_the_printed_command_runs_for_the_task_the_model_was_tuned_on(tmp_path, tiny_model, tiny_task):
    out = tmp_path / "out"
    data = given_rewards_recipe(tiny_model, out, scoring={"tasks": ["tiny_mc"], "include_path": str(tiny_task), "support": {"limit": 40}, "batch_size": 8})
    result = run_cli("-q", "run", str(write_recipe(tmp_path, data)))
    assert result.returncode == 0, result.stderr
    card = (out / "README.md").read_text()
    assert "corpmerge rebuild corpmerge.yaml" in card and "copy that folder" in card
    (line,) = [c for c in card_commands(card, out) if c.startswith("lm_eval")]
    assert "--tasks tiny_mc" in line and f"--include_path {tiny_task}" in line
    ran = paste(line)
    assert ran.returncode == 0 and "tiny_mc" in ran.stdout, ran.stderr[-2000:]

    # a model tuned on corpmerge's own task: the card says to install corpmerge and asks it for the include path
    lineage = yaml.safe_load((out / "corpmerge.yaml").read_text())
    lineage["recipe"]["scoring"] = {"tasks": ["corpmerge_arith"]}
    commands = card_commands(render_model_card(lineage), out)
    assert commands[0].startswith("pip install corpmerge")
    assert commands[1].endswith('--include_path "$(corpmerge tasks --path)" --tasks corpmerge_arith')
    ran = paste(commands[1])
    assert ran.returncode == 0 and "corpmerge_arith" in ran.stdout, ran.stderr[-2000:]
