"""Where θ₀ lives while scoring: on the scoring device when it fits there, else on the host.

θ₀ stays in its stored precision (the writer adds Δ to exactly these values). On an accelerator it goes
to the device when the device's free memory holds it plus ``reserve`` bytes of scratch, so forming
θ₀ + Δ copies nothing from the host. Otherwise it stays on the host as ONE block, page-locked with
``cudaHostRegister`` (the exact size: torch's caching host allocator would round every pinned block up to
a power of two, ≈ 27 GiB for a 7B model's 14.2 GiB), or unpinned when the driver refuses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from corpmerge.sizes import human_bytes

log = logging.getLogger(__name__)
_ALIGN = 64


@dataclass
class Theta0:
    """The perturbed tensors' θ₀ and where they are: "device", "pinned host" or "host"."""

    tensors: dict[str, torch.Tensor]
    where: str
    _release: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def close(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None
        self.tensors = {}


def free_device_bytes(device: torch.device) -> int | None:
    """Free memory on an accelerator (None for the host, or a device torch cannot ask)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return None


def place(tensors: dict[str, torch.Tensor], device: torch.device, reserve: int = 0, free: int | None = None) -> Theta0:
    """θ₀ for scoring on ``device`` (``free``: the device's free bytes, asked from the device when None)."""
    if device.type == "cpu":
        return Theta0(tensors, "host")
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    free = free_device_bytes(device) if free is None else free
    if free is None or size + reserve <= free:  # a device that cannot say (meta, …): try it
        return Theta0({name: t.to(device) for name, t in tensors.items()}, "device")
    log.info("θ₀ (%s) stays on the host: %s free on %s, %s needed with scratch", human_bytes(size), human_bytes(free or 0), device, human_bytes(size + reserve))
    return pinned_block(tensors)


def pinned_block(tensors: dict[str, torch.Tensor]) -> Theta0:
    """Every tensor in one host block (64-byte aligned views), page-locked when CUDA is there and lets it."""
    offsets, total = [], 0
    for t in tensors.values():
        offsets.append(total)
        total += -(-t.numel() * t.element_size() // _ALIGN) * _ALIGN
    block = torch.empty(total, dtype=torch.uint8)
    placed = {}
    for (name, t), start in zip(tensors.items(), offsets):
        view = block[start : start + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
        view.copy_(t)
        placed[name] = view
    if not torch.cuda.is_available():
        return Theta0(placed, "host")
    cudart = torch.cuda.cudart()
    status = cudart.cudaHostRegister(block.data_ptr(), total, 0)
    if int(status) != 0:
        log.warning("θ₀ on the host is not page-locked (cudaHostRegister: %s); copies to the device are slower", status)
        return Theta0(placed, "host")
    return Theta0(placed, "pinned host", lambda: cudart.cudaHostUnregister(block.data_ptr()))
