"""The model card (README.md) of a merged model, with the front matter the Hub reads.

Front matter (written by ``huggingface_hub.ModelCardData``): ``base_model`` (a Hub id: the one the
base is or was converted from, else the one the base's own card names; omitted when unknown),
``base_model_relation: merge``, ``library_name: transformers``, ``tags``, the base card's
``license``, the Hub ``datasets`` the tasks declare, and ``model-index`` with the held-out
accuracy of the folder's model per task (the base's beside it in the card's body).
"""

from __future__ import annotations

import shlex
from typing import Any
from urllib.parse import quote

from huggingface_hub import EvalResult, ModelCardData

from corpmerge import __version__
from corpmerge.output.base_pin import front_matter_base
from corpmerge.output.report_schema import HeldOut, RunReport, ShippedCheck

TAGS = ["merge", "corpmerge", "corp"]
CORPMERGE_TASK_PREFIX = "corpmerge_"  # the tasks shipped in corpmerge.tasks (`corpmerge tasks`)
CITATIONS = """## Citation

CoRP, the method:

```bibtex
@article{zhang2026corp,
  title   = {Consolidating Rewarded Perturbations for LLM Post-Training},
  author  = {Zhang, Zheyu and Yang, Shuo and Kasneci, Gjergji},
  journal = {arXiv preprint arXiv:2605.31494},
  year    = {2026}
}
```

RandOpt, the rewarded population and the top-K vote it is compared with:

```bibtex
@article{gan2026thickets,
  title   = {Neural Thickets: Diverse Task Experts Are Dense Around Pretrained Weights},
  author  = {Gan, Yulu and Isola, Phillip},
  journal = {arXiv preprint arXiv:2603.12228},
  year    = {2026}
}
```
"""


def _front_matter(lineage: dict[str, Any], report: RunReport | None, row: str, merged: bool) -> str:
    """YAML front matter; ``row`` is the held-out row of the folder's weights (merged, or base on abstention)."""
    pin = lineage.get("base") or {}
    results = _eval_results(report, row)
    data = ModelCardData(
        base_model=front_matter_base(pin),
        base_model_relation="merge" if merged else None,
        library_name="transformers",
        tags=TAGS,
        license=pin.get("license"),
        datasets=sorted(set(report.datasets.values())) if report and report.datasets else None,
        model_name=_title_name(lineage) if results else None,
        eval_results=results or None,
    )
    return "---\n" + data.to_yaml() + "\n---\n"


def _title_name(lineage: dict[str, Any]) -> str:
    return f"{_short_name(lineage['recipe']['base_model'])}-corpmerge-{(lineage.get('merge') or {}).get('method', 'abstained')}"


def _eval_results(report: RunReport | None, row: str) -> list[EvalResult]:
    """One model-index result per held-out task: the accuracy of ``row`` (the share of examples the task counts correct)."""
    held = report.evaluation if report else None
    if held is None or row not in held.rows:
        return []
    values = held.rows[row].by_task
    results = [
        EvalResult(
            task_type="text-generation",
            dataset_type=report.datasets.get(task, task),
            dataset_name=task,
            dataset_split=held.split,
            metric_type="accuracy",
            metric_value=round(value, 4),
            metric_name=f"accuracy (held-out {held.split}, corpmerge)",
        )
        for task, value in sorted(values.items())
    ]
    for task, other in sorted(held.other_tasks.items()):  # evaluate.tasks the support does not train
        if row in other.rows:
            results.append(
                EvalResult(
                    task_type="text-generation",
                    dataset_type=report.datasets.get(task, task),
                    dataset_name=task,
                    dataset_split=held.split if other.n == other.split_size else f"{held.split}[:{other.n}]",
                    metric_type="accuracy",
                    metric_value=round(other.rows[row].accuracy, 4),
                    metric_name=f"accuracy on {other.n} of {other.split_size} {held.split} examples, a task the support does not train (corpmerge)",
                )
            )
    return results


