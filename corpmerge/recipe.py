"""The YAML recipe: bounded reading, pydantic models (unknown keys are errors) and one-line error messages.

Recipes are untrusted text. Reading one is bounded in size (``MAX_RECIPE_BYTES``), in YAML nodes
after alias expansion (``MAX_NODES``), in nesting (``MAX_DEPTH``) and in the length of every
list or mapping but the population (``MAX_ITEMS``); messages quote at most a short excerpt.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, ValidationInfo, field_validator, model_validator

from corpmerge.errors import CorpmergeError
from corpmerge.noise import DEFAULT_SCHEME, SCHEMES
from corpmerge.population import MAX_SEED, Entry, sample_population
from corpmerge.sizes import parse_size

DTYPES = ("float32", "bfloat16", "float16")
MAX_RECIPE_BYTES = 16 * 2**20
MAX_NODES = 2_000_000
MAX_POPULATION = 1_000_000  # entries of a sampled population
MAX_DEPTH = 64
MAX_ITEMS = 10_000
MAX_GRID = 10_000
MAX_PATH_CHARS = 4096


def excerpt(value: Any, limit: int = 60) -> str:
    """``value`` as a short one-line quotation: control characters escaped, long text cut with …, containers by size."""
    if isinstance(value, (list, dict)):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    text = (value if isinstance(value, str) else repr(value))[: limit + 1].encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class EntrySpec(_Strict):
    """An explicit population entry."""

    seed: int = Field(ge=0, le=MAX_SEED, description="noise seed")
    sigma: float = Field(allow_inf_nan=False, description="noise scale σ (> 0; −σ only as the mirror of a listed (seed, σ) entry)")
    reward: float | None = Field(default=None, allow_inf_nan=False, description="support reward, if already known")

    @field_validator("sigma")
    @classmethod
    def _nonzero(cls, value: float) -> float:
        if value == 0:
            raise ValueError("Input should be greater than 0 (or −σ for the mirror of a listed {seed, sigma: σ} entry)")
        return value


class SampledPopulation(_Strict):
    """A population that corpmerge samples: unique seeds, σ drawn uniformly from ``sigmas``; ``antithetic``: size/2
    mirrored pairs (s, σ), (s, −σ)."""

    size: int = Field(ge=1, le=MAX_POPULATION)
    sigmas: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(min_length=1)
    seed: int = Field(default=0, ge=0)
    antithetic: bool = Field(default=False, description="sample size/2 mirrored pairs (s, σ) and (s, −σ)")

    @field_validator("antithetic")
    @classmethod
    def _even_size(cls, value: bool, info: ValidationInfo) -> bool:
        size = info.data.get("size")
        if value and size is not None and size % 2:
            raise ValueError(f"an antithetic population is size/2 mirrored pairs, so population.size must be even (got {size}); give an even size")
        return value


def _population_kind(value: Any) -> str:
    return "entries" if isinstance(value, list) else "sampled"


Population = Annotated[
    Union[Annotated[list[EntrySpec], Field(fail_fast=True), Tag("entries")], Annotated[SampledPopulation, Tag("sampled")]],
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
        "default: on unless the scoring device is the CPU, where both compete for the same cores",
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
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        default=None, description="dtype the scored models are rounded to; default: the output dtype, so the gate scores the bits that ship"
    )
    backend: Literal["hf", "vllm"] = Field(default="hf", description="how a model is evaluated: Hugging Face transformers or a vLLM engine")
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


class Recipe(_Strict):
    """A corpmerge recipe."""

    base_model: str
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
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
        """Seeds are unique, except a mirrored pair: (s, σ) and (s, −σ), both with a reward or neither; a negative σ is
        only ever such a mirror."""
        if isinstance(value, list):
            if not value:
                raise ValueError("the list is empty, so nothing can be merged; list {seed, sigma, reward} entries or sample with {size, sigmas, seed}")
            first: dict[int, int] = {}
            paired: set[int] = set()
            for i, entry in enumerate(value):
                j = first.setdefault(entry.seed, i)
                if j == i:
                    continue
                if entry.seed in paired or value[j].sigma != -entry.sigma:
                    raise ValueError(
                        f"population[{i}].seed: seed {entry.seed} appears twice (also population[{j}]); seeds must be unique, "
                        "except a mirrored pair {seed: s, sigma: σ} and {seed: s, sigma: −σ}"
                    )
                if (value[j].reward is None) != (entry.reward is None):
                    raise ValueError(f"population[{i}].reward: a mirrored pair (here with population[{j}]) is scored together; give both rewards or neither")
                paired.add(entry.seed)
            for i, entry in enumerate(value):
                if entry.sigma < 0 and entry.seed not in paired:
                    raise ValueError(
                        f"population[{i}].sigma: Input should be greater than 0; a negative σ is only the mirror of a listed "
                        f"{{seed: {entry.seed}, sigma: {-entry.sigma!r}}} entry"
                    )
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

    def with_output(self, path: str | Path | None) -> "Recipe":
        """The recipe with ``output.path`` replaced (the work folder follows unless set explicitly)."""
        if path is None:
            return self
        return self.model_copy(update={"output": self.output.model_copy(update={"path": str(path)})})

    def entries(self) -> list[Entry]:
        """The population as entries (a sampled spec expanded deterministically)."""
        if isinstance(self.population, SampledPopulation):
            p = self.population
            return sample_population(p.size, p.sigmas, p.seed, p.antithetic)
        return [Entry(e.seed, e.sigma, e.reward) for e in self.population]

    @property
    def scoring_dtype(self) -> str:
        """The dtype scored models are rounded to: ``scoring.dtype``, else the output ``dtype`` (score what ships)."""
        return (self.scoring.dtype if self.scoring is not None else None) or self.dtype

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
            parts.append(excerpt(item, 40))
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
        return f"dtype: '{excerpt(err.get('input'))}' is not supported; use one of {', '.join(DTYPES)}"
    if kind == "finite_number":
        return f"{loc}: must be a finite number (got {excerpt(err.get('input'))})"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
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
        errors = exc.errors(include_url=False)
        unknown = [e for e in errors if e["type"] == "extra_forbidden"]  # `sigma:` is the cause of a missing `sigmas:`
        message = _format_error(unknown[0] if unknown else errors[0])
        if unknown:
            parent, key = tuple(unknown[0]["loc"][:-1]), str(unknown[0]["loc"][-1])
            missing = [str(e["loc"][-1]) for e in errors if e["type"] == "missing" and tuple(e["loc"][:-1]) == parent]
            close = difflib.get_close_matches(key, missing, n=1)
            message += f"; did you mean `{close[0]}`?" if close else ""
        raise CorpmergeError(f"{source}: {message}") from None


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file (bounded: see the module docstring)."""
    path = Path(path)
    too_big = f"a recipe may have at most {MAX_RECIPE_BYTES // 2**20} MiB; sample big populations with {{size, sigmas, seed}} instead of listing them"
    text = read_text_bounded(path, MAX_RECIPE_BYTES, "the recipe", too_big)
    if text is None:
        raise CorpmergeError(f"{path}: recipe file not found")
    return parse_recipe(read_yaml(text, str(path)), str(path))


