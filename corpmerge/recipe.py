"""The YAML recipe: pydantic models (unknown keys are errors) and one-line error messages."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from corpmerge.errors import CorpmergeError
from corpmerge.noise import SCHEME
from corpmerge.population import MAX_SEED, Entry, sample_population
from corpmerge.sizes import parse_size

DTYPES = ("float32", "bfloat16", "float16")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class EntrySpec(_Strict):
    """An explicit population entry."""

    seed: int = Field(ge=0, le=MAX_SEED, description="noise seed")
    sigma: float = Field(gt=0, allow_inf_nan=False, description="noise scale σ (> 0)")
    reward: float | None = Field(default=None, allow_inf_nan=False, description="support reward, if already known")


class SampledPopulation(_Strict):
    """A population that corpmerge samples: unique seeds, σ drawn uniformly from ``sigmas``."""

    size: int = Field(ge=1, le=1_000_000)
    sigmas: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(min_length=1)
    seed: int = Field(default=0, ge=0)


def _population_kind(value: Any) -> str:
    return "entries" if isinstance(value, list) else "sampled"


Population = Annotated[
    Union[Annotated[list[EntrySpec], Tag("entries")], Annotated[SampledPopulation, Tag("sampled")]],
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
    z: float = Field(default=2.0, gt=0, description="confidence of a cut: an entry stops when its upper bound is below the elite bound")

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
    allow_unsandboxed_code: bool = Field(
        default=False, description="run code rewards (MBPP) without OS isolation where it cannot be set up; unsafe"
    )

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
    fallback: bool = Field(
        default=False, description="when the top candidate fails the probe, probe the next passing one (not the paper's procedure)"
    )
    racing: bool = Field(default=True, description="stop gate candidates on fold B that cannot become the top-ranked one")


class IterateSpec(_Strict):
    """CoRP stage 2: covariance-adaptive local search around the accepted stage-1 update."""

    rounds: int = Field(default=3, ge=1, le=20)
    local_size: int = Field(default=100, ge=4)
    rank: int = Field(default=8, ge=1)
    isotropic_floor: float = Field(default=0.5, gt=0, le=1, description="ρ: share of proposal variance on a fresh seed")
    sigma: float | None = Field(default=None, gt=0, description="local scale; default: the population's median σ")
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
    push_to_hub: str | None = None
    private: bool = False

    @field_validator("max_shard_size")
    @classmethod
    def _size(cls, value: int | str) -> int | str:
        parse_size(value)
        return value

    @field_validator("push_to_hub")
    @classmethod
    def _repo_id(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}", value):
            raise ValueError(f"'{value}' is not a Hub repo id; use 'user/name' (letters, digits, - _ .)")
        return value

    @property
    def shard_bytes(self) -> int:
        return parse_size(self.max_shard_size)

    @property
    def work_path(self) -> Path:
        return Path(self.work_dir) if self.work_dir else Path(str(Path(self.path)) + ".work")


class Recipe(_Strict):
    """A corpmerge recipe."""

    base_model: str
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    noise: str = SCHEME
    perturb: PerturbSpec = Field(default_factory=PerturbSpec)
    population: Population
    merge_method: str = "corp"
    parameters: dict[str, Any] = Field(default_factory=dict)
    gate: GateSpec = Field(default_factory=GateSpec)
    scoring: ScoringSpec | None = None
    iterate: IterateSpec | None = None
    evaluate: EvaluateSpec | None = None
    output: OutputSpec = Field(default_factory=OutputSpec)

    @field_validator("population")
    @classmethod
    def _unique_seeds(cls, value: Any) -> Any:
        if isinstance(value, list):
            first: dict[int, int] = {}
            for i, entry in enumerate(value):
                if entry.seed in first:
                    raise ValueError(
                        f"population[{i}].seed: seed {entry.seed} appears twice (also population[{first[entry.seed]}]); seeds must be unique"
                    )
                first[entry.seed] = i
        return value

    def with_output(self, path: str | Path | None) -> "Recipe":
        """The recipe with ``output.path`` replaced (the work folder follows unless set explicitly)."""
        if path is None:
            return self
        return self.model_copy(update={"output": self.output.model_copy(update={"path": str(path)})})

    def entries(self) -> list[Entry]:
        """The population as entries (a sampled spec expanded deterministically)."""
        if isinstance(self.population, SampledPopulation):
            p = self.population
            return sample_population(p.size, p.sigmas, p.seed)
        return [Entry(e.seed, e.sigma, e.reward) for e in self.population]

    def dump(self) -> dict[str, Any]:
        """The recipe as plain data, with defaults filled in."""
        return self.model_dump(mode="json", by_alias=True)


def _format_loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if item in ("entries", "sampled") and parts == ["population"]:
            continue
        if isinstance(item, int):
            parts[-1] = f"{parts[-1]}[{item}]" if parts else f"[{item}]"
        else:
            parts.append(str(item))
    return ".".join(parts) or "recipe"


def _format_error(err: dict[str, Any]) -> str:
    loc = _format_loc(tuple(err["loc"]))
    kind = err["type"]
    msg = err["msg"]
    if kind == "extra_forbidden":
        return f"{loc}: unknown key; remove it or check the spelling (see `corpmerge validate --help` and the README's recipe reference)"
    if kind == "missing":
        return f"{loc}: required field is missing"
    if kind == "literal_error" and loc == "dtype":
        return f"dtype: '{err.get('input')}' is not supported; use one of {', '.join(DTYPES)}"
    if kind == "finite_number":
        return f"{loc}: must be a finite number (got {err.get('input')})"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        if msg.startswith("population["):
            return msg
    return f"{loc}: {msg}"


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    """Validate plain data as a Recipe; raise a one-line CorpmergeError naming the field."""
    if not isinstance(data, dict):
        raise CorpmergeError(f"{source}: a recipe must be a YAML mapping (key: value), got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise CorpmergeError(f"{source}: {_format_error(first)}") from None


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file."""
    path = Path(path)
    if not path.is_file():
        raise CorpmergeError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise CorpmergeError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_recipe(data, str(path))
