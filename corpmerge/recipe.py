"""The recipe schema: pydantic models (unknown keys are errors), one-line error messages, and loading a recipe file.

A recipe file is untrusted text, read through the bounded reader of ``corpmerge.yaml_io``.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, ValidationInfo, field_validator, model_validator

from corpmerge.dtypes import DTYPES, DType
from corpmerge.errors import CorpmergeError, excerpt
from corpmerge.noise import DEFAULT_SCHEME, SCHEMES
from corpmerge.noise.lowrank import MAX_RANK
from corpmerge.population import MAX_SEED, Entry, check_listed_population, sample_population
from corpmerge.sizes import parse_size
from corpmerge.yaml_io import MAX_RECIPE_BYTES, read_text_bounded, read_yaml

MAX_POPULATION = 1_000_000  # entries of a sampled population
MAX_GRID = 10_000
MAX_PATH_CHARS = 4096
LINEAGE_CONTEXT = "lineage"  # validation context of a lineage's recipe: rewards as the run recorded them
BackendName = Literal["hf", "vllm"]  # scoring.backend: corpmerge.scoring.backends.<name>, class <NAME>Backend
TrackerName = Literal["tensorboard", "wandb"]  # tracking.report_to: corpmerge.tracking.<name>
OutputFormat = Literal["full", "peft"]  # output.format: the full weights, or a PEFT LoRA adapter of the rank-r update
PEFT_NEEDS_RANK = "output.format: peft writes a LoRA adapter of the rank-r merge; set population.rank, or use output.format: full"
PEFT_ON_VLLM = "output.format: peft is scored through low-rank adapters by the hf backend in this version; set scoring.backend: hf, or use output.format: full"
PEFT_ON_ABSTAIN = (
    "output.write_on_abstain: an abstention writes the base unchanged, which is no LoRA adapter; with output.format: peft leave it false, "
    "or use output.format: full"
)


def _path_field(value: str | None) -> str | None:
    """A file-system path from a recipe: no NUL byte, at most ``MAX_PATH_CHARS`` characters, ``~`` expanded."""
    if value is None:
        return None
    if "\0" in value:
        raise ValueError(f"'{excerpt(value)}' contains a NUL character; give a plain path")
    if len(value) > MAX_PATH_CHARS:
        raise ValueError(f"a path of {len(value)} characters is too long (at most {MAX_PATH_CHARS})")
    return os.path.expanduser(value)


def _no_bool_size(value: Any) -> Any:
    """YAML ``true``/``false`` are not sizes (pydantic would read ``true`` as 1 byte)."""
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is not a size; use e.g. 2GB, 500MB, 1.5GiB or a byte count")
    return value


class _Strict(BaseModel):
    """Unknown keys refused, and no type coercion (``size: true`` is not 1, ``path: 12`` is not a path)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)


class EntrySpec(_Strict):
    """An explicit population entry."""

    seed: int = Field(ge=0, le=MAX_SEED, description="noise seed")
    sigma: float = Field(allow_inf_nan=False, description="noise scale σ (> 0; −σ only as the mirror of a listed (seed, σ) entry)")
    examples: int | None = Field(
        default=None, ge=1, description="fold-A examples behind the reward when racing stopped the entry early (its reward is an estimate)"
    )
    reward: float | None = Field(default=None, allow_inf_nan=False, description="support reward in [0, 1], if already known")

    @field_validator("sigma")
    @classmethod
    def _nonzero(cls, value: float) -> float:
        if value == 0:
            raise ValueError("Input should be greater than 0 (or −σ for the mirror of a listed {seed, sigma: σ} entry)")
        return value

    @field_validator("reward")
    @classmethod
    def _unit_reward(cls, value: float | None, info: ValidationInfo) -> float | None:
        """A given reward is a mean per-example score in [0, 1]; racing's estimates (``examples`` given, or in a
        lineage) may lie outside it."""
        estimate = info.data.get("examples") is not None or (info.context or {}).get(LINEAGE_CONTEXT)
        if value is not None and not 0 <= value <= 1 and not estimate:
            raise ValueError(f"a reward is a mean per-example score in [0, 1] (got {value:g}); give the fraction, e.g. 0.35 for 35%")
        return value


