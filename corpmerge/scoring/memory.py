"""The scoring device's memory, planned before the backend sizes anything: where θ₀ lives, what the weight change
may allocate beside the model, and the share of the device a vLLM engine may take.

On an accelerator a vLLM engine takes ``gpu_memory_utilization`` × the device's total memory at start (weights,
activations, KV cache) and refuses to start when less is free; whatever corpmerge allocates afterwards must fit in
the rest. So the plan counts every byte corpmerge may hold on the device beside the backend's own weights:

* θ₀ of the perturbed tensors in stored precision — the scorer's copy (on the device when it fits, else on the host),
  and, for a backend that keeps θ₀ inside its workers (``vllm``), that copy, split over the tensor-parallel ranks;
* the fused kernel's temporaries: none on the device when θ₀ is there (a few bytes of seeds and amplitudes), one
  tensor of θ₀ when it is copied from the host, and a torch-ops draw's chunk where Triton is missing;
* the scorer's fallback path (updates the kernel does not write: ``ties``, several seeds on the host): a float32
  scratch and a noise batch, and ``value``'s temporaries, θ₀ in float32 and the float32 sum, for the largest tensor;
* a vLLM reload (the fallback path of a vLLM backend) copies one layer: twice the largest tensor in the scoring dtype;
* a margin for the CUDA context and the allocator's rounding.

Everything must fit in what is free on the device before the backend starts (another process may hold some of it);
the HF model is counted with 2 GiB for its forward pass. For HF what is left is the noise cache's budget (never more
than half of it, nor 8 × the model in float32, or ``scoring.memory_budget``, cut to what fits, with a warning); a vLLM
engine gets what is left (its workers write every amplitude update in place: no cache unless
``scoring.memory_budget`` asks for one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from corpmerge.errors import CorpmergeError
from corpmerge.noise import NOISE_BATCH
from corpmerge.sizes import human_bytes

log = logging.getLogger(__name__)

GiB = 1 << 30
MARGIN = GiB  # the CUDA context (≈ 0.5 GiB) and the caching allocator's rounding
ENGINE_FLOOR = 2 * GiB  # beside the weights: a vLLM engine's activations and minimal KV cache, or an HF forward pass
DRAW_CHUNK_BYTES = 104 * (1 << 22)  # the torch-ops draw: ≈ 104 bytes of int64 temporaries per element of a chunk
WINDOW_CHUNK_BYTES = 12 * (1 << 22)  # the torch-ops update: a chunk of θ₀ in float32, the noise and Δ


@dataclass(frozen=True)
class Shapes:
    """What the plan needs to know of a model: sizes only (meta tensors will do)."""

    model_params: int  # every parameter of the model, tied ones once
    perturbed: list[int]  # element counts of the perturbed tensors
    stored_bytes: int  # θ₀ of the perturbed tensors in stored precision
    stored_element: int  # bytes per element of θ₀ (the largest stored dtype)
    scoring_element: int  # bytes per element in the scoring dtype

    @property
    def largest(self) -> int:
        return max(self.perturbed, default=0)


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes on the scoring device, by holder. ``total`` None: the host (nothing to plan)."""

    total: int | None
    weights: int  # the backend's model in the scoring dtype (per tensor-parallel rank)
    theta0: int  # the scorer's θ₀ when on the device (0 on the host)
    theta0_in_workers: int  # θ₀ kept by the backend's workers (per rank)
    temporaries: int  # the weight change's temporaries: fused kernel, fallback path, reload
    margin: int
    cache: int  # the noise cache's budget
    engine_share: float | None  # gpu_memory_utilization for a vLLM engine (None: not a vLLM engine on an accelerator)

    @property
    def theta0_where(self) -> str:
        return "device" if self.theta0 else "host"

    @property
    def beside_engine(self) -> int:
        """What corpmerge holds on the device outside the backend's own allocation."""
        return self.theta0 + self.theta0_in_workers + self.temporaries + self.margin + self.cache

    def used(self) -> int:
        """The device bytes the plan allows in all: the engine's share, or the HF model and its forward pass, plus
        everything beside it."""
        engine = int(self.engine_share * self.total) if self.engine_share is not None and self.total else self.weights + ENGINE_FLOOR
        return engine + self.beside_engine

    def lines(self) -> list[str]:
        if self.total is None:
            return ["memory: scoring on the host; θ₀ kept there"]
        out = [
            f"memory plan of {human_bytes(self.total)}: model {human_bytes(self.weights)}, θ₀ on the {self.theta0_where}"
            + (f" ({human_bytes(self.theta0)})" if self.theta0 else "")
            + (f", θ₀ in the engine's workers {human_bytes(self.theta0_in_workers)}" if self.theta0_in_workers else "")
            + f", temporaries {human_bytes(self.temporaries)}, margin {human_bytes(self.margin)}, noise cache {human_bytes(self.cache)}"
        ]
        if self.engine_share is not None:
            out.append(f"memory plan: the vLLM engine gets gpu_memory_utilization {self.engine_share:.3f} ({human_bytes(int(self.engine_share * self.total))})")
        return out


