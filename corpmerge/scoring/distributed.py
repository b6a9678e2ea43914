"""Process topology under a standard launcher (`accelerate launch`, `torchrun`): rank, size, device, barrier.

Rank 0 runs the pipeline and coordinates (``corpmerge.scoring.coordinator``); the other ranks evaluate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    device: torch.device
    barrier: Callable[[], None]

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_world() -> World:
    """The launcher's world (gloo on CPU, NCCL on GPUs), or a single process when not launched."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        return World(0, 1, device, lambda: None)
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if state.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // state.num_processes))
    return World(state.process_index, state.num_processes, state.device, state.wait_for_everyone)