RANK_HELP = "rank r of each perturbed matrix's noise ε_r = Uᵀ·V/√r (Linear weights only; docs/noise.md); absent: full rank"


def _rank_range(value: int | None) -> int | None:
    """``population.rank``: an integer in [1, ``MAX_RANK``], or absent (full rank)."""
    if value is not None and not 1 <= value <= MAX_RANK:
        raise ValueError(f"must be an integer in [1, {MAX_RANK}] (got {value}); give the rank r of each matrix's perturbation, or leave it out for full rank")
    return value


class ListedPopulation(_Strict):
    """A listed population with keys beside its entries: ``{entries: [...], rank: r}`` (a plain list has none)."""

    entries: list[EntrySpec] = Field(fail_fast=True)
    rank: int | None = Field(default=None, description=RANK_HELP)

    _rank = field_validator("rank")(_rank_range)


class SampledPopulation(_Strict):
    """A population that corpmerge samples: unique seeds, σ drawn uniformly from ``sigmas``; ``antithetic``: size/2
    mirrored pairs (s, σ), (s, −σ)."""

    size: int = Field(ge=1, le=MAX_POPULATION)
    sigmas: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(min_length=1)
    seed: int = Field(default=0, ge=0)
    antithetic: bool = Field(default=False, description="sample size/2 mirrored pairs (s, σ) and (s, −σ)")
    rank: int | None = Field(default=None, description=RANK_HELP)

    _rank = field_validator("rank")(_rank_range)

    @field_validator("antithetic")
    @classmethod
    def _even_size(cls, value: bool, info: ValidationInfo) -> bool:
        size = info.data.get("size")
        if value and size is not None and size % 2:
            raise ValueError(f"an antithetic population is size/2 mirrored pairs, so population.size must be even (got {size}); give an even size")
        return value


def _population_kind(value: Any) -> str:
    if isinstance(value, list):
        return "entries"
    return "listed" if isinstance(value, dict) and "entries" in value else "sampled"


POPULATION_TAGS = {"entries": EntrySpec, "listed": ListedPopulation, "sampled": SampledPopulation}
Population = Annotated[
    Union[
        Annotated[list[EntrySpec], Field(fail_fast=True), Tag("entries")],
        Annotated[ListedPopulation, Tag("listed")],
        Annotated[SampledPopulation, Tag("sampled")],
    ],
    Discriminator(_population_kind),
]


class PerturbSpec(_Strict):
    """Which parameters are perturbed (fnmatch patterns over parameter names)."""

    include: list[str] = Field(default_factory=lambda: ["*"])
    exclude: list[str] = Field(default_factory=list)


class Folds(_Strict):
    """Fractions of the support examples used to construct, validate and probe."""

    construct_: float = Field(default=0.5, gt=0, lt=1, alias="construct")
    validate_: float = Field(default=0.25, gt=0, lt=1, alias="validate")
    probe: float = Field(default=0.25, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> "Folds":
        total = self.construct_ + self.validate_ + self.probe
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"construct + validate + probe must add up to 1 (got {total:g})")
        return self


class SupportSpec(_Strict):
    """The support set: examples from a non-test split, cut into folds A/B/C."""

    limit: int | None = Field(default=200, ge=3)
    split: str | None = Field(default=None, description="split to draw from; default: the task's training split, else validation")
    folds: Folds = Field(default_factory=Folds)
    split_seed: int = 0


class RacingSpec(_Strict):
    """Racing: score entries on fold A in stages and stop those that cannot become elites."""

    enabled: bool = True
    stages: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=lambda: [0.25, 0.5], description="fractions of fold A after which entries are cut (the last stage is always the whole fold)"
    )
    z: float = Field(default=1.645, gt=0, description="one-sided confidence of a cut (1.645: 95%, as the gate)")

    @field_validator("stages")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError("must be strictly increasing fractions of fold A, e.g. [0.25, 0.5]")
        return value


