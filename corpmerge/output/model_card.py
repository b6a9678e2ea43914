"""The model card (README.md) of a merged model, with the front matter the Hub reads.

Front matter (written by ``huggingface_hub.ModelCardData``): ``base_model`` (a Hub id: the one the
base is or was converted from, else the one the base's own card names; omitted when unknown),
``base_model_relation`` (``relation``), ``library_name: transformers``, ``tags`` (``card_tags``), the
base card's ``license``, the Hub ``datasets`` the tasks declare, and ``model-index`` with the held-out
accuracy of the folder's model per task, its split naming the examples behind it (``evidence``; the
base's accuracy beside it in the card's body).

Every fact the card states is derived from the lineage and the report by one function: what the weights
are (``shipped_kind``), the tags, the relation, how the update was made (``method_sentence``), the
examples behind a number (``evidence``) and the lm-eval command that reproduces it (``evaluation_commands``).
"""

from __future__ import annotations

import json
import os
import shlex
from typing import Any
from urllib.parse import quote

from huggingface_hub import EvalResult, ModelCardData

from corpmerge import __version__
from corpmerge.errors import counted
from corpmerge.output.base_pin import front_matter_base
from corpmerge.output.report_schema import HeldOut, RunReport, ShippedCheck

CORP_METHODS = frozenset({"corp"})  # methods whose update is CoRP's operator (tag `corp`)
CORPMERGE_TASK_PREFIX = "corpmerge_"  # the tasks shipped in corpmerge.tasks (`corpmerge tasks`)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's accepted --max-lora-rank values (vllm.config.lora.MaxLoRARanks, 0.32)
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


def shipped_kind(lineage: dict[str, Any]) -> str:
    """What the folder's weights are: ``base`` (an abstention written with write_on_abstain), ``single`` (the base plus
    one seeded perturbation, e.g. ``best``), or ``merge`` (several perturbations combined)."""
    merge = lineage.get("merge")
    if merge is None:
        return "base"
    rows = lineage.get("lineage")
    if rows is not None:
        return "single" if len(rows) == 1 else "merge"
    elites = merge.get("elite_seeds")
    return "single" if elites is not None and len(elites) == 1 else "merge"


def card_tags(lineage: dict[str, Any]) -> list[str]:
    """``merge`` only for weights that combine perturbations, ``corp`` only for CoRP's operator, ``corpmerge`` always."""
    kind = shipped_kind(lineage)
    method = (lineage.get("merge") or {}).get("method")
    return (["merge"] if kind == "merge" else []) + ["corpmerge"] + (["corp"] if kind != "base" and method in CORP_METHODS else [])


def relation(lineage: dict[str, Any], base_model: str | None) -> str | None:
    """``base_model_relation``: ``merge`` when the weights combine perturbations of a named ``base_model``; otherwise
    none (a copy of the base, or one perturbation of it, is not a merge; without ``base_model`` there is no relation)."""
    return "merge" if base_model and shipped_kind(lineage) == "merge" else None


def method_sentence(lineage: dict[str, Any]) -> str:
    """How the weights were made, in one paragraph, from the lineage's method and update."""
    kind = shipped_kind(lineage)
    rank = (lineage.get("population_summary") or {}).get("rank")
    low = f", rank-{rank} noise ε_r on the Linear weight matrices only (population.rank; docs/noise.md)" if rank is not None else ""
    scheme = f"made with corpmerge {__version__} (noise scheme `{lineage.get('noise')}`{low})"
    if kind == "base":
        return f"No merged candidate passed corpmerge's validation gate, so this folder holds the base model's weights unchanged ({scheme}).\n"
    method = lineage["merge"]["method"]
    if kind == "single":
        how = (
            "`best` kept the single best-rewarded perturbation of the population (RandOpt K=1); nothing was merged"
            if method == "best"
            else f"`{method}` gave all the weight to one perturbation"
        )
        return f"This model is its base plus one seeded Gaussian perturbation, θ = θ₀ + a·ε(s), {scheme}. No gradient was used: {how}.\n"
    if method in CORP_METHODS:
        how = "folded into one model with CoRP's operator (see the citations below)"
    else:
        how = f"combined into one model by `{method}`: {_summary(method)}"
    update = (
        "a weighted sum of seeded Gaussian perturbations, θ = θ₀ + Σₛ aₛ·ε(s)"
        if lineage.get("lineage") is not None
        else "a tensor-wise merge of seeded Gaussian perturbations"
    )
    return (
        f"This model is its base plus {update}, {scheme}. No gradient was used: the perturbations were rewarded on a task (RandOpt's population) and {how}.\n"
    )


