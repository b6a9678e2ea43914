"""One registry of merge methods; ``@merge_method`` turns a function into a registered method."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from corpmerge.amplitudes import Amplitudes, Cloud
from corpmerge.errors import CorpmergeError
from corpmerge.recipe import excerpt


class MethodParams(BaseModel):
    """Base class of every method's (scalar) parameters; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class TensorDelta(Protocol):
    """A merge that is not linear in the noise: Δ is computed tensor by tensor while streaming.
    ``key`` identifies the Δ it computes (same key, same tensors)."""

    key: str

    def __call__(self, name: str, shape: torch.Size) -> torch.Tensor: ...


@dataclass(frozen=True)
class MergeResult:
    """What a method returns: the update as amplitudes (linear methods) or per tensor (``ties``)."""

    method: str
    params: dict[str, Any]
    elites: np.ndarray
    weights: np.ndarray
    amplitudes: Amplitudes | None = None
    tensor_delta: TensorDelta | None = None
    multiplier: float = 1.0
    info: dict[str, Any] = field(default_factory=dict)
    offset: Amplitudes | None = None  # stage 2: Δ = offset + multiplier·step

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

    def delta(self, name: str, shape: torch.Size, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """Materialise Δ for one tensor (float32)."""
        if self.amplitudes is not None:
            return self.final_amplitudes().delta(name, shape, scratch)
        out = self.tensor_delta(name, shape)
        return out if self.multiplier == 1.0 else out * self.multiplier


@dataclass(frozen=True)
class MergeMethod:
    """A registered method: its name, parameter model and function."""

    name: str
    params: type[MethodParams]
    fn: Callable[[Cloud, Any], MergeResult]
    summary: str

    def __call__(self, cloud: Cloud, params: MethodParams) -> MergeResult:
        return self.fn(cloud, params)

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
                    raise CorpmergeError(
                        f"parameters.{key}: unknown parameter for merge_method '{self.name}'; allowed: {allowed}"
                    ) from None
                raise CorpmergeError(f"parameters.{key}: {err['msg']} (got {excerpt(err.get('input'))})") from None
        return points


_REGISTRY: dict[str, MergeMethod] = {}


def merge_method(name: str, params: type[MethodParams]) -> Callable[[Callable], Callable]:
    """Register ``fn(cloud, params) -> MergeResult`` as merge method ``name``."""

    def register(fn: Callable) -> Callable:
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else name
        _REGISTRY[name] = MergeMethod(name, params, fn, summary)
        return fn

    return register


def get_method(name: str) -> MergeMethod:
    """Look up a method by name (one-line error listing the known ones)."""
    if name not in _REGISTRY:
        raise CorpmergeError(f"merge_method: unknown method '{name}'; use one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def method_names() -> list[str]:
    return sorted(_REGISTRY)
