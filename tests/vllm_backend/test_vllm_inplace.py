"""Updates written by the engine's own workers (``vllm_worker``): written = scored, bit for bit, with one and two ranks.

One engine per case, shared by the module's tests: a tiny Llama on one rank (float32 checkpoint scored in bfloat16:
θ₀ read in stored precision, one rounding) and a tiny Qwen2 on two tensor-parallel ranks (biases, tied embeddings,
column- and row-parallel shards of fused qkv_proj / gate_up_proj).
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("vllm")

import numpy as np
import torch
from lm_eval.api.instance import Instance
from tiny import build_tiny_model
from vllm_tiny import ENGINE_ARGS, SPLITTABLE, checkpoint_state, tiny_qwen2

from corpmerge import noise
from corpmerge.scoring.backends.vllm import VLLMBackend
from corpmerge.scoring.backends.vllm_worker import LayoutError, coverage_problem, rectangles

CPU = torch.device("cpu")
LL = [Instance("loglikelihood", {}, (f"{a}+{b}=", f" {a + b}"), 0) for a in range(4) for b in range(3)]
GEN = [Instance("generate_until", {}, (f"{a}*3=", {"until": ["\n"], "do_sample": False, "max_gen_toks": 6}), 0) for a in range(4)]
SEEDS, AMPS = [11, 12, 13], [0.02, -0.01, 0.015]


CASES = {"llama-tp1": (1, torch.bfloat16), "qwen2-tp2": (2, torch.float32)}


@pytest.fixture(scope="module", params=list(CASES))
def engine(request, tmp_path_factory):
    """(backend, checkpoint θ₀, base answers, folder) with every tensor tracked."""
    from transformers import AutoTokenizer

    ranks, dtype = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param) / "model"
    if request.param.startswith("qwen2"):
        tiny_qwen2(folder)
    else:
        build_tiny_model(folder, tie=False, **SPLITTABLE)
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(["0", "1"][:ranks]) if ranks > 1 else "nobind"  # one core per rank
    backend = VLLMBackend(
        checkpoint=folder, tokenizer=AutoTokenizer.from_pretrained(folder), device=CPU, dtype=dtype, model_args={**ENGINE_ARGS, "tensor_parallel_size": ranks}
    )
    theta0 = checkpoint_state(folder)
    base = answers(backend)
    backend.track(theta0)
    yield backend, theta0, base, folder
    backend.close()
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"


def answers(backend) -> tuple:
    return answers_of(backend.lm)


def answers_of(lm) -> tuple:
    return lm.loglikelihood(LL), lm.generate_until(GEN)


def expected(theta0: dict[str, torch.Tensor], dtype: torch.dtype, seeds, amps) -> dict[str, torch.Tensor]:
    """What the writer writes: noise.write_update on each whole HF tensor."""
    out = {}
    for name, theta in theta0.items():
        flat = theta.reshape(-1)
        dest = torch.empty_like(flat, dtype=dtype)
        noise.write_update(dest, flat, name, seeds, amps)
        out[name] = dest
    return out


def test_every_rank_holds_what_the_writer_writes_bit_for_bit(engine):
    backend, theta0, _, _ = engine
    backend.write(SEEDS, AMPS, noise.DEFAULT_SCHEME)
    want = expected(theta0, backend.dtype, SEEDS, AMPS)
    held = backend.engine.collective_rpc("corpmerge_weights")
    assert len(held) == backend.ranks and all(set(rank) == set(theta0) for rank in held)
    seen = {name: torch.zeros(t.numel(), dtype=torch.bool) for name, t in theta0.items()}
    for rank in held:
        for name, windows in rank.items():
            for offset, rows, width, stride, values in windows:
                index = (offset + torch.arange(rows)[:, None] * stride + torch.arange(width)[None, :]).reshape(-1)
                assert torch.equal(want[name][index].view(torch.uint8), values.reshape(-1).contiguous().view(torch.uint8)), name
                seen[name][index] = True
    assert all(mask.all() for mask in seen.values())
    if backend.ranks > 1:  # sharded for real: some tensor is split between the ranks
        assert any(sum(w[1] * w[2] for w in rank[name]) < theta0[name].numel() for rank in held for name in rank)


def test_a_layout_derived_a_few_parameters_at_a_time_is_the_same(engine):
    """The markers are materialised MARKER_BYTES at a time (the rest on meta): 64 KiB at a time gives the same windows."""
    backend, theta0, _, folder = engine
    whole = backend.engine.collective_rpc("corpmerge_track", args=(str(folder), list(theta0)))
    assert backend.engine.collective_rpc("corpmerge_track", args=(str(folder), list(theta0), 64 << 10)) == whole


def test_the_engine_scores_what_was_written_and_restores_theta0_exactly(engine):
    """Written in the workers = loaded through vLLM's own reload of the same tensors (its loaders, its re-packing)."""
    backend, theta0, base, _ = engine
    backend.write(SEEDS, AMPS, noise.DEFAULT_SCHEME)
    written = answers(backend)
    assert written != base
    tensors = expected(theta0, backend.dtype, SEEDS, AMPS)
    backend.load((name, tensors[name].view(theta0[name].shape)) for name in theta0)
    assert answers(backend) == written
    backend.restore()
    assert answers(backend) == base
    backend.write(SEEDS[:1], AMPS[:1], noise.DEFAULT_SCHEME)
    assert answers(backend) not in (base, written)
    backend.write([], [], noise.DEFAULT_SCHEME)
    assert answers(backend) == base