def _summary(method: str) -> str:
    from corpmerge.methods import get_method

    try:
        return get_method(method).summary
    except Exception:  # a lineage from a corpmerge with other methods
        return "see `corpmerge methods`"


def _front_matter(lineage: dict[str, Any], report: RunReport | None, row: str, adapter: bool = False) -> str:
    """YAML front matter; ``row`` is the held-out row of the folder's weights (merged, or base on abstention). ``adapter``:
    the folder is a PEFT LoRA adapter (``library_name: peft``, relation ``adapter``, tag ``lora``)."""
    pin = lineage.get("base") or {}
    results = _eval_results(report, row)
    base_model = front_matter_base(pin)
    data = ModelCardData(
        base_model=base_model,
        base_model_relation=("adapter" if base_model else None) if adapter else relation(lineage, base_model),
        library_name="peft" if adapter else "transformers",
        tags=card_tags(lineage) + (["lora"] if adapter else []),
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
    results = []
    for task, value in sorted(values.items()):
        split, words = evidence(held, task)
        results.append(
            EvalResult(
                task_type="text-generation",
                dataset_type=report.datasets.get(task, task),
                dataset_name=task,
                dataset_split=split,
                metric_type="accuracy",
                metric_value=round(value, 4),
                metric_name=f"accuracy on {words} (corpmerge)",
            )
        )
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


def evidence(held: HeldOut, task: str) -> tuple[str, str]:
    """The split label and the words for the examples behind a task's held-out number: ``test`` and "all 200 test
    examples", ``test[:40]`` and "the first 40 of 200 test examples (evaluate.limit)", or the examples left once
    the support set's are taken out."""
    n = held.n_by_task.get(task, held.n if len(held.tasks) == 1 else None)
    size = held.split_sizes.get(task)
    of = f" of {size}" if size is not None else ""
    if n is None:
        return held.split, f"the {held.split} split"
    if size is not None and n == size:
        return held.split, f"all {n} {held.split} examples"
    if not held.excluded_support.get(task):
        return f"{held.split}[:{n}]", f"the first {n}{of} {held.split} examples (evaluate.limit)"
    return held.split, f"{n}{of} {held.split} examples, those not in the support set"


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
    location: str | None = None,
    adapter: dict[str, Any] | None = None,
) -> str:
    """Markdown model card from the lineage document (and the run report, when there is one).

    ``picture`` is the run report's image relative to the folder (e.g. ``report.png``), shown
    with the report; pass it only when the folder holds that file. ``location``: where a reader finds the
    model (the folder's absolute path, or the Hub repo id it is pushed to), named in the lm-eval command.
    ``adapter``: the folder's PEFT adapter config when it holds a LoRA adapter (``output.format: peft``) instead of weights.
    """
    recipe = lineage["recipe"]
    merge = lineage["merge"]
    pop = lineage["population_summary"]
    noun = "LoRA adapter" if adapter else "merge" if shipped_kind(lineage) == "merge" else "model"
    model = location or (recipe.get("output") or {}).get("push_to_hub") or os.path.abspath((recipe.get("output") or {}).get("path") or ".")
    parts = [
        _front_matter(lineage, report, "merged", adapter=adapter is not None),
        f"# {_short_name(recipe['base_model'])} — corpmerge `{merge['method']}` {noun}\n",
        method_sentence(lineage),
        *([adapter_section(adapter, model, scoring_dtype(recipe))] if adapter else []),
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
        + "\n"
        + estimates_note(report),
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
        "the bits equal these.\n\n" + evaluation_commands(recipe, model, report.evaluation if report else None, adapter)
    )
    parts.append(CITATIONS)
    return "\n".join(parts)


def scoring_dtype(recipe: dict[str, Any]) -> str | None:
    """The dtype corpmerge scored in: ``scoring.dtype``, else the output ``dtype``."""
    return (recipe.get("scoring") or {}).get("dtype") or recipe.get("dtype")


def smallest_vllm_rank(rank: int) -> int | None:
    """The smallest ``--max-lora-rank`` vLLM accepts that holds an adapter of ``rank`` (None: above vLLM's largest)."""
    return next((r for r in VLLM_LORA_RANKS if r >= rank), None)