def temporaries(shapes: Shapes, *, theta0_on_device: bool, fused: bool, reload: bool) -> int:
    """The weight change's peak temporaries on the device (see the module's docstring)."""
    largest, total = shapes.largest, sum(shapes.perturbed)
    kernel = 0 if theta0_on_device else largest * shapes.stored_element
    if not fused:
        kernel += DRAW_CHUNK_BYTES + WINDOW_CHUNK_BYTES
    fallback = 4 * largest + 4 * max(largest, min(total, NOISE_BATCH)) + (4 + 4 + shapes.scoring_element) * largest
    return kernel + fallback + (2 * largest * shapes.scoring_element if reload else 0)


def plan(
    shapes: Shapes,
    *,
    total: int | None,
    free: int | None = None,
    vllm: bool,
    fused: bool,
    tensor_parallel: int = 1,
    engine_share: float | None = None,
    cache_setting: int | None = None,
) -> MemoryPlan:
    """Where θ₀ goes and what the engine may take on a device of ``total`` bytes of which ``free`` are free now
    (None: all; a device shared with another process has less). ``total`` None: the host.

    ``fused``: the fused kernel runs on this device (Triton); ``engine_share``: the user's ``gpu_memory_utilization``
    (None: chosen here); ``cache_setting``: ``scoring.memory_budget`` in bytes (None: for HF half of what is left,
    for vLLM none — its workers write every amplitude update in place)."""
    weights = -(-shapes.model_params * shapes.scoring_element // tensor_parallel)
    if total is None:
        return MemoryPlan(None, weights, 0, 0, 0, 0, cache_setting or 0, None)
    free = total if free is None else min(free, total)
    if engine_share is not None and engine_share * total < weights + ENGINE_FLOOR:
        raise CorpmergeError(
            f"scoring.model_args.gpu_memory_utilization: {engine_share} gives the engine {human_bytes(int(engine_share * total))}, "
            f"less than the model ({human_bytes(weights)}) and {human_bytes(ENGINE_FLOOR)} for its KV cache and activations; raise it or leave it out"
        )
    in_workers = -(-shapes.stored_bytes // tensor_parallel) if vllm else 0
    # a backend that keeps θ₀ in its workers writes there; the scorer's copy serves the fallback path from the host
    for theta0_on_device in [False] if vllm else [True, False]:
        theta0 = shapes.stored_bytes if theta0_on_device else 0
        temps = temporaries(shapes, theta0_on_device=theta0_on_device or vllm, fused=fused, reload=vllm)
        fixed = theta0 + in_workers + temps + MARGIN
        if vllm:
            cache = cache_setting or 0
            engine = int(engine_share * total) if engine_share is not None else free - fixed - cache
            if engine < weights + ENGINE_FLOOR or engine + fixed + cache > free:
                continue
            share = engine_share if engine_share is not None else int(engine / total * 1000) / 1000  # rounded down
            return MemoryPlan(total, weights, theta0, in_workers, temps, MARGIN, cache, share)
        room = free - (weights + ENGINE_FLOOR) - fixed  # the HF model and its forward pass (activations, logits)
        if room < 0:
            continue
        cache = min(cache_setting, room) if cache_setting is not None else min(room // 2, 8 * 4 * sum(shapes.perturbed))
        if cache_setting is not None and cache < cache_setting:
            log.warning(
                "scoring.memory_budget: %s does not fit beside the model on this device; the noise cache gets %s",
                human_bytes(cache_setting),
                human_bytes(cache),
            )
        return MemoryPlan(total, weights, theta0, in_workers, temps, MARGIN, cache, None)
    need = weights + ENGINE_FLOOR + in_workers + temporaries(shapes, theta0_on_device=vllm, fused=fused, reload=vllm) + MARGIN
    setting = f"scoring.model_args.gpu_memory_utilization {engine_share} leaves too little beside it; " if engine_share is not None else ""
    raise CorpmergeError(
        f"scoring: {setting}the device's {human_bytes(free)} free of {human_bytes(total)} cannot hold the model ({human_bytes(weights)}) "
        f"and the weight change beside it (at least {human_bytes(need)} in all); use a larger device, "
        "tensor_parallel_size in scoring.model_args (vllm), or a smaller scoring.dtype"
    )