def test_a_partial_set_leaves_the_rest_of_a_fused_parameter_at_theta0(engine):
    """Only q_proj and gate_proj tracked: qkv_proj and gate_up_proj hold θ₀'s k, v and up beside them (on the CPU the
    layer is re-packed from a buffer of ours, whose untracked parts are filled once), as vLLM's reload of the same does."""
    backend, theta0, base, _ = engine
    part = {name: t for name, t in theta0.items() if "q_proj" in name or "gate_proj" in name}
    backend.track(part)
    try:
        backend.write(SEEDS, AMPS, noise.DEFAULT_SCHEME)
        written = answers(backend)
        backend.load((name, t.view(theta0[name].shape)) for name, t in expected(part, backend.dtype, SEEDS, AMPS).items())
        assert answers(backend) == written != base
        backend.restore()
        assert answers(backend) == base
    finally:
        backend.track(theta0)


def test_the_prefix_cache_is_reset_after_a_write(engine):
    backend, _, _, _ = engine
    shared = [Instance("generate_until", {}, ("0123456789" * 12 + f"{k}", {"until": ["\n"], "do_sample": False, "max_gen_toks": 6}), 0) for k in range(3)]
    backend.lm.generate_until(shared)  # the prefix's blocks cached under θ₀
    backend.write(SEEDS, AMPS, noise.DEFAULT_SCHEME)
    after = backend.lm.generate_until(shared)
    backend.engine.reset_prefix_cache()
    assert backend.lm.generate_until(shared) == after
    backend.restore()


def test_a_layout_that_is_not_windows_is_refused():
    """The derivation's checks, on marker read-backs vLLM could produce: a transposed copy (GPT-2's Conv1D) and a gap."""
    shape = (4, 6)
    grid = np.arange(24).reshape(shape)
    positions = grid[1:3, 2:5].reshape(-1)  # rows 1:3, columns 2:5 of the parameter
    assert rectangles("w", "p", positions, 100 + (np.arange(2)[:, None] * 9 + np.arange(3)).reshape(-1), shape) == [((slice(1, 3), slice(2, 5)), 100, 9)]
    with pytest.raises(LayoutError, match="not in row-major order"):
        rectangles("w", "p", grid.reshape(-1), grid.T.reshape(-1), shape)  # the parameter holds the HF tensor transposed
    with pytest.raises(LayoutError, match="not one rectangle"):
        rectangles("w", "p", np.array([0, 1, 7]), np.array([0, 1, 7]), shape)
    assert coverage_problem({"w": 24}, [[("w", 0, 2, 6, 6)], [("w", 12, 2, 6, 6)]]) is None
    assert coverage_problem({"w": 24}, [[("w", 0, 2, 6, 6)], [("w", 12, 2, 5, 6)]]) == "2 of 24 elements of w are held by no worker"


def engine_processes() -> set[int]:
    """vLLM's worker processes below this one (one per rank with tensor parallelism)."""
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True) if p.name().startswith("VLLM::Worker") and p.status() != psutil.STATUS_ZOMBIE}


def test_the_shipped_check_starts_its_engine_once_the_scoring_engine_is_gone(engine):
    """At most one engine at a time: the scoring engine's worker processes have ended before the folder's engine runs;
    afterwards the scoring engine is back at θ₀ and writes in place again (its windows derived anew)."""
    backend, theta0, base, folder = engine
    if backend.ranks == 1:
        pytest.skip("one rank, no worker processes: test_vllm_engine.py covers the in-process engine")
    scoring = engine_processes()
    assert len(scoring) == backend.ranks
    with backend.folder_lm(folder) as lm:
        shipped = engine_processes()
        assert len(shipped) == backend.ranks and not shipped & scoring
        assert answers_of(lm) == base  # the folder is the base, in the scoring dtype (float32)
    assert not engine_processes() & (scoring | shipped) and answers(backend) == base
    backend.write(SEEDS, AMPS, noise.DEFAULT_SCHEME)
    written = answers(backend)
    backend.load((name, t.view(theta0[name].shape)) for name, t in expected(theta0, backend.dtype, SEEDS, AMPS).items())
    assert answers(backend) == written != base
    backend.restore()