class ScoringSpec(_Strict):
    """How entries are scored with lm-evaluation-harness."""

    tasks: list[str] = Field(min_length=1)
    include_path: str | None = None
    support: SupportSpec = Field(default_factory=SupportSpec)
    batch_size: int | Literal["auto"] = 16
    apply_chat_template: bool = False
    num_fewshot: int | None = Field(default=None, ge=0)
    metric: str | None = Field(default=None, description="per-example metric used as the reward; default: the task's first")
    task_args: dict[str, Any] = Field(default_factory=dict, description="lm-eval task metadata, e.g. {data_dir: ./gsm8k}")
    store: str | None = Field(default=None, description="SQLite score store; default: <work_dir>/scores.sqlite")
    racing: RacingSpec = Field(default_factory=RacingSpec)
    memory_budget: int | str | None = Field(
        default=None, description="bytes for materialised candidate updates; default: min(8 × model size, half the free RAM)"
    )
    prefetch: bool | None = Field(
        default=None,
        description="draw the next entry's noise while the current one evaluates (needs 2 × model in memory_budget); "
        "default: on only where the legacy scheme draws on the host for an accelerator (off on the CPU, where both compete "
        "for the same cores, and where the noise is drawn on the scoring device)",
    )
    allow_unsandboxed_code: bool = Field(default=False, description="run code rewards (MBPP) without OS isolation where it cannot be set up; unsafe")
    unit_timeout: float = Field(
        default=600.0,
        gt=0,
        allow_inf_nan=False,
        description="seconds a unit of work on a Ray worker may take at least before that worker counts as stalled",
    )
    stall_factor: float = Field(
        default=10.0,
        ge=1,
        allow_inf_nan=False,
        description="a unit counts as stalled after this many times its expected time (examples × the slowest measured cost per example)",
    )
    dtype: DType | None = Field(
        default=None, description="dtype the scored models are rounded to; default: the output dtype, so the gate scores the bits that ship"
    )
    backend: BackendName = Field(default="hf", description="how a model is evaluated: Hugging Face transformers or a vLLM engine")
    workers: int = Field(
        default=0,
        ge=0,
        description="Ray actors that evaluate beside this process, one backend each on its own device (a GPU each where the "
        "cluster has GPUs); 0: everything in this process. Joins RAY_ADDRESS's cluster, else starts a local one",
    )
    worker_restarts: int = Field(default=2, ge=0, description="times Ray restarts a worker that died or stalled before the run goes on without it")
    model_args: dict[str, Any] = Field(
        default_factory=dict, description="passed to the backend's engine, e.g. {gpu_memory_utilization: 0.8, max_model_len: 2048} for vllm"
    )

    _budget_not_bool = field_validator("memory_budget", mode="before")(_no_bool_size)
    _paths = field_validator("include_path", "store")(_path_field)

    @field_validator("memory_budget")
    @classmethod
    def _budget(cls, value: int | str | None) -> int | str | None:
        if value is not None:
            parse_size(value)
        return value


class GateSpec(_Strict):
    """The held-out validation gate and probe step calibration."""

    enabled: bool = True
    z: float = Field(default=1.645, ge=0)
    regression_penalty: float = Field(default=2.0, ge=0)
    probe_multipliers: list[Annotated[float, Field(gt=0)]] = Field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0], min_length=1)
    fallback: bool = Field(default=False, description="when the top candidate fails the probe, probe the next passing one (not the paper's procedure)")
    racing: bool = Field(default=True, description="stop gate candidates on fold B that cannot become the top-ranked one")


class IterateSpec(_Strict):
    """CoRP stage 2: covariance-adaptive local search around the accepted stage-1 update."""

    rounds: int = Field(default=3, ge=1, le=20)
    local_size: int = Field(default=100, ge=4)
    rank: int = Field(default=8, ge=1)
    isotropic_floor: float = Field(default=0.5, gt=0, le=1, description="ρ: share of proposal variance on a fresh seed")
    sigma: float | None = Field(default=None, gt=0, description="local scale σ, fixed across rounds; default: the population's median σ")
    sigma_schedule: Literal["fixed", "halve"] = Field(
        default="fixed",
        description="fixed (paper); halve (the reference code's, not the paper's): start at the population's σ with the best "
        "mean reward and halve σ after each rejected round (with patience: 2, its 3 tries)",
    )
    patience: int = Field(default=0, ge=0, description="rejected rounds tolerated before stopping (paper: 0)")


