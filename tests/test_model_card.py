"""The output folder as the Hub reads it: card front matter (parsed by huggingface_hub itself) and the lineage's pinned base."""

import hashlib
import json
import shutil

import numpy as np
import yaml
from conftest import given_rewards_recipe, run_cli, scoring_recipe, write_recipe
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from tiny import write_mc_task

from corpmerge.model_io import BaseRef, resolve_base
from corpmerge.output.base_pin import pin_base

SHA = "0123456789abcdef0123456789abcdef01234567"


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_local_base_passes_its_card_and_is_pinned_by_hash(tmp_path, tiny_model):
    base = shutil.copytree(tiny_model, tmp_path / "base")
    (base / "README.md").write_text("---\nlicense: mit\nbase_model: org/upstream\nlanguage: en\n---\n# my tiny model\n")
    out = tmp_path / "out"
    result = run_cli("-q", "merge", str(write_recipe(tmp_path, given_rewards_recipe(base, out))))
    assert result.returncode == 0, result.stderr
    card = ModelCard.load(out / "README.md")  # huggingface_hub's own parser
    assert card.data.base_model == "org/upstream" and card.data.base_model_relation == "merge"
    assert card.data.library_name == "transformers" and card.data.license == "mit"
    assert {"merge", "corpmerge", "corp"} <= set(card.data.tags)
    assert card.data.eval_results is None and "model-index" not in metadata_load(out / "README.md")  # no held-out run
    assert "arXiv:2605.31494" in card.text and "arXiv:2603.12228" in card.text  # CoRP and RandOpt cited
    pin = yaml.safe_load((out / "corpmerge.yaml").read_text())["base"]
    assert pin == {
        "model": str(base),
        "weights": {"model.safetensors": sha256(base / "model.safetensors")},
        "license": "mit",
        "card_base_model": "org/upstream",
    }


def test_a_hub_base_is_pinned_to_its_revision(tmp_path, tiny_model):
    cache = tmp_path / "hub"
    snapshot = cache / "models--org--tiny" / "snapshots" / SHA
    shutil.copytree(tiny_model, snapshot)
    (cache / "models--org--tiny" / "refs").mkdir()
    (cache / "models--org--tiny" / "refs" / "main").write_text(SHA)
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, given_rewards_recipe("org/tiny", out))
    result = run_cli("-q", "merge", str(recipe), env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    pin = yaml.safe_load((out / "corpmerge.yaml").read_text())["base"]
    assert pin == {"model": "org/tiny", "hub_id": "org/tiny", "revision": SHA, "weights": {"model.safetensors": sha256(snapshot / "model.safetensors")}}
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "org/tiny" and card.data.license is None
    assert f"at revision `{SHA}`" in card.text


def test_a_gguf_base_pins_the_file_and_its_conversion(tmp_path, tiny_model):
    from gguf import GGUFWriter

    gguf = tmp_path / "tiny.gguf"
    writer = GGUFWriter(str(gguf), "llama")
    writer.add_string("general.source.huggingface.repository", "org/source")
    writer.add_string("general.license", "apache-2.0")
    writer.add_embedding_length(8), writer.add_block_count(1), writer.add_head_count(1), writer.add_vocab_size(4)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))  # a GGUF without tensors or config is refused
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    pin = pin_base(str(gguf), resolve_base(str(gguf)), BaseRef(str(tiny_model)))  # BaseRef: the converted checkpoint it loaded
    assert pin == {
        "model": str(gguf),
        "hub_id": "org/source",
        "gguf": {"file": "tiny.gguf", "sha256": sha256(gguf)},
        "weights": {"model.safetensors": sha256(tiny_model / "model.safetensors")},
        "license": "apache-2.0",
    }
    packaged = resolve_base("embedded:smollm2-135m-instruct")
    embedded = pin_base("embedded:smollm2-135m-instruct", packaged, BaseRef(str(tiny_model)))
    assert embedded["hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and embedded["license"] == "apache-2.0"
    assert embedded["gguf"]["sha256"] == sha256(tmp_path.joinpath(packaged.source, packaged.gguf_file))


def test_a_run_card_has_a_model_index_with_the_held_out_results(tmp_path, tiny_model):
    tasks = write_mc_task(tmp_path / "tasks")
    (tasks / "tiny_mc.yaml").write_text((tasks / "tiny_mc.yaml").read_text() + "metadata:\n  version: 1.0\n  dataset: org/tiny-data\n")
    out = tmp_path / "out"
    data = scoring_recipe(tiny_model, tasks, out, evaluate={"limit": 12}, gate={"enabled": False}, parameters={"quantile": 0.5, "beta": 10, "alpha": 1})
    result = run_cli("-q", "run", str(write_recipe(tmp_path, data)))
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    merged, base = report["evaluation"]["rows"]["merged"], report["evaluation"]["rows"]["base"]
    meta = metadata_load(out / "README.md")
    assert meta["datasets"] == ["org/tiny-data"] and "base_model" not in meta and "base_model_relation" not in meta  # no relation without a base_model
    name, results = model_index_to_eval_results(meta["model-index"])
    assert len(results) == 1 and name.endswith("-corpmerge-corp")
    (res,) = results
    assert (res.task_type, res.dataset_type, res.dataset_name, res.dataset_split) == ("text-generation", "org/tiny-data", "tiny_mc", "test[:12]")
    assert res.metric_type == "accuracy" and res.metric_value == round(merged["by_task"]["tiny_mc"], 4)
    card = ModelCard.load(out / "README.md")
    assert card.data.eval_results[0].metric_value == res.metric_value
    assert f"| `tiny_mc` | accuracy | {merged['by_task']['tiny_mc']:.4f} | {base['by_task']['tiny_mc']:.4f} |" in card.text  # the base beside it