def adapter_section(config: dict[str, Any], location: str, dtype: str | None) -> str:
    """What the adapter is (rank R = K·r, scaling α/R = 1, its matrices) and how to load it: PEFT, lm-eval, vLLM."""
    base, rank, modules = config["base_model_name_or_path"], int(config["r"]), config["target_modules"]
    torch_dtype = f", dtype=torch.{dtype}" if dtype else ""
    vllm_rank = smallest_vllm_rank(rank)
    vllm = (
        f"vLLM serves it beside the base with LoRA on: `vllm serve {shlex.quote(base)} --enable-lora --max-lora-rank {vllm_rank} "
        f"--lora-modules corpmerge={shlex.quote(location)}` (vLLM's smallest accepted `--max-lora-rank` that holds rank {rank}), "
        "then ask for model `corpmerge`."
        if vllm_rank is not None
        else f"vLLM cannot load it: its rank {rank} is above vLLM's largest `--max-lora-rank` ({VLLM_LORA_RANKS[-1]})."
    )
    return (
        "## Load the adapter\n\n"
        f"This folder is a PEFT LoRA adapter, not a full model: rank R = K·r = {rank} (K seeds of the merge × the population's rank r), "
        f"`lora_alpha` = R so the scaling α/R is 1, float32 factors A and B on {len(modules)} Linear weight matrices of the base, "
        f"`{base}` (`base_model_name_or_path`); every other weight is the base's. Each matrix computes W·x + B·(A·x), "
        "with B·A = Σₛ aₛ·ε_r(s), the update of the lineage below (corpmerge's docs/lowrank.md).\n\n"
        "```python\nimport torch\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
        f'base = AutoModelForCausalLM.from_pretrained("{base}"{torch_dtype})\n'
        f'model = PeftModel.from_pretrained(base, "{location}")  # model.merge_and_unload() gives the full weights\n```\n\n'
        f"{vllm}\n"
    )


def evaluation_commands(recipe: dict[str, Any], location: str | None = None, held: HeldOut | None = None, adapter: dict[str, Any] | None = None) -> str:
    """How to evaluate the model with lm-eval as corpmerge did, as shell lines a reader can paste.

    The model is ``location`` (default: the recipe's ``output.push_to_hub``, else its ``output.path`` made absolute);
    an adapter (``adapter``: its config) is loaded on its base with ``pretrained=BASE,peft=location``;
    every setting that changes a score is passed: the dtype corpmerge scored in, few-shot, chat template,
    ``task_args`` (as ``--metadata``) and ``evaluate.limit``. corpmerge's own tasks (named ``corpmerge_*``) come with
    the corpmerge package: lm-eval finds them through ``--include_path``, the folder ``corpmerge tasks --path``
    prints. A task from the recipe's ``scoring.include_path`` lives in that folder on the machine that ran corpmerge.
    """
    scoring = recipe.get("scoring") or {}
    evaluate = recipe.get("evaluate") or {}
    output = recipe.get("output") or {}
    names = list(dict.fromkeys(evaluate.get("tasks") or scoring.get("tasks") or []))
    own = bool(names) and all(name.startswith(CORPMERGE_TASK_PREFIX) for name in names)
    include = scoring.get("include_path")
    lines = ["pip install corpmerge  # corpmerge's tasks, and the `corpmerge` command that locates them"] if own or not include else []
    where = shlex.quote(include) if include and not own else '"$(corpmerge tasks --path)"'
    task_list = ",".join(names) if names else "<task>"
    model = location or output.get("push_to_hub") or os.path.abspath(output.get("path") or ".")
    dtype = scoring_dtype(recipe)
    loaded = f"pretrained={adapter['base_model_name_or_path']},peft={model}" if adapter else f"pretrained={model}"
    args = [f"--model_args {shlex.quote(loaded + (f',dtype={dtype}' if dtype else ''))}", f"--include_path {where}", f"--tasks {task_list}"]
    if scoring.get("num_fewshot") is not None:
        args.append(f"--num_fewshot {int(scoring['num_fewshot'])}")
    if scoring.get("apply_chat_template"):
        args.append("--apply_chat_template")
    if scoring.get("task_args"):
        args.append(f"--metadata {shlex.quote(json.dumps(scoring['task_args'], sort_keys=True))}")
    if evaluate.get("limit"):
        args.append(f"--limit {int(evaluate['limit'])}")
    lines.append("lm_eval --model hf " + " ".join(args))
    notes = []
    if include and not own:
        notes.append(
            f"The task files come from `scoring.include_path` (`{include}` on the machine that ran corpmerge): copy that folder "
            "and point `--include_path` at the copy."
        )
    split = evaluate.get("split")
    if split and split != "test":
        notes.append(f"corpmerge evaluated split `{split}`; lm-eval evaluates each task's test split (validation when it has none).")
    if held is not None and held.excluded_support:
        notes.append("corpmerge left the support examples of that split out of its evaluation, so lm-eval's number covers more examples.")
    return "Evaluate with lm-eval:\n\n```bash\n" + "\n".join(lines) + "\n```\n\n" + "".join(f"{note}\n\n" for note in notes)


