"""report.png, the benchmark summary figure, `corpmerge report`'s re-rendering and the card's picture link."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, scoring_recipe, write_recipe
from PIL import Image
from rich.console import Console

from corpmerge.errors import CorpmergeError
from corpmerge.output.model_card import render_abstain_card, render_model_card
from corpmerge.output.report_schema import SCHEMA_VERSION, RunReport
from corpmerge.report.plots import render_report_dir, report_figure, summary_figure, write_report_png, write_summary_png
from corpmerge.report.view import render_report, report_view

MAX_PNG = 200 * 1024


def paired(n: int, fixes: int, regressions: int) -> dict:
    """Fold statistics as the gate reports them (z = 1.645, λ_reg = 2)."""
    d = np.array([1.0] * fixes + [-1.0] * regressions + [0.0] * (n - fixes - regressions))
    sd = float(d.std(ddof=1))
    return {
        "n": n,
        "fixes": fixes,
        "regressions": regressions,
        "constructive_score": (fixes - 2 * regressions) / n,
        "mean_diff": float(d.mean()),
        "sd": sd,
        "lcb": float(d.mean()) - 1.645 * sd / np.sqrt(n),
        "base_accuracy": 0.5,
        "accuracy": 0.5 + float(d.mean()),
    }


def minimal_report(**parts) -> dict:
    """The least a valid report.json holds: an abstained run without rewards, candidates or an evaluation."""
    nan = float("nan")
    return {
        "base_model": "org/base",
        "method": "corp",
        "folds": {},
        "base": {},
        "candidates_tried": 0,
        "evaluations": 0,
        "population": {"size": 0, "sigmas": {}, "reward_min": nan, "reward_mean": nan, "reward_max": nan},
        "gate": {"enabled": True, "accepted": False, "reason": "no candidate passed"},
    } | parts


def accepted_report(candidates: int = 4, entries: int = 500) -> dict:
    """A report.json as a gated, accepted run with stage 2, racing and a held-out table writes it (without the version)."""
    rng = np.random.default_rng(0)
    rewards = [float(r) for r in np.round(rng.normal(0.55, 0.05, entries) * 60) / 60]
    grid = [{"quantile": q, "beta": b, "alpha": 1.0} for q in (0.9, 0.95, 0.99) for b in (1.0, 10.0, 30.0)][:candidates]
    grid += [{"quantile": 0.5, "beta": float(b), "alpha": 1.0} for b in range(candidates - len(grid))]
    return {
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "method": "corp",
        "population": {
            "size": entries,
            "sigmas": {"0.001": entries},
            "reward_min": min(rewards),
            "reward_mean": float(np.mean(rewards)),
            "reward_max": max(rewards),
            "rewards": rewards,
            "elite_threshold": 0.6333,
        },
        "folds": {"A": 60, "B": 120, "C": 60},
        "base": {"A": 0.55, "B": 0.52, "C": 0.5},
        "candidates_tried": candidates,
        "gate": {
            "enabled": True,
            "accepted": True,
            "reason": "accepted",
            "params": grid[1],
            "multiplier": 1.0,
            "fixes": 14,
            "regressions": 6,
            "constructive_score": 0.066,
            "lcb": 0.01,
            "probe_lcb": 0.02,
            "candidates_probed": 2,
        },
        "candidates": [{"params": p, "validate": paired(120, 9 + i % 6, 4 + i % 5), "stopped": i == 2} for i, p in enumerate(grid)],
        "chosen": {"A": 0.6, "B": 0.59, "C": 0.55},
        "stage2": {
            "rounds": [
                {
                    "round": 1,
                    "local_size": 10,
                    "accepted": True,
                    "multiplier": 1.0,
                    "reason": "accepted",
                    "local_reward_max": 0.7,
                    "local_reward_mean": 0.6,
                    "validate": paired(60, 7, 3),
                }
            ],
            "accepted": 1,
        },
        "evaluation": {
            "split": "test",
            "tasks": ["corpmerge_arith"],
            "n": 300,
            "recovered_fraction": 0.57,
            "rows": {
                "base": {"accuracy": 0.52, "n": 300},
                "best_entry": {"accuracy": 0.53, "n": 300, "diff": 0.01, "ci_low": -0.03, "ci_high": 0.05},
                "merged": {"accuracy": 0.56, "n": 300, "diff": 0.04, "ci_low": 0.005, "ci_high": 0.075},
                "randopt_top50": {"accuracy": 0.59, "n": 300, "diff": 0.07, "ci_low": 0.03, "ci_high": 0.11},
            },
        },
        "evaluations": 900,
        "output": "/somewhere/out",
        "timings_s": {"load": 3.2, "score": 100.0},
    }


def texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def console_text(renderable) -> str:
    console = Console(record=True, width=140, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def assert_small_png(path: Path, title: str) -> None:
    assert path.is_file() and 0 < path.stat().st_size <= MAX_PNG, path.stat().st_size
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width == 800
        assert image.text["Title"] == title


def test_report_figure_has_the_three_labelled_panels(tmp_path):
    report = RunReport.of_run(accepted_report())
    rewards_ax, gate_ax, held_ax = report_figure(report).axes
    assert rewards_ax.get_title(loc="left") == "population: fold-A reward of each entry (500 entries)"
    assert rewards_ax.get_xlabel() == "reward on fold A (construct)" and rewards_ax.get_ylabel() == "entries"
    marks = legend(rewards_ax)
    assert marks[0] == "base accuracy 0.550" and marks[1].startswith("elite threshold 0.633, ")
    assert gate_ax.get_title(loc="left").startswith("gate (fold B): fixes and regressions")
    ticks = [t.get_text() for t in gate_ax.get_xticklabels()]
    assert ticks[1] == "#2\nbeta=10\nquantile=0.9" and ticks[-1] == "stage 2\nround 1"  # only the varying parameters
    assert texts(gate_ax).count("accepted") == 2  # the stage-1 candidate and the stage-2 round
    assert "stopped early (racing)" in legend(gate_ax)
    assert "2 probed on fold C" in gate_ax.get_xlabel()
    assert held_ax.get_title(loc="left").startswith("held-out corpmerge_arith (test): accuracy Δ vs base, paired 95% interval")
    models = [t.get_text().split("\n")[0] for t in held_ax.get_yticklabels()]
    assert models == ["base", "RandOpt K=1 (best entry)", "RandOpt top-50 vote (50 passes)", "corp (gated)"]  # top to bottom
    assert held_ax.get_xlabel() == "Δ accuracy vs base (percentage points)"
    assert_small_png(write_report_png(report, tmp_path / "report.png"), "corpmerge run report")


def test_a_large_grid_stays_small_and_thins_its_ticks(tmp_path):
    report = accepted_report(candidates=40, entries=5000)
    report["population"]["rewards"] = [float(r) for r in np.random.default_rng(1).normal(0.5, 0.1, 5000)]
    report = RunReport.of_run(report)
    _, gate_ax, _ = report_figure(report).axes
    ticks = [t.get_text() for t in gate_ax.get_xticklabels()]
    assert len(ticks) == 41 and ticks[0] == "#1" and "" in ticks and "#2" in ticks  # #2 is the accepted one
    assert_small_png(write_report_png(report, tmp_path / "big.png"), "corpmerge run report")


@pytest.mark.parametrize(
    "report",
    [
        minimal_report(),
        minimal_report(
            population={"size": 2, "sigmas": {"0.01": 2}, "reward_min": float("nan"), "reward_mean": 0.1, "reward_max": float("inf")},
            base={"A": float("nan")},
            gate={"enabled": False, "accepted": True, "reason": "gate disabled", "params": {"q": 1}},
        ),
    ],
)
def test_sparse_reports_draw_panels_that_say_so(tmp_path, report):
    report = RunReport.of_run(report)
    rewards_ax, gate_ax, held_ax = report_figure(report).axes
    assert texts(rewards_ax) == ["no population rewards in report.json"]
    assert texts(gate_ax)[0] in ("no validated candidates in report.json", "gate disabled: no candidate was validated")
    assert texts(held_ax) == ["no held-out evaluation in this run (the recipe has no `evaluate:`)"]
    assert_small_png(write_report_png(report, tmp_path / "odd.png"), "corpmerge run report")
    assert "evaluations" in console_text(report_view(report))


def test_only_summary_statistics_draw_a_range(tmp_path):
    report = RunReport.of_run(
        minimal_report(
            population={"size": 3, "sigmas": {"0.01": 3}, "reward_min": 0.1, "reward_mean": 0.2, "reward_max": 0.4},
            base={"A": 0.25},
            gate={"enabled": True, "accepted": False, "reason": "no candidate [bold]passed"},
            candidates_tried=1,
            candidates=[{"params": {"beta": 1}, "validate": paired(20, 0, 0)}],
        )
    )
    rewards_ax, gate_ax, _ = report_figure(report).axes
    assert legend(rewards_ax) == ["range 0.100–0.400", "mean 0.200", "base accuracy 0.250"]
    assert "every candidate matched the base" in texts(gate_ax)[-1]
    shown = console_text(report_view(report))
    assert "ABSTAINED: no candidate [bold]passed." in shown  # report text is not read as markup


def test_report_json_keeps_its_shape_and_names_its_schema(tmp_path):
    raw = accepted_report() | {"output": None}
    path = RunReport.of_run(raw).write(tmp_path / "report.json")
    written = json.loads(path.read_text())
    assert list(written)[0] == "schema_version" and written["schema_version"] == SCHEMA_VERSION
    assert {k: v for k, v in written.items() if k != "schema_version"} == json.loads(json.dumps(raw))  # nothing added, nothing lost


def test_report_command_renders_table_and_picture_from_the_work_folder(tmp_path):
    work = tmp_path / "out.work"
    work.mkdir()
    report = accepted_report() | {"output": None, "gate": {"enabled": True, "accepted": False, "reason": "nothing passed"}}
    RunReport.of_run(report).write(work / "report.json")
    for where in (tmp_path / "out", work, work / "report.json"):
        table, picture = render_report_dir(where)
        assert picture == work / "report.png"
        assert_small_png(picture, "corpmerge run report")
        shown = console_text(table)
        assert "ABSTAINED: nothing passed" in shown and f"report → {work / 'report.json'}" in shown
        assert shown.index("RandOpt K=1") < shown.index("RandOpt top-50") < shown.index("corp (gated)")


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "report: no report.json in "),
        ("{not json", "is not a readable JSON report"),
        ("[1, 2]", "does not hold a JSON object"),
        (json.dumps(accepted_report()), "has no schema_version: an older corpmerge wrote it, or it is not a corpmerge report"),
        (json.dumps(accepted_report() | {"schema_version": 99}), "has schema_version 99, this corpmerge reads version 1"),
        (json.dumps({"schema_version": 1, "base_model": "x"}), "does not match the report schema (method: Field required)"),
        (json.dumps(accepted_report() | {"schema_version": 1, "gate": {"enabled": "maybe"}}), "does not match the report schema (gate.enabled:"),
    ],
)
def test_report_command_errors_are_one_line(tmp_path, content, message):
    if content is not None:
        (tmp_path / "report.json").write_text(content)
    with pytest.raises(CorpmergeError) as error:
        render_report_dir(tmp_path)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "report.png").exists()


def test_corpmerge_report_refuses_an_old_report_in_one_line(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps(accepted_report()))  # as corpmerge wrote it before the schema
    result = run_cli("report", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "has no schema_version" in result.stderr, result.stderr


def summary_rows(tasks: int, methods: int) -> list[dict]:
    rows = [
        {"task": f"task{t}", "method": f"method_{m}", "delta": 0.01 * m, "lo": 0.01 * m - 0.04, "hi": 0.01 * m + 0.04, "abstained": False}
        for t in range(tasks)
        for m in range(methods)
    ]
    rows[0] = {"task": "task0", "method": "method_0", "delta": None, "lo": None, "hi": None, "abstained": True}
    rows[1] = {"task": "task0", "method": "method_1", "delta": None, "lo": None, "hi": None, "abstained": False}
    return rows


def test_summary_figure_has_one_panel_per_task(tmp_path):
    fig = summary_figure(summary_rows(3, 5))
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title(loc="left") for ax in panels] == ["task0", "task1", "task2"]
    assert [t.get_text() for t in panels[0].get_yticklabels()] == [f"method_{m}" for m in range(5)]  # top to bottom
    assert texts(panels[0]) == ["abstained (= base)", "no data"]
    assert all(ax.get_xlabel() == "Δ vs base (points)" for ax in panels)
    assert fig.get_suptitle() == "fidelity benchmark: held-out accuracy Δ vs base, paired 95% CI"
    assert_small_png(write_summary_png(summary_rows(9, 12), tmp_path / "summary.png"), "corpmerge fidelity benchmark summary")
    assert texts(summary_figure([]).axes[0]) == ["no benchmark rows"]


def card_lineage() -> dict:
    return {
        "recipe": {"base_model": "org/base", "dtype": "bfloat16"},
        "merge": {"method": "corp", "parameters": {"beta": 10}, "multiplier": 1.0, "elite_seeds": [1, 2]},
        "population_summary": {"size": 2, "sigmas": {0.01: 2}, "reward_min": 0.1, "reward_mean": 0.2, "reward_max": 0.3},
        "noise": "scheme",
        "lineage": [{"seed": 1, "amplitude": 0.5}],
    }


def test_model_card_shows_the_picture_only_when_given():
    report = RunReport.of_run(accepted_report())
    card = render_model_card(card_lineage(), report, picture="report.png")
    assert "## Run report\n\n![corpmerge run report: " in card and "](report.png)" in card
    assert card.index("](report.png)") < card.index("## Validation gate")
    assert "report.png" not in render_model_card(card_lineage(), report)
    abstained = RunReport.of_run(accepted_report() | {"gate": {"enabled": True, "accepted": False, "reason": "nothing passed"}})
    assert "](report.png)" in render_abstain_card(card_lineage(), abstained, picture="report.png")


def test_a_real_run_report_renders(tmp_path, tiny_model, tiny_task):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, scoring_recipe(tiny_model, tiny_task, out, evaluate={"limit": 12, "ensemble_k": [1, 3]}))
    result = run_cli("-q", "run", str(recipe))
    assert result.returncode == 0, result.stderr
    assert "A construct" in result.stdout and ("gate passed" in result.stdout or "ABSTAINED" in result.stdout)
    table, picture = render_report_dir(out)
    assert picture.parent in (out, tmp_path / "out.work")
    assert_small_png(picture, "corpmerge run report")
    report = RunReport.model_validate_json((picture.parent / "report.json").read_text())
    rewards_ax, gate_ax, held_ax = report_figure(report).axes
    assert rewards_ax.get_title(loc="left") == "population: fold-A reward of each entry (6 entries)"
    assert [t.get_text().split("\n")[0] for t in gate_ax.get_xticklabels()] == ["#1", "#2"]
    assert held_ax.get_title(loc="left").startswith("held-out tiny_mc (test)")
    shown = console_text(table)
    assert "held-out: tiny_mc (test)" in shown and "RandOpt top-3 vote" in shown
    printed = Console(file=io.StringIO(), width=140)
    render_report(printed, report, "x")
    assert "report → x" in printed.file.getvalue()