def _short_name(base_model: str) -> str:
    from corpmerge.model_io import hub_id_for

    return hub_id_for(base_model).rstrip("/").split("/")[-1]


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_model_card(
    lineage: dict[str, Any],
    report: RunReport | None = None,
    max_rows: int = 20,
    picture: str | None = None,
) -> str:
    """Markdown model card from the lineage document (and the run report, when there is one).

    ``picture`` is the run report's image relative to the folder (e.g. ``report.png``), shown
    with the report; pass it only when the folder holds that file.
    """
    recipe = lineage["recipe"]
    merge = lineage["merge"]
    pop = lineage["population_summary"]
    parts = [
        _front_matter(lineage, report, "merged", merged=True),
        f"# {_short_name(recipe['base_model'])} — corpmerge `{merge['method']}` merge\n",
        "This model is its base plus a weighted sum of seeded Gaussian perturbations, "
        f"θ = θ₀ + Σₛ aₛ·ε(s), made with corpmerge {__version__} "
        f"(noise scheme `{lineage['noise']}`). No gradient was used: the perturbations were rewarded on a task "
        "(RandOpt's population) and folded into one model with CoRP's operator (see the citations below).\n",
        _base_section(lineage),
        "## Merge\n",
        _table(
            ["field", "value"],
            [
                ["base model", f"`{recipe['base_model']}`"],
                ["method", f"`{merge['method']}`"],
                ["parameters", f"`{merge['parameters']}`"],
                ["step multiplier", merge["multiplier"]],
                ["elites", len(merge["elite_seeds"]) if merge["elite_seeds"] is not None else "stage 2: see the lineage"],
                ["output dtype", recipe["dtype"]],
            ],
        )
        + "\n",
        "## Population\n",
        _table(
            ["entries", "σ values (count)", "reward min", "reward mean", "reward max"],
            [
                [
                    pop["size"],
                    ", ".join(f"{s:g} ({n})" for s, n in pop["sigmas"].items()),
                    f"{pop['reward_min']:.4f}",
                    f"{pop['reward_mean']:.4f}",
                    f"{pop['reward_max']:.4f}",
                ]
            ],
        )
        + "\n",
    ]
    if report:
        parts.append(_report_section(report, picture))
    rows = lineage.get("lineage")
    parts.append("## Lineage\n")
    if rows:
        top = sorted(rows, key=lambda r: -abs(r["amplitude"]))[:max_rows]
        parts.append(
            f"Δ = Σ amplitude·ε(seed) over the perturbed tensors; {len(rows)} seeds in all "
            f"(largest {len(top)} below, the full table is in `corpmerge.yaml`).\n\n"
            + _table(["seed", "amplitude"], [[r["seed"], f"{r['amplitude']:.6g}"] for r in top])
            + "\n"
        )
    else:
        parts.append("This method is not linear in the noise; `corpmerge.yaml` holds the recipe and elites that reproduce it.\n")
    parts.append(
        "## Reproduce and evaluate\n\n`corpmerge.yaml` holds the resolved recipe (the population with its rewards) "
        "and the lineage: the base, the noise scheme and that table determine every weight; "
        "`corpmerge rebuild corpmerge.yaml -o DIR` writes the model again from them and the base and says whether "
        "the bits equal these.\n\n" + evaluation_commands(recipe)
    )
    parts.append(CITATIONS)
    return "\n".join(parts)


def evaluation_commands(recipe: dict[str, Any]) -> str:
    """How to evaluate the model with lm-eval on the tasks it was tuned on, as shell lines a reader can paste.

    corpmerge's own tasks (named ``corpmerge_*``) come with the corpmerge package: lm-eval finds them through
    ``--include_path``, the folder ``corpmerge tasks --path`` prints. A task from the recipe's
    ``scoring.include_path`` lives in that folder on the machine that ran corpmerge.
    """
    scoring = recipe.get("scoring") or {}
    names = list(dict.fromkeys([*(scoring.get("tasks") or []), *((recipe.get("evaluate") or {}).get("tasks") or [])]))
    own = bool(names) and all(name.startswith(CORPMERGE_TASK_PREFIX) for name in names)
    include = scoring.get("include_path")
    lines = ["pip install corpmerge  # corpmerge's tasks, and the `corpmerge` command that locates them"] if own or not include else []
    where = shlex.quote(include) if include and not own else '"$(corpmerge tasks --path)"'
    task_list = ",".join(names) if names else "<task>"
    lines.append(f"lm_eval --model hf --model_args pretrained=<this folder or repo> --include_path {where} --tasks {task_list}")
    note = (
        f"The task files come from `scoring.include_path` (`{include}` on the machine that ran corpmerge): copy that folder "
        "and point `--include_path` at the copy.\n\n"
        if include and not own
        else ""
    )
    return "Evaluate with lm-eval:\n\n```bash\n" + "\n".join(lines) + "\n```\n\n" + note


def render_abstain_card(lineage: dict[str, Any], report: RunReport, picture: str | None = None) -> str:
    """Card for ``write_on_abstain``: the folder holds the base weights, and says why (``picture`` as above)."""
    base_model = lineage["recipe"]["base_model"]
    return "\n".join(
        [
            _front_matter(lineage, report, "base", merged=False),
            f"# {_short_name(base_model)} — corpmerge abstained\n",
            "No merged candidate passed corpmerge's validation gate, so this folder holds the base model's weights unchanged.\n",
            _base_section(lineage),
            _report_section(report, picture),
            CITATIONS,
        ]
    )


