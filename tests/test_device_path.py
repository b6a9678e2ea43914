"""Where θ₀ lives while scoring (``scoring.theta0.place``): on the device when it fits, else one host block."""

from __future__ import annotations

import torch

from corpmerge.scoring.theta0 import place


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(3, 5, generator=g), "b": torch.randn(7, generator=g).to(torch.bfloat16), "c": torch.randn(2, 2, 2, generator=g)}


def test_theta0_goes_to_the_device_when_it_and_the_scratch_fit():
    theta = place(tensors(), torch.device("meta"), reserve=100, free=10**6)
    assert theta.where == "device"
    assert {(n, t.device.type, t.dtype, tuple(t.shape)) for n, t in theta.tensors.items()} == {
        (n, "meta", t.dtype, tuple(t.shape)) for n, t in tensors().items()
    }


def test_otherwise_theta0_stays_on_the_host_as_one_block_with_the_same_bits():
    source = tensors()
    size = sum(t.numel() * t.element_size() for t in source.values())
    theta = place(source, torch.device("meta"), reserve=100, free=size + 99)
    assert theta.where in ("host", "pinned host")  # page-locked only where CUDA is
    storages = {t.untyped_storage().data_ptr() for t in theta.tensors.values()}
    assert len(storages) == 1  # one block: the caching host allocator is not asked once per tensor
    for name, t in theta.tensors.items():
        assert t.device.type == "cpu" and t.dtype == source[name].dtype and torch.equal(t, source[name])
        assert t.data_ptr() % 64 == 0
    theta.close()
    assert theta.tensors == {}


def test_on_the_cpu_theta0_is_the_checkpoints_tensors():
    source = tensors()
    theta = place(source, torch.device("cpu"))
    assert theta.where == "host" and all(theta.tensors[n] is source[n] for n in source)
