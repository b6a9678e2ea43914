import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import given_rewards_recipe, run_cli, write_recipe
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from corpmerge.merge import merge_recipe
from corpmerge.noise import gaussian
from corpmerge.recipe import parse_recipe


def merged_state(folder: Path) -> dict[str, torch.Tensor]:
    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(file))
    return state


def base_state(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def merge(tmp_path, base, name="out", **overrides):
    recipe = parse_recipe(given_rewards_recipe(base, tmp_path / name, **overrides))
    path, result = merge_recipe(recipe)
    return path, result


def test_best_writes_exactly_base_plus_sigma_noise(tmp_path, tiny_model):
    out, _ = merge(tmp_path, tiny_model, merge_method="best", parameters={})
    merged, base = merged_state(out), base_state(tiny_model)
    assert set(merged) == set(base) - {"lm_head.weight"} or set(merged) == set(base)
    for name, tensor in merged.items():
        expected = base[name] + 0.01 * gaussian(103, name, base[name].shape)  # seed 103 has the top reward
        assert torch.equal(tensor, expected), name


def test_best_in_bfloat16_rounds_once(tmp_path, tiny_model):
    out, _ = merge(tmp_path, tiny_model, merge_method="best", parameters={}, dtype="bfloat16")
    merged, base = merged_state(out), base_state(tiny_model)
    for name, tensor in merged.items():
        assert tensor.dtype == torch.bfloat16
        expected = (base[name] + 0.01 * gaussian(103, name, base[name].shape)).to(torch.bfloat16)
        assert torch.equal(tensor, expected), name
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_reward_avg_equal_rewards_is_mean_of_updates(tmp_path, tiny_model):
    pop = [{"seed": s, "sigma": 0.01 * (i + 1), "reward": 0.5} for i, s in enumerate([7, 8, 9])]
    out, _ = merge(tmp_path, tiny_model, merge_method="reward_avg", population=pop, parameters={"quantile": 0.0})
    merged, base = merged_state(out), base_state(tiny_model)
    for name, tensor in merged.items():
        mean = sum(p["sigma"] * gaussian(p["seed"], name, base[name].shape) for p in pop) / 3
        assert torch.allclose(tensor, base[name] + mean, atol=1e-6), name


def test_corp_single_elite_and_ties_single_elite(tmp_path, tiny_model):
    out_corp, res = merge(tmp_path, tiny_model, "corp", parameters={"quantile": 0.95, "alpha": 2})
    out_ties, _ = merge(tmp_path, tiny_model, "ties", merge_method="ties", parameters={"quantile": 0.95, "density": 1.0})
    merged_c, merged_t, base = merged_state(out_corp), merged_state(out_ties), base_state(tiny_model)
    assert res.elites.tolist() == [2]
    for name in merged_c:
        noise = gaussian(103, name, base[name].shape)
        assert torch.allclose(merged_c[name], base[name] + 2 * 0.01 * noise, atol=1e-7), name
        assert torch.equal(merged_t[name], base[name] + 0.01 * noise), name


@pytest.mark.parametrize("method", ["corp", "reward_avg", "topk_subspace", "ties", "best"])
def test_every_method_writes_a_loadable_model(tmp_path, tiny_model, method):
    params = {} if method == "best" else {"quantile": 0.5}
    out, _ = merge(tmp_path, tiny_model, merge_method=method, parameters=params)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    for file in ["config.json", "generation_config.json", "tokenizer.json", "README.md", "corpmerge.yaml", "model.safetensors"]:
        assert (out / file).is_file(), file
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    tags = {"best": ["corpmerge"], "corp": ["merge", "corpmerge", "corp"]}.get(method, ["merge", "corpmerge"])  # best keeps one entry
    assert front["library_name"] == "transformers" and front["tags"] == tags
    assert "base_model" not in front and "base_model_relation" not in front  # a local folder is no Hub id, so no relation
    lineage = yaml.safe_load((out / "corpmerge.yaml").read_text())
    assert lineage["merge"]["method"] == method
    assert lineage["recipe"]["population"][0]["reward"] == 0.40


def test_same_recipe_twice_is_byte_identical(tmp_path, tiny_model):
    a, _ = merge(tmp_path, tiny_model, "a")
    b, _ = merge(tmp_path, tiny_model, "b")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_multi_shard_equals_single_shard(tmp_path, tiny_model):
    single, _ = merge(tmp_path, tiny_model, "single")
    sharded, _ = merge(tmp_path, tiny_model, "sharded", output={"path": str(tmp_path / "sharded"), "max_shard_size": "20KB"})
    files = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(files)
    a, b = merged_state(single), merged_state(sharded)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in b.values())
    m1 = AutoModelForCausalLM.from_pretrained(single)
    m2 = AutoModelForCausalLM.from_pretrained(sharded)
    for (n1, p1), (n2, p2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_untied_model_keeps_both_matrices(tmp_path, tiny_untied):
    out, _ = merge(tmp_path, tiny_untied, merge_method="best", parameters={})
    merged, base = merged_state(out), base_state(tiny_untied)
    assert "lm_head.weight" in merged
    expected = base["lm_head.weight"] + 0.01 * gaussian(103, "lm_head.weight", base["lm_head.weight"].shape)
    assert torch.equal(merged["lm_head.weight"], expected)


def test_perturb_patterns_limit_what_changes(tmp_path, tiny_model):
    out, _ = merge(tmp_path, tiny_model, merge_method="best", parameters={}, perturb={"include": ["model.layers.*"], "exclude": ["*norm*"]})
    merged, base = merged_state(out), base_state(tiny_model)
    for name, tensor in merged.items():
        changed = not torch.equal(tensor, base[name])
        assert changed == (name.startswith("model.layers.") and "norm" not in name), name


def test_cli_merge_and_overwrite(tmp_path, tiny_model):
    recipe = write_recipe(tmp_path, given_rewards_recipe(tiny_model, tmp_path / "cli-out"))
    first = run_cli("-q", "merge", str(recipe))
    assert first.returncode == 0, first.stderr
    assert "merged with corp" in first.stdout
    again = run_cli("-q", "merge", str(recipe))
    assert again.returncode == 2 and "already exists" in again.stderr and "--overwrite" in again.stderr
    forced = run_cli("-q", "merge", str(recipe), "--overwrite", "-o", str(tmp_path / "cli-out"))
    assert forced.returncode == 0, forced.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cli-out")]


def test_interrupted_write_leaves_no_finished_looking_folder(tmp_path, tiny_model, monkeypatch):
    import corpmerge.output.safetensors_writer as writer

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        merge(tmp_path, tiny_model, "broken")
    assert not (tmp_path / "broken").exists()
    assert list(tmp_path.iterdir()) == []
