"""Loading the base checkpoint and naming its tensors."""

from __future__ import annotations

import fnmatch
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from corpmerge.errors import CorpmergeError
from corpmerge.recipe import PerturbSpec

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class BaseRef:
    """Where the base comes from: a folder or Hub id, plus a GGUF file name when it is one."""

    source: str
    gguf_file: str | None = None

    @property
    def is_local(self) -> bool:
        return Path(self.source).exists()


def resolve_base(base_model: str) -> BaseRef:
    """Resolve ``base_model`` to a loadable reference, with a one-line error when it is missing."""
    path = Path(base_model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return BaseRef(str(path.parent), gguf_file=path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CorpmergeError(f"base_model: '{base_model}' has no config.json; point it at a Hugging Face checkpoint folder")
        return BaseRef(str(path))
    looks_local = base_model.startswith((".", "/", "~")) or path.suffix == ".gguf" or not _HUB_ID.match(base_model)
    if looks_local:
        raise CorpmergeError(
            f"base_model: '{base_model}' not found; give an existing checkpoint folder, a .gguf file or a Hub id (org/name)"
        )
    return BaseRef(base_model)


def load_base(ref: BaseRef) -> torch.nn.Module:
    """Load the base as a float32 causal LM in eval mode."""
    from transformers import AutoModelForCausalLM

    kwargs = {"gguf_file": ref.gguf_file} if ref.gguf_file else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(ref.source, dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorpmergeError(f"base_model: cannot load '{ref.source}': {first}") from None
    return model.eval()


def load_tokenizer(ref: BaseRef):
    """The base's tokenizer, or None (with a warning) when it has none."""
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": ref.gguf_file} if ref.gguf_file else {}
    try:
        return AutoTokenizer.from_pretrained(ref.source, **kwargs)
    except (OSError, ValueError, TypeError) as exc:
        log.warning("base model has no usable tokenizer (%s); the output will have none", str(exc).splitlines()[0])
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