class EvaluateSpec(_Strict):
    """Optional held-out report after the merge (never used for any choice)."""

    tasks: list[str] | None = None
    split: str = "test"
    limit: int | None = Field(default=None, ge=1)
    ensemble_k: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list, description="RandOpt top-K vote sizes to report")


class OutputSpec(_Strict):
    """Where and how the merged model is written."""

    path: str = "./merged"
    max_shard_size: int | str = "5GB"
    work_dir: str | None = None
    write_on_abstain: bool = False
    verify: bool = Field(default=True, description="after writing, load the folder as a user would and re-score fold B; it must match what the gate scored")
    format: OutputFormat = Field(
        default="full",
        description="full: the merged weights; peft: a PEFT LoRA adapter of the rank-r merge (needs population.rank), scored through adapters",
    )
    push_to_hub: str | None = None
    private: bool = False

    _size_not_bool = field_validator("max_shard_size", mode="before")(_no_bool_size)
    _paths = field_validator("path", "work_dir")(_path_field)

    @field_validator("max_shard_size")
    @classmethod
    def _size(cls, value: int | str) -> int | str:
        parse_size(value)
        return value

    @field_validator("push_to_hub")
    @classmethod
    def _repo_id(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}", value):
            raise ValueError(f"'{excerpt(value)}' is not a Hub repo id; use 'user/name' (letters, digits, - _ .)")
        return value

    @property
    def shard_bytes(self) -> int:
        return parse_size(self.max_shard_size)

    @property
    def work_path(self) -> Path:
        return Path(self.work_dir) if self.work_dir else Path(str(Path(self.path)) + ".work")


class TrackingSpec(_Strict):
    """Experiment trackers a run logs to while it goes (docs/tracking.md); without this section none is imported."""

    report_to: list[TrackerName] = Field(default_factory=list, description="trackers, spelled as transformers' report_to: tensorboard, wandb")
    project: str = Field(default="corpmerge", min_length=1, description="the W&B project")
    run_name: str | None = Field(default=None, min_length=1, description="the run's name in every tracker; default: the output folder's name")
    logging_dir: str | None = Field(default=None, description="TensorBoard's event folder; default: <work_dir>/runs/<start time>_<run_name>")

    _paths = field_validator("logging_dir")(_path_field)

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        """``report_to: wandb`` is a list of one, ``none`` an empty one (as transformers reads it); repeats count once."""
        values = [value] if isinstance(value, str) else value
        return [v for v in dict.fromkeys(values) if v != "none"] if isinstance(values, list) else values


