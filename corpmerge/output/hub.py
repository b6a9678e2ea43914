"""Push a finished output folder to the Hugging Face Hub (endpoint from HF_ENDPOINT, token from the usual places)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from corpmerge.errors import CorpmergeError, first_line
from corpmerge.output.peft_adapter import CONFIG_FILE as ADAPTER_CONFIG
from corpmerge.output.peft_adapter import WEIGHTS_FILE as ADAPTER_WEIGHTS

log = logging.getLogger(__name__)

LOGIN_HINT = "run `hf auth login` (or `huggingface-cli login`), or set HF_TOKEN"


def check_complete(folder: Path) -> None:
    """A push never starts from a folder that is not a complete corpmerge/HF model folder, or a complete PEFT adapter."""
    if not folder.is_dir():
        raise CorpmergeError(f"{folder}: no such output folder")
    if (folder / ADAPTER_CONFIG).is_file():
        if not (folder / ADAPTER_WEIGHTS).is_file():
            raise CorpmergeError(f"{folder}: not a complete adapter folder ({ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} are needed)")
        return
    has_weights = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    if not (folder / "config.json").is_file() or not has_weights:
        raise CorpmergeError(f"{folder}: not a complete model folder (config.json and safetensors weights are needed)")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        missing = {f for f in json.loads(index.read_text())["weight_map"].values() if not (folder / f).is_file()}
        if missing:
            raise CorpmergeError(f"{folder}: shard(s) missing: {', '.join(sorted(missing))}")


def hub_card(folder: Path, repo_id: str) -> bytes | None:
    """The folder's README.md with the folder's absolute path, where its commands name the model (``pretrained=`` or
    ``peft=`` in lm-eval's, ``corpmerge=`` in vLLM's, quoted in Python), replaced by ``repo_id``; None when the card does not name the folder."""
    card = folder / "README.md"
    if not card.is_file():
        return None
    local = re.compile(r"(?<=[=\"])" + re.escape(str(folder.resolve())) + r"(?=[\"'`,\s]|$)", re.MULTILINE)
    text, found = local.subn(repo_id, card.read_text(encoding="utf-8"))
    return text.encode("utf-8") if found else None


def _redact(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Create the repo if needed (and the branch), upload the folder in one commit; returns the commit URL.

    The card's lm-eval command names the folder's local path when it was written; the pushed card names the repo
    instead (``hub_card``), so that the command runs for whoever reads it on the Hub."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from huggingface_hub.utils import validate_repo_id

    folder = Path(folder)
    check_complete(folder)
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise CorpmergeError(f"push_to_hub: '{repo_id}' is not a valid repo id; use 'user/name' (letters, digits, - _ .)") from None
    token = get_token()
    if not token:
        raise CorpmergeError(f"push_to_hub: no Hugging Face token found; {LOGIN_HINT}")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        card = hub_card(folder, repo_id)
        operations = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=card if name == "README.md" and card is not None else str(folder / name))
            for name in sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        ]
        commit = api.create_commit(
            repo_id=repo_id,
            operations=operations,
            revision=revision,
            commit_message=commit_message or f"corpmerge: upload {folder.name}",
        )
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise CorpmergeError(f"push_to_hub: {api.endpoint} refused the token (HTTP {status}); {LOGIN_HINT}") from None
        first = _redact(first_line(exc, None), token)
        raise CorpmergeError(f"push_to_hub: {api.endpoint} answered an error: {first}; the local folder is unchanged") from None
    except Exception as exc:  # noqa: BLE001 - transport errors differ across huggingface_hub releases (requests, httpx)
        first = _redact(first_line(exc, None), token)
        raise CorpmergeError(f"push_to_hub: cannot reach {api.endpoint} ({first}); the local folder is unchanged") from None
    url = str(commit)
    log.info("pushed %s to %s", folder, repo_id)
    return url