def read_text_bounded(path: Path, limit: int, what: str, too_big: str) -> str | None:
    """A UTF-8 file of at most ``limit`` bytes (never more is read), None when there is no such file; otherwise a
    one-line error naming ``path`` (``what``: the file in those messages; ``too_big``: the message past the limit)."""
    try:
        if not path.is_file():
            return None
        with path.open("rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as exc:
        raise CorpmergeError(f"{excerpt(str(path), 200)}: cannot read {what} ({exc.strerror})") from None
    if len(raw) > limit:
        raise CorpmergeError(f"{path}: {too_big}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise CorpmergeError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); save {what} as UTF-8") from None


def dump_yaml(data: Any) -> str:
    """``yaml.safe_dump(data, sort_keys=False, allow_unicode=True)`` through libyaml when present (~2.7× faster on a
    100k-entry lineage; the same text for recipes and lineages, though libyaml may wrap long escaped strings and
    place keys of ≥ 128 bytes differently)."""
    dumper = yaml.CSafeDumper if yaml.__with_libyaml__ else yaml.SafeDumper
    return yaml.dump(data, Dumper=dumper, sort_keys=False, allow_unicode=True)


RECIPE_LONG_LISTS = frozenset({("population",)})


def read_yaml(text: str, source: str, long_lists: frozenset[tuple[str, ...]] = RECIPE_LONG_LISTS, max_nodes: int | None = None, kind: str = "recipe") -> Any:
    """One YAML document as plain data, like ``yaml.safe_load`` but bounded; one-line errors naming ``source``.

    ``long_lists``: the key paths (from the top mapping) whose list may have more than ``MAX_ITEMS`` items;
    ``max_nodes``: the bound on YAML values after alias expansion (``MAX_NODES`` when None); ``kind``: what the
    messages call the document."""
    loader = (yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader)(text)
    try:
        return _Reader(loader, long_lists, MAX_NODES if max_nodes is None else max_nodes, kind).document()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise CorpmergeError(f"{source}: not valid YAML{where}: {excerpt(problem, 120)}") from None
    except _Refused as exc:
        mark = exc.event.start_mark
        raise CorpmergeError(f"{source}: line {mark.line + 1}, column {mark.column + 1}: {exc.reason}") from None
    finally:
        loader.dispose()


class _Refused(Exception):
    """A YAML construct a recipe may not use, at ``event``."""

    def __init__(self, event: yaml.Event, reason: str) -> None:
        super().__init__(reason)
        self.event, self.reason = event, reason


_PLAIN_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]{0,17})\Z")  # a subset of YAML 1.1 ints, read to the same value
_PLAIN_FLOAT = re.compile(r"[-+]?[0-9]{1,40}\.[0-9]{0,40}\Z")  # likewise for floats
_DEFAULT_TAGS = (None, "!", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map")
_NO_KEY, _MERGE_KEY = object(), object()


class _Collection:
    """A list or mapping being read: its items so far and its size in YAML values, aliases expanded."""

    def __init__(self, event: yaml.Event, unbounded: bool, long_lists: str) -> None:
        self.event, self.unbounded, self.long_lists = event, unbounded, long_lists
        self.is_map = isinstance(event, yaml.MappingStartEvent)
        self.items: dict[Any, Any] | list[Any] = {} if self.is_map else []
        self.key: Any = _NO_KEY
        self.nodes = 1
        self.merges: list[dict[Any, Any]] = []

    def add(self, value: Any, nodes: int, event: yaml.Event, merge_key: bool) -> None:
        self.nodes += nodes
        if not self.is_map:
            self.items.append(value)
        elif self.key is _NO_KEY:
            if isinstance(value, (list, dict)):
                raise _Refused(event, "a mapping key must be a plain value, not a list or mapping")
            if not merge_key and value in self.items:
                raise _Refused(event, f"key '{excerpt(value)}' appears twice in this mapping; keep one")
            self.key = _MERGE_KEY if merge_key else value
            return
        elif self.key is _MERGE_KEY:
            sources = value if isinstance(value, list) else [value]
            if not all(isinstance(source, dict) for source in sources):
                raise _Refused(event, "a merge key (<<) needs a mapping or a list of mappings")
            self.merges.extend(sources)
            self.key = _NO_KEY
            return
        else:
            self.items[self.key] = value
            self.key = _NO_KEY
        if not self.unbounded and len(self.items) > MAX_ITEMS:
            raise _Refused(self.event, f"more than {MAX_ITEMS:,} items in one list or mapping (only {self.long_lists} may be longer)")

    def value(self) -> Any:
        if not self.merges:
            return self.items
        merged: dict[Any, Any] = {}
        for source in self.merges:  # the first merge source that has a key wins; explicit keys win over all
            for key, item in source.items():
                merged.setdefault(key, item)
        merged.update(self.items)  # keys: merged ones in order of first appearance, then the mapping's own
        return merged


class _Reader:
    """Builds plain data from parser events without recursion, counting values as if aliases were copies."""

    def __init__(self, loader: Any, long_lists: frozenset[tuple[str, ...]], max_nodes: int, kind: str) -> None:
        self.loader, self.long_lists, self.max_nodes, self.kind = loader, long_lists, max_nodes, kind
        self.long_lists_text = ", ".join(f"`{'.'.join(p)}`" for p in sorted(long_lists))
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.open_anchors: set[str] = set()
        self.nodes = 0
        self.aliased = False
        resolvers = type(loader).yaml_implicit_resolvers
        # a plain scalar is a string when no implicit resolver is registered for its first character
        self.resolved_first = None if None in resolvers else frozenset(resolvers)

    def document(self) -> Any:
        self.loader.get_event()  # stream start
        if self.loader.check_event(yaml.StreamEndEvent):
            return None
        self.loader.get_event()  # document start
        data = self._node()
        self.loader.get_event()  # document end
        if not self.loader.check_event(yaml.StreamEndEvent):
            raise _Refused(self.loader.get_event(), f"a {self.kind} file holds one YAML document; remove the extra `---` documents")
        return data

    def _too_big(self, event: yaml.Event) -> _Refused:
        cause = "anchors and aliases (&, *) expand" if self.aliased else f"the {self.kind} grows"
        return _Refused(event, f"{cause} to more than {self.max_nodes:,} YAML values; a {self.kind} may not be that big")

    def _node(self) -> Any:
        stack: list[_Collection] = []
        get_event, scalar = self.loader.get_event, self._scalar
        while True:
            event = get_event()
            kind = event.__class__
            merge_key = False
            if kind is yaml.ScalarEvent:
                merge_key = event.tag is None and event.implicit[0] and event.value == "<<"
                value, nodes = (event.value if merge_key else scalar(event)), 1
                self.nodes += 1
            elif kind is yaml.SequenceStartEvent or kind is yaml.MappingStartEvent:
                if event.tag not in _DEFAULT_TAGS:
                    raise _Refused(event, f"tag '{excerpt(event.tag)}' is not supported in a {self.kind}")
                if len(stack) >= MAX_DEPTH:
                    raise _Refused(event, f"nested more than {MAX_DEPTH} levels deep")
                self.nodes += 1  # checked at the next scalar or end: nesting is bounded
                path = tuple(c.key for c in stack) if all(c.is_map for c in stack) else None
                stack.append(_Collection(event, path in self.long_lists, self.long_lists_text))
                if event.anchor is not None:
                    self.open_anchors.add(event.anchor)
                continue
            elif kind is yaml.AliasEvent:
                if event.anchor in self.open_anchors:
                    raise _Refused(event, f"alias *{excerpt(event.anchor)} refers to a list or mapping that contains it")
                if event.anchor not in self.anchors:
                    raise _Refused(event, f"alias *{excerpt(event.anchor)} has no anchor &{excerpt(event.anchor)} before it")
                value, nodes = self.anchors[event.anchor]
                self.aliased = True
                self.nodes += nodes
            else:  # the end of a list or mapping
                done = stack.pop()
                value, nodes, event = done.value(), done.nodes, done.event
            if self.nodes > self.max_nodes:
                raise self._too_big(event)
            if kind is not yaml.AliasEvent and event.anchor is not None:
                self.anchors[event.anchor] = (value, nodes)
                self.open_anchors.discard(event.anchor)
            if not stack:
                return value
            stack[-1].add(value, nodes, event, merge_key)

    def _scalar(self, event: yaml.ScalarEvent) -> Any:
        """The scalar's value under YAML 1.1 rules, as ``yaml.safe_load`` reads it (plain numbers on a fast path)."""
        value = event.value
        if event.tag is None and event.implicit[0]:
            if value and self.resolved_first is not None and value[0] not in self.resolved_first:
                return value
            if _PLAIN_INT.match(value):
                return int(value)
            if _PLAIN_FLOAT.match(value):
                return float(value)
        tag = self.loader.resolve(yaml.ScalarNode, value, event.implicit) if event.tag in (None, "!") else event.tag
        construct = type(self.loader).yaml_constructors.get(tag)
        if construct is None:
            raise _Refused(event, f"tag '{excerpt(tag)}' is not supported in a {self.kind}")
        try:
            return construct(self.loader, yaml.ScalarNode(tag, value, event.start_mark, event.end_mark, event.style))
        except (ValueError, OverflowError, yaml.YAMLError) as exc:
            raise _Refused(event, f"cannot read '{excerpt(value)}' as {tag.rsplit(':', 1)[-1]}: {excerpt(str(exc), 80)}") from None
