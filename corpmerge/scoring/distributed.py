"""Process topology under a standard launcher (`accelerate launch`, `torchrun`): rank, size, device, barrier.

Rank 0 runs the pipeline and coordinates (``corpmerge.scoring.coordinator``); the other ranks evaluate.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    device: torch.device
    barrier: Callable[[], None]

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class Peer:
    """Where a rank's process runs: enough for rank 0 to stop it when both share a kernel and a PID namespace."""

    host: str
    machine: str | None  # boot id and PID namespace; None where /proc does not say
    pid: int
    started: int | None  # the process's start time in clock ticks since boot (guards against a reused pid)

    @classmethod
    def here(cls) -> "Peer":
        return cls(socket.gethostname(), _machine(), os.getpid(), _start_time(os.getpid()))

    def state(self) -> str:
        """ "alive" (this process, on this machine), "gone" (it was on this machine and has exited) or "elsewhere"."""
        if self.machine is None or self.machine != _machine():
            return "elsewhere"
        return "alive" if self.started is not None and _start_time(self.pid) == self.started else "gone"


def _machine() -> str | None:
    try:
        return f"{Path('/proc/sys/kernel/random/boot_id').read_text().strip()}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


def _start_time(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def current_world() -> World:
    """The launcher's world (gloo on CPU, NCCL on GPUs), or a single process when not launched."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        return World(0, 1, device, lambda: None)
    from accelerate import PartialState

    _join_restarted_attempt()
    state = PartialState(cpu=not torch.cuda.is_available())
    atexit.register(_destroy_process_groups)
    if state.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // state.num_processes))
    return World(state.process_index, state.num_processes, state.device, state.wait_for_everyone)


def _destroy_process_groups() -> None:
    """Close the process groups before the interpreter exits.

    Left to the interpreter's teardown, gloo's threads are sometimes destroyed while joinable and
    the process aborts ("terminate called without an active exception", exit -6) after it finished.
    Destroying closes the connections, which the other ranks see only once they are done with us.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _join_restarted_attempt() -> None:
    """After a ``torchrun --max-restarts`` restart, join the process group on keys of this attempt only.

    With the rendezvous store shared between the agent and its processes (torch's default since
    2.5), the agent keeps one store across restarts and the restarted processes find the previous
    attempt's gloo addresses in it: the group fails to form ("connectFullMesh failed … Connection
    refused") or hangs. On one node every process has its agent's restart count, so the keys are
    scoped by it here; across nodes the counts can differ (an agent whose processes did not fail
    does not count a restart), so there the launcher has to be started with
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, which gives every attempt a store of its own.
    """
    import torch.distributed as dist

    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if not restarts or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or dist.is_initialized():
        return
    size = int(os.environ["WORLD_SIZE"])
    if int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0) != size:
        log.warning(
            "restart %d of a multi-node torchrun with the shared rendezvous store: if the processes cannot connect, "
            "start torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1",
            restarts,
        )
        return
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False)
    dist.init_process_group(
        "nccl" if torch.cuda.is_available() else "gloo",
        store=dist.PrefixStore(f"corpmerge/attempt_{restarts}", store),
        rank=int(os.environ["RANK"]),
        world_size=size,
    )