def render_abstain_card(lineage: dict[str, Any], report: RunReport, picture: str | None = None) -> str:
    """Card for ``write_on_abstain``: the folder holds the base weights, and says why (``picture`` as above)."""
    base_model = lineage["recipe"]["base_model"]
    return "\n".join(
        [
            _front_matter(lineage, report, "base"),
            f"# {_short_name(base_model)} — corpmerge abstained\n",
            method_sentence(lineage),
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
            f"{counted(report.candidates_tried, 'candidate')} {'was' if report.candidates_tried == 1 else 'were'} tried.\n"
        )
    else:
        lines.append(f"Abstained: {gate.reason}. These are the base model's weights.\n")
    if report.shipped_check is not None:
        lines.append(_shipped_line(report.shipped_check))
    held = report.evaluation
    if held:
        rows = []
        for key, row in held.rows.items():
            diff = f"{100 * row.diff:+.1f} pts [{100 * row.ci_low:+.1f}, {100 * row.ci_high:+.1f}]" if row.diff is not None else "—"
            rows.append([row_label(key, report.method), f"{100 * row.accuracy:.1f}%", diff, row.n])
        notes = []
        if held.ranked_on:
            notes.append(f"The RandOpt rows are ranked on {held.ranked_on} of the support set.")
        if held.clustered_by:
            notes.append(held.clustering_note() + ".")
        for task, n in sorted(held.excluded_support.items()):
            notes.append(f"{n} examples of `{task}` ({held.split}) are support examples and were left out.")
        lines.append(
            f"## Held-out evaluation ({', '.join(held.tasks)}, split `{held.split}`)\n\n"
            + _table(["model", "accuracy", f"Δ vs base ({'clustered' if held.clustered_by else 'paired'} 95% interval)", "n"], rows)
            + "\n"
            + "".join(f"\n{note}\n" for note in notes)
        )
        shipped = "merged" if "merged" in held.rows else "base"
        per_task = [
            [f"`{task}`", "accuracy", f"{value:.4f}", f"{held.rows['base'].by_task.get(task, float('nan')):.4f}", evidence(held, task)[1]]
            for task, value in sorted(held.rows[shipped].by_task.items())
        ]
        if per_task:
            lines.append("Per task (the `model-index` of this card):\n\n" + _table(["task", "metric", "this model", "base", "on"], per_task) + "\n")
        if held.other_tasks:
            lines.append(_other_tasks_section(held, report.method))
    return "\n".join(lines)


def _other_tasks_section(held: HeldOut, method: str) -> str:
    """The evaluate tasks the support does not train, each on its own: accuracy and Δ vs the base (a regression shows here)."""
    rows = []
    for task, other in sorted(held.other_tasks.items()):
        for key, row in other.rows.items():
            diff = f"{100 * row.diff:+.1f} pts [{100 * row.ci_low:+.1f}, {100 * row.ci_high:+.1f}]" if row.diff is not None else "—"
            rows.append([f"`{task}`", row_label(key, method), f"{100 * row.accuracy:.1f}%", diff, row.n])
    return (
        "Tasks the support does not train (`evaluate.tasks`), each on its own, on the same models:\n\n"
        + _table(["task", "model", "accuracy", "Δ vs base (paired 95% interval)", "n"], rows)
        + "\n"
    )


def estimates_note(report: RunReport | None) -> str:
    """Which rewards are racing's estimates and on how many fold-A examples ('' when every entry saw the whole fold)."""
    racing = report.racing if report else None
    if racing is None or not racing.examples:
        return ""
    size = max(racing.examples)
    short = [m for m in racing.examples if m < size]
    if not short:
        return ""
    full = [r for r, m in zip(report.population.rewards, racing.examples) if m == size]
    full_range = f"; over the {len(full)} entries scored on all {size}: min {min(full):.4f}, max {max(full):.4f}" if full else ""
    return (
        f"\n{len(short)} of {len(racing.examples)} rewards are estimates: racing stopped those entries after {min(short)}–{max(short)} "
        f"of the {size} fold-A examples (an estimate can lie outside [0, 1]){full_range}.\n"
    )


def row_label(key: str, method: str) -> str:
    """A held-out row's name as the terminal table gives it: base, RandOpt K=1, a top-K vote, the merged model."""
    if key == "best_entry":
        return "RandOpt K=1 (best entry)"
    if key.startswith("randopt_top"):
        return f"RandOpt top-{key[len('randopt_top') :]} vote"
    if key == "stage1":
        return "stage 1"
    return f"{method} (merged)" if key == "merged" else key


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
