"""Pinning θ₀: which base a lineage applies to, down to the bytes of its weight files.

A lineage (seed, amplitude) rebuilds the merged model only on the base it was made from. The
``base`` section of ``corpmerge.yaml`` names it:

- ``model``: the recipe's ``base_model``;
- ``hub_id``: the Hub model it is (a Hub id) or was converted from (an embedded alias, a GGUF
  file whose metadata names its source), when known; ``revision``: the Hub commit loaded;
- ``weights``: the SHA-256 of each weight file of the checkpoint loaded (for a GGUF base, the
  float32 checkpoint it was converted to), and ``gguf``: the GGUF file's name and SHA-256;
- ``license`` and ``card_base_model``: what the base says about itself (the front matter of its
  README.md, or a GGUF file's ``general.license``), for the model card.

Anyone holding a lineage can compare the hashes with the θ₀ they have.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from corpmerge.model_io import EMBEDDED, BaseRef

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLE = ("model.safetensors", "pytorch_model.bin")


def pin_base(base_model: str, origin: BaseRef, loaded: BaseRef) -> dict[str, Any]:
    """The ``base`` section of the lineage for ``base_model`` (resolved: ``origin``), whose weights were loaded from ``loaded``."""
    pin: dict[str, Any] = {"model": base_model}
    folder = Path(loaded.source) if loaded.is_local else _hub_snapshot(loaded.source)
    card = _card_metadata(folder / "README.md") if folder is not None else {}
    if base_model in EMBEDDED:
        pin["hub_id"] = EMBEDDED[base_model].hub_id
    elif not loaded.is_local:
        pin["hub_id"] = loaded.source
        if folder is not None and _COMMIT.match(folder.name):
            pin["revision"] = folder.name  # the cache's snapshot folders are named by commit
    if origin.gguf_file is not None:
        gguf = Path(origin.source) / origin.gguf_file
        pin["gguf"] = {"file": gguf.name, "sha256": sha256(gguf)}
        meta = _gguf_metadata(gguf)
        if "hub_id" not in pin and HUB_ID.match(meta.get("general.source.huggingface.repository", "")):
            pin["hub_id"] = meta["general.source.huggingface.repository"]
        card.setdefault("license", meta.get("general.license"))
    files = weight_files(folder) if folder is not None else []
    log.info("hashing the base's weight files (%d) for the lineage", len(files))
    pin["weights"] = {path.name: sha256(path) for path in files}
    if isinstance(card.get("license"), str):
        pin["license"] = card["license"]
    if isinstance(card.get("base_model"), (str, list)):
        pin["card_base_model"] = card["base_model"]
    return pin


def front_matter_base(pin: dict[str, Any] | None) -> str | list[str] | None:
    """The model card's ``base_model``: the Hub model the base is or came from, else what its own card names."""
    if not pin:
        return None
    named = pin.get("hub_id") or pin.get("card_base_model")
    ids = [named] if isinstance(named, str) else named or []
    ids = [i for i in ids if isinstance(i, str) and HUB_ID.match(i)]
    return (ids[0] if len(ids) == 1 else ids) or None


def weight_files(folder: Path) -> list[Path]:
    """The weight files a checkpoint folder loads from (its index's shards, else its single file)."""
    for index in _INDEXES:
        if (folder / index).is_file():
            shards = json.loads((folder / index).read_text()).get("weight_map", {}).values()
            return [folder / name for name in sorted(set(shards))]
    single = [folder / name for name in _SINGLE if (folder / name).is_file()]
    return single[:1] or sorted(folder.glob("*.safetensors"))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hub_snapshot(repo_id: str) -> Path | None:
    """The cache's snapshot folder of a Hub model that was just loaded (its default revision; no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return Path(found).parent if isinstance(found, str) else None


def _card_metadata(readme: Path) -> dict[str, Any]:
    """The front matter of a model card, or {} (no card, or one whose YAML does not parse)."""
    if not readme.is_file():
        return {}
    import yaml
    from huggingface_hub import metadata_load

    try:
        return dict(metadata_load(readme) or {})
    except (yaml.YAMLError, ValueError, UnicodeDecodeError) as exc:
        log.warning("the base's model card %s has unreadable front matter (%s); its license is not copied", readme, exc)
        return {}


def _gguf_metadata(path: Path) -> dict[str, str]:
    """The string ``general.*`` fields of a GGUF file ({} without the ``gguf`` package)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        return {}
    fields = GGUFReader(str(path)).fields
    out = {}
    for name, field in fields.items():
        if name.startswith("general."):
            value = field.contents()
            if isinstance(value, str):
                out[name] = value
    return out