class Recipe(_Strict):
    """A corpmerge recipe."""

    base_model: str
    dtype: DType = "float32"
    noise: str = Field(DEFAULT_SCHEME, description=f"noise scheme: {' or '.join(SCHEMES)} (the default; corpmerge ≤ 0.3 wrote {SCHEMES[1]})")
    perturb: PerturbSpec = Field(default_factory=PerturbSpec)
    population: Population
    merge_method: str = "corp"
    parameters: dict[str, Any] = Field(default_factory=dict)
    gate: GateSpec = Field(default_factory=GateSpec)
    scoring: ScoringSpec | None = None
    iterate: IterateSpec | None = None
    evaluate: EvaluateSpec | None = None
    output: OutputSpec = Field(default_factory=OutputSpec)
    tracking: TrackingSpec | None = None

    _base_path = field_validator("base_model")(_path_field)

    @field_validator("noise")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if value not in SCHEMES:
            raise ValueError(f"scheme '{value}' is not supported by this corpmerge (it implements {' and '.join(SCHEMES)}); use one of them")
        return value

    @field_validator("population")
    @classmethod
    def _unique_seeds(cls, value: Any) -> Any:
        """A listed population's seeds are unique but for mirrored pairs (``check_listed_population``)."""
        if isinstance(value, (list, ListedPopulation)):
            check_listed_population(value if isinstance(value, list) else value.entries)
        return value

    @field_validator("parameters")
    @classmethod
    def _bounded_grid(cls, value: dict[str, Any]) -> dict[str, Any]:
        points = 1
        for item in value.values():
            points *= max(1, len(item)) if isinstance(item, list) else 1
            if points > MAX_GRID:
                raise ValueError(
                    f"the grid (product of the list lengths) has more than {MAX_GRID:,} points; every point is a gate candidate, so give fewer values"
                )
        return value

    @model_validator(mode="after")
    def _peft_output(self) -> "Recipe":
        """``output.format: peft`` needs a rank-r population, the hf backend, and a merge to write."""
        if self.output.format == "peft":
            if self.rank is None:
                raise ValueError(PEFT_NEEDS_RANK)
            if self.scoring is not None and self.scoring.backend == "vllm":
                raise ValueError(PEFT_ON_VLLM)
            if self.output.write_on_abstain:
                raise ValueError(PEFT_ON_ABSTAIN)
        return self

    @property
    def adapter_output(self) -> bool:
        """``output.format: peft``: the run ships a LoRA adapter, so it scores every update through adapters."""
        return self.output.format == "peft"

    def with_output(self, path: str | Path | None) -> "Recipe":
        """The recipe with ``output.path`` replaced (the work folder follows unless set explicitly)."""
        if path is None:
            return self
        return self.model_copy(update={"output": self.output.model_copy(update={"path": str(path)})})

    def with_report_to(self, report_to: list[str] | None) -> "Recipe":
        """The recipe with ``tracking.report_to`` replaced (``corpmerge run --report-to``); None or [] keeps the recipe's."""
        if not report_to:
            return self
        try:
            names = TrackingSpec(report_to=report_to).report_to
        except ValidationError:
            raise CorpmergeError(
                f"--report-to: {', '.join(report_to)}: use {', '.join(get_args(TrackerName))} or none (repeat the option for several)"
            ) from None
        return self.model_copy(update={"tracking": (self.tracking or TrackingSpec()).model_copy(update={"report_to": names})})

    def entries(self) -> list[Entry]:
        """The population as entries (a sampled spec expanded deterministically)."""
        if isinstance(self.population, SampledPopulation):
            p = self.population
            return sample_population(p.size, p.sigmas, p.seed, p.antithetic)
        return [Entry(e.seed, e.sigma, e.reward) for e in self.listed()]

    def listed(self) -> list[EntrySpec]:
        """A listed population's entries as written (empty for a sampled one)."""
        p = self.population
        return p if isinstance(p, list) else p.entries if isinstance(p, ListedPopulation) else []

    @property
    def rank(self) -> int | None:
        """``population.rank``: the rank r of every perturbed matrix's noise ε_r; None: full rank."""
        return None if isinstance(self.population, list) else self.population.rank

    @property
    def scoring_dtype(self) -> str:
        """The dtype scored models are rounded to: ``scoring.dtype``, else the output ``dtype`` (score what ships)."""
        return (self.scoring.dtype if self.scoring is not None else None) or self.dtype

    def dump(self) -> dict[str, Any]:
        """The recipe as plain data, with defaults filled in."""
        return self.model_dump(mode="json", by_alias=True)