def _base_section(lineage: dict[str, Any]) -> str:
    """Which θ₀ this is: the recipe's base, its Hub origin and revision, and where its weight hashes are."""
    pin = lineage.get("base") or {}
    lines = [f"## Base model\n\n`{lineage['recipe']['base_model']}`"]
    if pin.get("hub_id"):
        revision = f" at revision `{pin['revision']}`" if pin.get("revision") else ""
        lines.append(f" (Hub: [{pin['hub_id']}](https://huggingface.co/{pin['hub_id']}){revision})")
    if pin.get("gguf"):
        lines.append(f", converted from the GGUF file `{pin['gguf']['file']}`")
    if pin.get("weights"):
        lines.append(
            f". The SHA-256 of its {len(pin['weights'])} weight file(s) is in `corpmerge.yaml` (`base.weights`): "
            "the lineage rebuilds this model only on those bytes"
        )
    return "".join(lines) + ".\n"


def _picture(path: str) -> str:
    """A relative image link: the Hub resolves it against the repository, like a local viewer against the folder."""
    alt = "corpmerge run report: population rewards, gate fixes and regressions per candidate, held-out accuracy vs the base"
    return f"![{alt}]({quote(path)})\n"


def _report_section(report: RunReport, picture: str | None = None) -> str:
    gate = report.gate
    lines = ["## Run report\n", _picture(picture)] if picture else []
    lines.append("## Validation gate\n")
    if not gate.enabled:
        lines.append("The gate was disabled for this merge: it was not validated on held-out support examples.\n")
    elif gate.accepted:
        lines.append(
            f"Accepted on the validate fold: fixes {gate.fixes}, regressions {gate.regressions}, "
            f"constructive score {gate.constructive_score:.4f}, LCB {gate.lcb:.4f}; "
            f"probe multiplier {gate.multiplier} (LCB {gate.probe_lcb:.4f} on the probe fold). "
            f"{report.candidates_tried} candidates were tried.\n"
        )
    else:
        lines.append(f"Abstained: {gate.reason}. These are the base model's weights.\n")
    if report.shipped_check is not None:
        lines.append(_shipped_line(report.shipped_check))
    held = report.evaluation
    if held:
        rows = []
        for label, row in held.rows.items():
            diff = f"{row.diff:+.4f} [{row.ci_low:+.4f}, {row.ci_high:+.4f}]" if row.diff is not None else "—"
            rows.append([label, f"{row.accuracy:.4f}", diff, row.n])
        notes = []
        if held.ranked_on:
            notes.append(f"RandOpt rows (`best_entry`, `randopt_top*`) are ranked on {held.ranked_on} of the support set.")
        if held.clustered_by:
            notes.append(held.clustering_note() + ".")
        for task, n in sorted(held.excluded_support.items()):
            notes.append(f"{n} examples of `{task}` ({held.split}) are support examples and were left out.")
        lines.append(
            f"## Held-out evaluation ({', '.join(held.tasks)}, split `{held.split}`)\n\n"
            + _table(["model", "accuracy", "diff vs base (95% CI)", "n"], rows)
            + "\n"
            + "".join(f"\n{note}\n" for note in notes)
        )
        shipped = "merged" if "merged" in held.rows else "base"
        per_task = [
            [f"`{task}`", "accuracy", f"{value:.4f}", f"{held.rows['base'].by_task.get(task, float('nan')):.4f}"]
            for task, value in sorted(held.rows[shipped].by_task.items())
        ]
        if per_task:
            lines.append("Per task (the `model-index` of this card):\n\n" + _table(["task", "metric", "this model", "base"], per_task) + "\n")
        if held.other_tasks:
            lines.append(_other_tasks_section(held))
    return "\n".join(lines)


def _other_tasks_section(held: HeldOut) -> str:
    """The evaluate tasks the support does not train, each on its own: accuracy and Δ vs the base (a regression shows here)."""
    rows = []
    for task, other in sorted(held.other_tasks.items()):
        for key, row in other.rows.items():
            diff = f"{100 * row.diff:+.1f} pts [{100 * row.ci_low:+.1f}, {100 * row.ci_high:+.1f}]" if row.diff is not None else "—"
            rows.append([f"`{task}`", key, f"{100 * row.accuracy:.1f}%", diff, row.n])
    return (
        "Tasks the support does not train (`evaluate.tasks`), each on its own, on the same models:\n\n"
        + _table(["task", "model", "accuracy", "Δ vs base (paired 95% interval)", "n"], rows)
        + "\n"
    )


def _shipped_line(check: ShippedCheck) -> str:
    """``shipped check: n examples, identical | differs``, with what a difference means."""
    scored_as = f"scored in {check.scoring_dtype}, written in {check.output_dtype}, {check.backend} backend"
    if check.identical:
        return (
            f"**shipped check: {check.examples} examples, identical** — this folder, loaded with `from_pretrained`, gives "
            f"exactly the per-example results the gate scored on fold {check.fold} ({scored_as}).\n"
        )
    return (
        f"**shipped check: {check.examples} examples, DIFFERS on {check.differing}** — this folder, loaded with "
        f"`from_pretrained`, does not reproduce what the gate scored on fold {check.fold} ({scored_as}); "
        "the gate's numbers above do not describe this file.\n"
    )
