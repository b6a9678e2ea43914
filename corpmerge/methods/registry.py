"""One registry of merge methods; ``@merge_method`` turns a function into a registered method."""

from __future__ import annotations

import difflib
import itertools
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from corpmerge.amplitudes import Amplitudes, Cloud
from corpmerge.errors import CorpmergeError, excerpt
from corpmerge.methods.weights import effective_size
from corpmerge.noise import DEFAULT_SCHEME

# Defaults of the parameters several methods share, in one place (each method's Field takes them from here).
DEFAULT_QUANTILE = 0.7  # elites: rewards ≥ this quantile
DEFAULT_BETA = 10.0  # reward temperature on raw rewards in [0, 1]; also the split-half diagnostic's for methods without one
DEFAULT_ALPHA = 1.0  # step: α = 1 is the weighted mean


class MethodParams(BaseModel):
    """Base class of every method's (scalar) parameters; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, strict=True)


class TensorDelta(Protocol):
    """A merge that is not linear in the noise: Δ is computed tensor by tensor while streaming.
    ``key`` identifies the Δ it computes (same key, same tensors)."""

    key: str

    def __call__(self, name: str, shape: torch.Size, scheme: str, rank: int | None = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class MergeResult:
    """What a method returns: the update as amplitudes (linear methods) or per tensor (tensor-wise methods)."""

    method: str
    params: dict[str, Any]
    elites: np.ndarray
    weights: np.ndarray
    amplitudes: Amplitudes | None = None
    tensor_delta: TensorDelta | None = None
    multiplier: float = 1.0
    info: dict[str, Any] = field(default_factory=dict)
    offset: Amplitudes | None = None  # stage 2: Δ = offset + multiplier·step
    diagnostics: dict[str, float] = field(default_factory=dict)  # what the weights did, for the report (not the lineage)

    @property
    def linear(self) -> bool:
        """The update's kind: True, Δ is the amplitude table ``final_amplitudes()`` (Σ aₛ·ε(s));
        False, Δ is computed tensor by tensor while streaming (``streamed()``)."""
        return self.amplitudes is not None

    @property
    def ess(self) -> float:
        """Effective number of elites 1/Σwᵢ² of the weights normalised to sum 1."""
        return effective_size(self.weights)

    @property
    def step_rms(self) -> float | None:
        """Per-coordinate RMS of the step multiplier·Δ₁, without a stage-2 offset (‖a‖₂); None when tensor-wise."""
        return None if self.amplitudes is None else self.amplitudes.scaled(self.multiplier).rms()

    def scaled(self, multiplier: float) -> "MergeResult":
        """The same update times ``multiplier`` (probe step calibration)."""
        return replace(self, multiplier=self.multiplier * multiplier)

    def final_amplitudes(self) -> Amplitudes | None:
        if self.amplitudes is None:
            return None
        step = self.amplitudes.scaled(self.multiplier)
        return step if self.offset is None else self.offset.plus(step)

    def streamed(self) -> tuple[str, TensorDelta, float] | None:
        """A tensor-by-tensor update as (key of Δ₁, Δ₁, m) with Δ = Δ₁ if m = 1 else Δ₁·m (what ``delta``
        computes), so a scorer can compute Δ₁ once and rescale it for every probe multiplier."""
        if self.tensor_delta is None:
            return None
        return self.tensor_delta.key, self.tensor_delta, self.multiplier

    def delta(self, name: str, shape: torch.Size, scratch: torch.Tensor | None = None, scheme: str = DEFAULT_SCHEME, rank: int | None = None) -> torch.Tensor:
        """Materialise Δ for one tensor (float32) with noise ``scheme``; ``rank``: ε is the matrix's rank-r ε_r."""
        if self.amplitudes is not None:
            return self.final_amplitudes().delta(name, shape, scratch, scheme, rank)
        out = self.tensor_delta(name, shape, scheme, rank)
        return out if self.multiplier == 1.0 else out * self.multiplier