def _format_loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for i, item in enumerate(loc):
        if i == 1 and loc[0] == "population" and item in POPULATION_TAGS:  # the union's tag, not a key
            continue
        if isinstance(item, int):
            parts[-1] = f"{parts[-1]}[{item}]" if parts else f"[{item}]"
        else:
            parts.append(excerpt(item, 40))
    return ".".join(parts) or "recipe"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The schema model whose keys are allowed at ``loc`` (the path of a key's parent), None when it is not a model."""
    model: type[BaseModel] = Recipe
    for i, item in enumerate(loc):
        if loc[:i] == ("population",) and item in POPULATION_TAGS:
            model = POPULATION_TAGS[item]
            continue
        if isinstance(item, int) or loc[: i + 1] == ("population",):
            continue
        field = next((f for n, f in model.model_fields.items() if item in (n, f.alias)), None)
        found = _models_in(field.annotation) if field is not None else []
        if len(found) != 1:
            return None
        model = found[0]
    return model


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The schema models an annotation names (through Optional, list, Annotated and unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return list(dict.fromkeys(m for arg in get_args(annotation) for m in _models_in(arg)))


def unknown_key_message(where: str, loc: tuple[Any, ...]) -> str:
    """``where: unknown key``, with the closest allowed key (difflib) and the keys allowed there."""
    model = _model_at(loc[:-1])
    keys = [f.alias or n for n, f in model.model_fields.items()] if model is not None else []
    close = difflib.get_close_matches(str(loc[-1]), keys, n=1, cutoff=0.6)
    hint = f"; did you mean `{close[0]}`?" if close else "; remove it or check the spelling"
    allowed = f" (keys here: {', '.join(keys)}; all keys: docs/recipe.md)" if keys else " (all keys: docs/recipe.md)"
    return f"{where}: unknown key{hint}{allowed}"


def _format_error(err: dict[str, Any]) -> str:
    loc = _format_loc(tuple(err["loc"]))
    kind = err["type"]
    msg = err["msg"]
    if kind == "extra_forbidden":
        return unknown_key_message(loc, tuple(err["loc"]))
    if kind == "missing":
        return f"{loc}: required field is missing"
    if kind == "literal_error" and loc == "dtype":
        return f"dtype: '{excerpt(err.get('input'))}' is not supported; use one of {', '.join(DTYPES)}"
    if isinstance(err.get("input"), bool) and kind in ("int_type", "float_type", "int_parsing", "float_parsing"):
        return f"{loc}: {str(err['input']).lower()} is a yes/no value, not a number; give a number"
    if loc == "population.rank" and kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{loc}: must be an integer in [1, {MAX_RANK}] (got {excerpt(err.get('input'))}); give the rank r of each matrix's perturbation, or leave it out for full rank"
    if kind == "string_type":
        return f"{loc}: must be text (got {excerpt(err.get('input'))}); quote it if it looks like a number"
    if kind == "finite_number":
        return f"{loc}: must be a finite number (got {excerpt(err.get('input'))})"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
        if msg.startswith("population[") or not err["loc"]:  # a check across fields names its field itself
            return msg
    return f"{loc}: {msg}"


def parse_recipe(data: Any, source: str = "recipe", *, lineage: bool = False) -> Recipe:
    """Validate plain data as a Recipe; raise a one-line CorpmergeError naming the field.

    ``lineage``: the recipe a run resolved into its lineage, whose rewards may be racing's estimates (outside [0, 1])."""
    if data is None:
        raise CorpmergeError(f"{source}: the recipe is empty; write a YAML mapping with at least base_model and population (docs/recipe.md)")
    if not isinstance(data, dict):
        raise CorpmergeError(f"{source}: a recipe must be a YAML mapping (key: value), got {_yaml_kind(data)}")
    try:
        return Recipe.model_validate(data, context={LINEAGE_CONTEXT: lineage})
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        unknown = [e for e in errors if e["type"] == "extra_forbidden"]  # `sigma:` is the cause of a missing `sigmas:`
        raise CorpmergeError(f"{source}: {_format_error(unknown[0] if unknown else errors[0])}") from None


def _yaml_kind(data: Any) -> str:
    """What a YAML document that is not a mapping holds, in YAML's words."""
    return "a list" if isinstance(data, list) else f"the {type(data).__name__} {excerpt(data)}"


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file (at most ``MAX_RECIPE_BYTES``, read with ``yaml_io.read_yaml``'s bounds)."""
    path = Path(path)
    if path.is_dir():
        raise CorpmergeError(f"{path}: is a folder; give the recipe's YAML file (e.g. {path / 'recipe.yaml'})")
    too_big = f"a recipe may have at most {MAX_RECIPE_BYTES // 2**20} MiB; sample big populations with {{size, sigmas, seed}} instead of listing them"
    text = read_text_bounded(path, MAX_RECIPE_BYTES, "the recipe", too_big)
    if text is None:
        raise CorpmergeError(f"{path}: recipe file not found")
    return parse_recipe(read_yaml(text, str(path)), str(path))
