"""Issue 36, item 1: a base is checked before anything model-sized is built (GGUF header, metadata and size)."""

from conftest import given_rewards_recipe, run_cli, write_recipe
from newuser_gguf import llama, metadata_only


def refuses(tmp_path, base, expected: str, command: str = "validate") -> str:
    recipe = write_recipe(tmp_path, given_rewards_recipe(base, tmp_path / "out"))
    result = run_cli("-q", command, str(recipe), env={"CORPMERGE_CACHE": str(tmp_path / "cache")})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert expected in " ".join(result.stderr.split()) and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()  # nothing converted, nothing written
    return lines[0]


def test_a_gguf_with_one_key_and_no_tensors_is_refused_before_anything_is_built(tmp_path):
    gguf = metadata_only(tmp_path / "one-key.gguf")
    for command in ("validate", "merge"):
        refuses(tmp_path, gguf, "cannot read the GGUF file", command)
    assert "holds no tensors" in refuses(tmp_path, gguf, "base_model:")


def test_a_gguf_whose_config_is_incomplete_is_refused(tmp_path):
    gguf = llama(tmp_path / "no-vocab.gguf", vocab=32, hidden=8, vocab_key=False)
    line = refuses(tmp_path, gguf, "metadata does not give vocab_size", "merge")
    assert "config would be guessed" in line


def test_a_truncated_gguf_is_refused_by_validate(tmp_path):
    whole = llama(tmp_path / "whole.gguf", vocab=32, hidden=8)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole.read_bytes()[:-100])
    refuses(tmp_path, cut, "base_model: cannot read the GGUF file")


def test_a_gguf_too_big_for_memory_is_refused_with_both_numbers(tmp_path):
    # complete metadata and a 10⁶ × 65536 float32 embedding: a 262 GB file whose bytes are a hole (sparse, nothing
    # allocated); converting it would need twice that in memory, more than any test machine has
    gguf = llama(tmp_path / "huge.gguf", vocab=10**6, hidden=2**16, data=False)
    line = refuses(tmp_path, gguf, "to a float32 checkpoint needs about 524.3 GB of memory, but only")
    assert "GB are available" in line