@dataclass(frozen=True)
class MergeMethod:
    """A registered method: its name, parameter model, function, and what the pipeline needs to know of it.

    ``linear``: the update is an amplitude table Δ = Σ aₛ·ε(s) (so it can be a stage-2 step, and its
    norms and inner products are taken on amplitudes; at ``population.rank`` r it is a LoRA of rank K·r, so it can
    ship as ``output.format: peft``); otherwise it is computed tensor by tensor while streaming.
    ``elites``: the parameter q whose quantile of the rewards selects the elites (None: the method
    selects none by quantile). ``step``: the parameter α that scales Δ linearly (grid points that
    differ only in it are the same candidate with a different step). ``temperature``: the parameter
    β of reward weights softmax(β·r). Parameters are named by their field names.
    """

    name: str
    params: type[MethodParams]
    fn: Callable[[Cloud, Any], MergeResult]
    summary: str
    linear: bool = True
    elites: str | None = None
    step: str | None = None
    temperature: str | None = None

    def __call__(self, cloud: Cloud, params: MethodParams) -> MergeResult:
        result = self.fn(cloud, params)
        if result.linear != self.linear:
            kind = "an amplitude table" if self.linear else "a tensor-wise update"
            raise TypeError(f"merge method '{self.name}' is declared to return {kind}, and returned the other kind")
        return result

    def point(self, params: MethodParams | Mapping[str, Any]) -> MethodParams:
        """``params`` as this method's validated parameters (a report's dict, aliases allowed)."""
        return params if isinstance(params, self.params) else self.params.model_validate(dict(params))

    def elite_quantile(self, params: MethodParams | Mapping[str, Any]) -> float | None:
        """q of the elite set E = {i : rᵢ ≥ quantile_q(r)} at this grid point; None if the method selects none by quantile."""
        return None if self.elites is None else float(getattr(self.point(params), self.elites))

    def reward_temperature(self, params: MethodParams | Mapping[str, Any]) -> float:
        """β of the reward weights softmax(β·r) at this grid point (``DEFAULT_BETA`` for a method without one)."""
        return DEFAULT_BETA if self.temperature is None else float(getattr(self.point(params), self.temperature))

    def family(self, params: MethodParams | Mapping[str, Any]) -> str:
        """The grid point without its step parameter: points of one family build the same Δ₁ up to the factor α."""
        values = self.point(params).model_dump()
        values.pop(self.step, None)
        return repr(sorted(values.items()))

    def grid(self, raw: dict[str, Any]) -> list[MethodParams]:
        """Expand parameters (a list value is a grid axis) into validated scalar points."""
        axes = {k: (v if isinstance(v, list) else [v]) for k, v in raw.items()}
        for key, values in axes.items():
            if not values:
                raise CorpmergeError(f"parameters.{key}: an empty list is not a grid; give a value or a list of values")
        points = []
        for combo in itertools.product(*axes.values()):
            try:
                points.append(self.params.model_validate(dict(zip(axes, combo))))
            except ValidationError as exc:
                err = exc.errors(include_url=False)[0]
                key = ".".join(str(p) for p in err["loc"])
                allowed = ", ".join(f.alias or n for n, f in self.params.model_fields.items()) or "none"
                if err["type"] == "extra_forbidden":
                    close = difflib.get_close_matches(key, allowed.split(", "), n=1, cutoff=0.6)
                    hint = f"did you mean `{close[0]}`? " if close else ""
                    raise CorpmergeError(
                        f"parameters.{key}: unknown parameter for merge_method '{self.name}'; {hint}allowed: {allowed} (`corpmerge methods` lists them)"
                    ) from None
                if isinstance(err.get("input"), bool):
                    raise CorpmergeError(f"parameters.{key}: {str(err['input']).lower()} is a yes/no value, not a number; give a number") from None
                raise CorpmergeError(f"parameters.{key}: {err['msg']} (got {excerpt(err.get('input'))})") from None
        return points


_REGISTRY: dict[str, MergeMethod] = {}


def merge_method(
    name: str,
    params: type[MethodParams],
    *,
    linear: bool = True,
    elites: str | None = None,
    step: str | None = None,
    temperature: str | None = None,
) -> Callable[[Callable], Callable]:
    """Register ``fn(cloud, params) -> MergeResult`` as merge method ``name``, with its declarations (see ``MergeMethod``)."""
    for role, field_name in (("elites", elites), ("step", step), ("temperature", temperature)):
        if field_name is not None and field_name not in params.model_fields:
            raise TypeError(f"merge method '{name}': {role}='{field_name}' is not a field of {params.__name__}")

    def register(fn: Callable) -> Callable:
        summary = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split()) or name  # the first paragraph, whole
        _REGISTRY[name] = MergeMethod(name, params, fn, summary, linear, elites, step, temperature)
        return fn

    return register


def get_method(name: str) -> MergeMethod:
    """Look up a method by name (one-line error listing the known ones)."""
    if name not in _REGISTRY:
        raise CorpmergeError(f"merge_method: unknown method '{name}'; use one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def method_names() -> list[str]:
    return sorted(_REGISTRY)
