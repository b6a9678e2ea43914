"""Rank-r updates scored through vLLM's LoRA: several entries in one engine batch, the base weights untouched.

On each perturbed matrix W (m × n, a Linear layer's weight), an update Δ = Σₖ aₖ·ε_r(sₖ) over K seeds is of rank K·r
(``noise.lowrank.stacked``): Δ = B·A, A = [V₁; …; V_K] (K·r × n), B = [a₁·c·U₁ᵀ | … | a_K·c·U_Kᵀ] (m × K·r),
c = float32(1/√r). It reaches the engine as a PEFT-format LoRA adapter (``<PREFIX><module>.lora_A/B.weight``,
r = lora_alpha = K·r, so vLLM's scaling α/r is 1), which vLLM (0.32) takes only as a folder (``LoRARequest.lora_path``):
each is written, float32, under a private temporary folder and removed with its batch. vLLM computes
y = W·x + B·(A·x) in its ``lora_dtype`` (the scoring dtype by default), so θ₀ + Δ is scored to that arithmetic's
tolerance, not bit for bit as the in-place writer's round(θ₀ + Δ).

``VllmLoRA.batch(updates)`` yields one lm-eval LM per update over the backend's one engine (started with
``engine_args``). The first LM asked for a request computes it for every update of the batch: the prompts are submitted
together, each tagged with its update's ``LoRARequest``, and vLLM's scheduler mixes up to ``max_loras`` adapters in one
forward pass; the other LMs answer that request from the batch's results. An update without a non-zero amplitude is
scored on the base (no adapter). Adapter names are never reused within an engine's life: vLLM's prefix cache keys
blocks by adapter name and path.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from contextlib import contextmanager
from itertools import count
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Iterator, Mapping, Sequence, get_args

import torch
from safetensors.torch import save_file
from vllm import SamplingParams
from vllm.config.lora import MaxLoRARanks
from vllm.inputs import TokensPrompt
from vllm.lora.request import LoRARequest

from corpmerge.errors import CorpmergeError
from corpmerge.noise import lowrank
from corpmerge.scoring.backends.vllm_lm import VllmLM, continuation_score, scoring_params

log = logging.getLogger(__name__)

PREFIX = "base_model.model."  # PEFT's prefix before the base model's module names
MAX_RANKS: tuple[int, ...] = tuple(sorted(get_args(MaxLoRARanks)))  # the values vLLM accepts for max_lora_rank
Update = tuple[Sequence[int], Sequence[float]]  # (seeds, amplitudes): Δ = Σₖ aₖ·ε_r(sₖ)


def engine_args(names: Iterable[str], adapter_rank: int, entries: int) -> dict[str, Any]:
    """vLLM engine arguments for batches of ``entries`` updates of rank up to ``adapter_rank`` (K·r) on the Linear weights
    ``names``: LoRA on, ``max_loras`` = entries, ``max_lora_rank`` the smallest value vLLM accepts that holds it (vLLM pads
    smaller adapters), and LoRA layers only where an update goes (``lora_target_modules``, the modules' last names). The
    output head is never one: vLLM 0.32's LoRA logits layer fails on prompt log-probabilities (vllm-project/vllm#29955)."""
    fitting = [rank for rank in MAX_RANKS if rank >= adapter_rank]
    if not fitting:
        raise CorpmergeError(f"population.rank: an adapter of rank {adapter_rank} exceeds vLLM's largest max_lora_rank {MAX_RANKS[-1]}")
    targets = sorted({module_name(name).rpartition(".")[2] for name in names})
    return {"enable_lora": True, "max_loras": int(entries), "max_lora_rank": fitting[0], "lora_target_modules": targets}


def module_name(name: str) -> str:
    """The Linear module of the parameter ``name`` (``<module>.weight``)."""
    if not name.endswith(".weight"):
        raise CorpmergeError(f"population.rank: '{name}' is not a Linear layer's weight, so a LoRA adapter cannot carry its update")
    return name.removesuffix(".weight")


class VllmLoRA:
    """Rank-``rank`` updates on ``matrices`` (HF parameter name → (m, n)) scored through LoRA adapters on ``backend``'s engine
    (a ``VLLMBackend``, read at each batch: ``folder_lm`` restarts it). Owns a temporary folder until ``close``."""

    def __init__(self, backend: Any, matrices: Mapping[str, Sequence[int]], rank: int, scheme: str):
        for name, shape in matrices.items():
            module_name(name)
            lowrank.check(rank, shape)
        self.backend, self.matrices, self.rank, self.scheme = backend, dict(matrices), rank, scheme
        self.folder = Path(tempfile.mkdtemp(prefix="corpmerge-lora-"))
        self._ids = count(1)  # never reused: vLLM's prefix cache keys blocks by adapter name

    @contextmanager
    def batch(self, updates: Sequence[Update]) -> Iterator[list[VllmLM]]:
        """One lm-eval LM per update, evaluated together (see the module's docstring); the adapters are loaded on entry and
        removed from the engine and the disk on exit, when the LMs lose their engine."""
        engine = self.backend.engine
        config = engine.llm_engine.vllm_config.lora_config
        if config is None:
            raise CorpmergeError("population.rank with the vllm backend: the engine was started without LoRA (model_args of vllm_lora.engine_args)")
        if len(updates) > config.max_loras:
            raise ValueError(f"vllm LoRA: {len(updates)} updates in one batch, the engine's max_loras is {config.max_loras}")
        loras: list[LoRARequest | None] = []
        lms: list[_EntryLM] = []
        try:
            for seeds, amplitudes in updates:
                loras.append(self._adapter(seeds, amplitudes, config.max_lora_rank, engine))
            shared = _Batch(engine, loras)
            lms = [_EntryLM(shared, k, engine, self.backend.tokenizer) for k in range(len(updates))]
            log.debug("vllm LoRA batch: %d updates at rank %d on %d matrices", len(updates), self.rank, len(self.matrices))
            yield lms
        finally:
            for lora in loras:
                if lora is not None:
                    engine.llm_engine.remove_lora(lora.lora_int_id)
                    shutil.rmtree(lora.lora_path, ignore_errors=True)
            for lm in lms:  # a caller's reference to an LM keeps no engine alive
                lm.engine = lm.shared.engine = None

    def _adapter(self, seeds: Sequence[int], amplitudes: Sequence[float], max_rank: int, engine: Any) -> LoRARequest | None:
        """The update's adapter folder, loaded into the engine; None for an update with no non-zero amplitude (the base)."""
        pairs = [(int(s), float(a)) for s, a in zip(seeds, amplitudes, strict=True) if a != 0]
        if not pairs:
            return None
        adapter_rank = len(pairs) * self.rank
        if adapter_rank > max_rank:
            raise CorpmergeError(
                f"vllm LoRA: an update of {len(pairs)} seeds at rank {self.rank} has rank {adapter_rank} > the engine's max_lora_rank {max_rank}"
            )
        ident = next(self._ids)
        folder = self.folder / f"adapter-{ident}"
        folder.mkdir()
        save_file(self._tensors(pairs), str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        (folder / "adapter_config.json").write_text(json.dumps(self._config(adapter_rank)))
        lora = LoRARequest(lora_name=f"corpmerge-{ident}", lora_int_id=ident, lora_path=str(folder))
        engine.llm_engine.add_lora(lora)  # loaded now: a bad adapter fails here, not mid-evaluation
        return lora

    def _tensors(self, pairs: list[tuple[int, float]]) -> dict[str, torch.Tensor]:
        """A = [Vₖ] and B = [aₖ·c·Uₖᵀ] of every matrix under PEFT's names, float32."""
        tensors = {}
        for name, shape in self.matrices.items():
            factors = [lowrank.factors(seed, name, shape, self.rank, scheme=self.scheme) for seed, _ in pairs]
            a, b = lowrank.stacked(factors, [amp for _, amp in pairs], self.rank)
            tensors[f"{PREFIX}{module_name(name)}.lora_A.weight"] = a.contiguous()
            tensors[f"{PREFIX}{module_name(name)}.lora_B.weight"] = b.contiguous()
        return tensors

    def _config(self, adapter_rank: int) -> dict[str, Any]:
        """PEFT's LoraConfig of rank R on the matrices' modules, scaling α/R = 1."""
        return {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": adapter_rank,
            "lora_alpha": adapter_rank,
            "target_modules": [module_name(name) for name in self.matrices],
            "lora_dropout": 0.0,
            "bias": "none",
            "use_rslora": False,
            "use_dora": False,
        }

    def close(self) -> None:
        """Remove the temporary folder."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "VllmLoRA":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Batch:
    """The results of a batch's updates, per update and request: a request asked by one update is computed for all."""

    def __init__(self, engine: Any, loras: list[LoRARequest | None]):
        self.engine, self.loras = engine, loras
        self.scores: list[dict[Hashable, tuple[float, bool]]] = [{} for _ in loras]
        self.generations: list[dict[Hashable, list[int]]] = [{} for _ in loras]

    def scored(self, entry: int, prompts: list[list[int]], lengths: list[int]) -> list[tuple[float, bool]]:
        keys = [(tuple(ids), n) for ids, n in zip(prompts, lengths)]
        return self._through(
            entry, self.scores, keys, prompts, [scoring_params()] * len(prompts), lambda out, i: continuation_score(out, prompts[i], lengths[i])
        )

    def generated(self, entry: int, prompts: list[list[int]], params: list[SamplingParams]) -> list[list[int]]:
        keys = [(tuple(ids), repr(p)) for ids, p in zip(prompts, params)]
        return self._through(entry, self.generations, keys, prompts, params, lambda out, i: list(out.outputs[0].token_ids))

    def _through(
        self,
        entry: int,
        done: list[dict[Hashable, Any]],
        keys: list[Hashable],
        prompts: list[list[int]],
        params: list[SamplingParams],
        reduce: Callable[[Any, int], Any],
    ) -> list[Any]:
        """``entry``'s results for ``keys``; the missing ones computed for every update in one engine call, reduced by ``reduce``."""
        jobs: dict[tuple[int, Hashable], int] = {}  # (update, key) → index of its prompt
        for i, key in enumerate(keys):
            for k, results in enumerate(done):
                if key not in results:
                    jobs.setdefault((k, key), i)
        if jobs:
            items = list(jobs.items())
            outputs = self.engine.generate(
                [TokensPrompt(prompt_token_ids=prompts[i]) for _, i in items],
                [params[i] for _, i in items],
                lora_request=[self.loras[k] for (k, _), _ in items],
                use_tqdm=False,
            )
            for ((k, key), i), out in zip(items, outputs):
                done[k][key] = reduce(out, i)
        return [done[entry][key] for key in keys]


class _EntryLM(VllmLM):
    """The lm-eval LM of one update of a batch: its engine calls go through the batch."""

    def __init__(self, shared: _Batch, entry: int, engine: Any, tokenizer: Any):
        super().__init__(engine, tokenizer)
        self.shared, self.entry = shared, entry

    def _scored(self, prompts: list[list[int]], lengths: list[int]) -> list[tuple[float, bool]]:
        return self.shared.scored(self.entry, prompts, lengths) if prompts else []

    def _generated(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[list[int]]:
        return self.shared.generated(self.entry, prompts, params) if prompts else []
