"""Tiny models and tokenizers built in temporary folders (no network)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

VOCAB = 260


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: one token per byte, plus <eos> and <pad>."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<eos>"] = len(vocab)
    vocab["<pad>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def build_tiny_model(folder: Path, *, tie: bool = True, seed: int = 0, dtype: torch.dtype = torch.float32, **config_args) -> Path:
    """Save a 2-layer Llama with hidden size 32 (and its tokenizer) into ``folder``; ``config_args`` override LlamaConfig fields."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        **{
            "vocab_size": VOCAB,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "tie_word_embeddings": tie,
            "eos_token_id": 256,
            "pad_token_id": 257,
            "bos_token_id": None,
            **config_args,
        }
    )
    model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def write_mc_task(folder: Path, name: str = "tiny_mc", n_train: int = 100, n_test: int = 16) -> Path:
    """A 4-choice loglikelihood task over additions, as local JSONL files (absolute paths)."""
    import json
    import random

    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)

    def rows(n: int) -> list[dict]:
        out = []
        for _ in range(n):
            a, b = rng.randint(0, 20), rng.randint(0, 20)
            wrong = rng.sample([x for x in range(41) if x != a + b], 3)
            choices = [a + b, *wrong]
            rng.shuffle(choices)
            out.append({"question": f"{a}+{b}=", "choices": [str(c) for c in choices], "answer": choices.index(a + b)})
        return out

    for split, n in (("train", n_train), ("test", n_test)):
        (folder / f"{name}_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(n)))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    train: {folder / (name + '_train.jsonl')}\n"
        f"    test: {folder / (name + '_test.jsonl')}\n"
        "output_type: multiple_choice\n"
        "training_split: train\n"
        "test_split: test\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: answer\n"
        "metric_list:\n"
        "  - metric: acc\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
    )
    return folder
