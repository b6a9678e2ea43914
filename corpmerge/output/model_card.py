"""The model card (README.md) of a merged model."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import yaml

from corpmerge import __version__


def _front_matter(base_model: str) -> str:
    from corpmerge.model_io import hub_id_for

    meta = {"base_model": hub_id_for(base_model), "library_name": "transformers", "tags": ["corpmerge", "merge"]}
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _short_name(base_model: str) -> str:
    from corpmerge.model_io import hub_id_for

    return hub_id_for(base_model).rstrip("/").split("/")[-1]


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_model_card(
    lineage: dict[str, Any], report: dict[str, Any] | None = None, max_rows: int = 20, picture: str | None = None,
) -> str:
    """Markdown model card from the lineage document (and the run report, when there is one).

    ``picture`` is the run report's image relative to the folder (e.g. ``report.png``), shown
    with the report; pass it only when the folder holds that file.
    """
    recipe = lineage["recipe"]
    merge = lineage["merge"]
    pop = lineage["population_summary"]
    parts = [
        _front_matter(recipe["base_model"]),
        f"# {_short_name(recipe['base_model'])} — corpmerge `{merge['method']}` merge\n",
        "This model is its base plus a weighted sum of seeded Gaussian perturbations, "
        f"θ = θ₀ + Σₛ aₛ·ε(s), made with [corpmerge](https://pypi.org/project/corpmerge/) {__version__} "
        f"(noise scheme `{lineage['noise']}`). No gradient was used.\n",
        "## Merge\n",
        _table(["field", "value"], [
            ["base model", f"`{recipe['base_model']}`"],
            ["method", f"`{merge['method']}`"],
            ["parameters", f"`{merge['parameters']}`"],
            ["step multiplier", merge["multiplier"]],
            ["elites", len(merge["elite_seeds"]) if merge["elite_seeds"] is not None else "stage 2: see the lineage"],
            ["output dtype", recipe["dtype"]],
        ]) + "\n",
        "## Population\n",
        _table(["entries", "σ values (count)", "reward min", "reward mean", "reward max"], [[
            pop["size"],
            ", ".join(f"{s:g} ({n})" for s, n in pop["sigmas"].items()),
            f"{pop['reward_min']:.4f}", f"{pop['reward_mean']:.4f}", f"{pop['reward_max']:.4f}",
        ]]) + "\n",
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
            + _table(["seed", "amplitude"], [[r["seed"], f"{r['amplitude']:.6g}"] for r in top]) + "\n"
        )
    else:
        parts.append("This method is not linear in the noise; `corpmerge.yaml` holds the recipe and elites that reproduce it.\n")
    parts.append(
        "## Reproduce and evaluate\n\n`corpmerge.yaml` holds the resolved recipe (the population with its rewards) "
        "and the lineage: the base, the noise scheme and that table determine every weight. "
        "Evaluate with `lm_eval --model hf --model_args pretrained=<this folder or repo> --tasks <task>`.\n"
    )
    return "\n".join(parts)


def render_abstain_card(base_model: str, report: dict[str, Any], picture: str | None = None) -> str:
    """Card for ``write_on_abstain``: the folder holds the base weights, and says why (``picture`` as above)."""
    return "\n".join([
        _front_matter(base_model),
        f"# {_short_name(base_model)} — corpmerge abstained\n",
        "No merged candidate passed corpmerge's validation gate, so this folder holds the base model's weights unchanged.\n",
        _report_section(report, picture),
    ])


def _picture(path: str) -> str:
    """A relative image link: the Hub resolves it against the repository, like a local viewer against the folder."""
    alt = "corpmerge run report: population rewards, gate fixes and regressions per candidate, held-out accuracy vs the base"
    return f"![{alt}]({quote(path)})\n"


def _report_section(report: dict[str, Any], picture: str | None = None) -> str:
    gate = report.get("gate", {})
    lines = ["## Run report\n", _picture(picture)] if picture else []
    lines.append("## Validation gate\n")
    if not gate.get("enabled", True):
        lines.append("The gate was disabled for this merge: it was not validated on held-out support examples.\n")
    elif gate.get("accepted"):
        lines.append(
            f"Accepted on the validate fold: fixes {gate['fixes']}, regressions {gate['regressions']}, "
            f"constructive score {gate['constructive_score']:.4f}, LCB {gate['lcb']:.4f}; "
            f"probe multiplier {gate['multiplier']} (LCB {gate['probe_lcb']:.4f} on the probe fold). "
            f"{report.get('candidates_tried', 0)} candidates were tried.\n"
        )
    else:
        lines.append(f"Abstained: {gate.get('reason', 'no candidate passed')}. These are the base model's weights.\n")
    check = report.get("shipped_check")
    if check:
        lines.append(_shipped_line(check))
    held = report.get("evaluation")
    if held:
        rows = []
        for label, row in held["rows"].items():
            diff = f"{row['diff']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]" if "diff" in row else "—"
            rows.append([label, f"{row['accuracy']:.4f}", diff, row["n"]])
        notes = []
        if held.get("ranked_on"):
            notes.append(f"RandOpt rows (`best_entry`, `randopt_top*`) are ranked on {held['ranked_on']} of the support set.")
        for task, n in sorted((held.get("excluded_support") or {}).items()):
            notes.append(f"{n} examples of `{task}` ({held['split']}) are support examples and were left out.")
        lines.append(
            f"## Held-out evaluation ({', '.join(held['tasks'])}, split `{held['split']}`)\n\n"
            + _table(["model", "accuracy", "diff vs base (95% CI)", "n"], rows) + "\n"
            + "".join(f"\n{note}\n" for note in notes)
        )
    return "\n".join(lines)


def _shipped_line(check: dict[str, Any]) -> str:
    """``shipped_check: n examples, identical | differs``, with what a difference means."""
    scored_as = f"scored in {check['scoring_dtype']}, written in {check['output_dtype']}, {check['backend']} backend"
    if check["identical"]:
        return (
            f"**shipped check: {check['examples']} examples, identical** — this folder, loaded with `from_pretrained`, gives "
            f"exactly the per-example results the gate scored on fold {check['fold']} ({scored_as}).\n"
        )
    return (
        f"**shipped check: {check['examples']} examples, DIFFERS on {check['differing']}** — this folder, loaded with "
        f"`from_pretrained`, does not reproduce what the gate scored on fold {check['fold']} ({scored_as}); "
        "the gate's numbers above do not describe this file.\n"
    )
