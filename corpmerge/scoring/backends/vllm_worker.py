"""A vLLM worker extension (``worker_extension_cls``) that writes θ₀ + Σₖ aₖ·ε(sₖ) into the worker's own weight shards.

The driver sends a few numbers per update (``collective_rpc("corpmerge_write", args=(seeds, amplitudes, scheme))``);
each worker — one per tensor-parallel rank — draws only the noise elements of the shards it holds, with
``noise.write_update``, in place. Where each HF tensor's elements sit in vLLM's parameters (fused ``qkv_proj`` /
``gate_up_proj``, column- and row-parallel shards, tied embeddings) is derived once, at ``corpmerge_track``, from
the model's own ``load_weights``: every tracked HF tensor is handed in as marker values (1 + its elements' global
indices, in float64, exact below 2⁵³) into float64 copies of vLLM's loading-format parameters — ``MARKER_BYTES`` of
them at a time, the rest on ``meta``, one pass per group — and where each marker lands is read back. A tensor's elements must land in one rectangle per parameter, in row-major order with one row
stride — a window ``write_update`` writes (offset, row_stride); anything else (a permuted, scaled or quantised
layout) is refused in one line. Nothing is hard-coded per architecture.

θ₀ of each window is read from the checkpoint once, in the tensor's stored precision (the scorer's θ₀), and kept on
the parameter's device. On a GPU the live parameters are the loading-format tensors and are written in place. vLLM's
CPU kernels pre-pack linear weights (and drop the loading-format tensor), so on the CPU each tracked parameter's
loading-format values are kept in a buffer of their own, written in place, and the layer's own
``process_weights_after_loading`` packs them again (as vLLM's reload does), together with layers that share the weight
(a tied ``lm_head``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

QUALNAME = f"{__name__}.WeightWriter"
MARKER_BYTES = 1 << 30  # float64 markers materialised at once while deriving the layout (8 bytes per element)


@dataclass
class Window:
    """Elements ``offset + i·row_stride + j`` of HF tensor ``name`` live in ``dest[i, j]`` (or ``dest[j]`` when 1-D)."""

    name: str
    dest: torch.Tensor
    theta0: torch.Tensor
    offset: int
    row_stride: int

    def describe(self) -> tuple[str, int, int, int, int]:
        """(name, offset, rows, width, row_stride): what the driver checks coverage with."""
        rows, width = (1, self.dest.numel()) if self.dest.dim() == 1 else tuple(self.dest.shape)
        return self.name, self.offset, rows, width, self.row_stride


class LayoutError(ValueError):
    """vLLM's layout of a tracked tensor is not a set of windows this writer can write."""


def rectangles(name: str, where: str, positions: np.ndarray, indices: np.ndarray, shape: tuple[int, ...]) -> list[tuple[tuple[slice, ...], int, int]]:
    """The window of one HF tensor in one parameter: positions (flat, in the parameter) holding HF flat indices.

    Returns [(index into the parameter, offset, row_stride)]; the indices must be offset + i·row_stride + j
    over one rectangle rows r0:r1 × columns c0:c1 (a 1-D parameter: one range)."""
    order = np.argsort(positions, kind="stable")
    positions, indices = positions[order], indices[order]
    if len(shape) == 1:
        p0, n = int(positions[0]), len(positions)
        if positions[-1] - p0 + 1 == n and np.array_equal(indices, indices[0] + (positions - p0)):
            return [((slice(p0, p0 + n),), int(indices[0]), n)]
        raise LayoutError(f"{name} in {where}: its elements are not one contiguous range")
    cols = shape[1]
    rows_of, cols_of = positions // cols, positions % cols
    r0, r1, c0, c1 = int(rows_of.min()), int(rows_of.max()) + 1, int(cols_of.min()), int(cols_of.max()) + 1
    width = c1 - c0
    if (r1 - r0) * width != len(positions):
        raise LayoutError(f"{name} in {where}: its elements are not one rectangle")
    base = int(indices[0])  # positions are sorted row-major, so the first one is (r0, c0)
    stride = int(indices[width] - base) if r1 - r0 > 1 else width
    expected = base + (rows_of - r0) * stride + (cols_of - c0)
    if stride < width or not np.array_equal(indices, expected):
        raise LayoutError(f"{name} in {where}: its elements are not in row-major order with one row stride")
    return [((slice(r0, r1), slice(c0, c1)), base, stride)]


def _as_2d(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() <= 2 else t.reshape(t.shape[0], -1)


class WeightWriter:
    """Mixed into vLLM's worker class (``worker_extension_cls``); every method runs on every rank."""

    def corpmerge_track(self, folder: str, names: Sequence[str], marker_bytes: int = MARKER_BYTES) -> list[tuple[str, int, int, int, int]]:
        """Derive where these HF tensors live on this rank (``marker_bytes`` of markers at a time), keep θ₀ of those
        windows; returns the windows (for the driver's coverage check)."""
        from corpmerge import noise
        from corpmerge.model_io import Checkpoint

        model = self.model_runner.get_model()
        checkpoint = Checkpoint(folder)
        tracked = set(names)
        # every floating tensor is marked: a parameter the tracked ones share (k and v beside a tracked q) needs its θ₀ too
        shapes = {name: tuple(checkpoint.info(name)[0]) for name in checkpoint.names() if name in tracked or checkpoint.info(name)[1]}
        layout = _derive_layout(model, shapes, marker_bytes, required=tracked)
        dtype = self.model_runner.model_config.dtype
        repack = _repacks()
        buffers, processed, pieces_of, fills_of = {}, {}, {}, {}
        for (module, pname), pieces in layout.items():
            if not any(name in tracked for _, name, _, _, _ in pieces):
                continue
            live = module._parameters[pname]
            shape, own = pieces[0][0], False
            if not repack:
                if tuple(live.shape) != shape or live.dtype != dtype:
                    raise LayoutError(f"{pname} of {type(module).__name__}: vLLM keeps it as {tuple(live.shape)} {live.dtype}, not {shape} {dtype}")
                target = live.data
            elif tuple(live.shape) == shape and live.dtype == dtype:
                target = live.data  # the layer reads this tensor itself (an embedding, a norm, a bias)
            else:  # the layer reads a packed copy: its loading-format values kept here (padding 0, as vLLM loads it)
                target, own = torch.zeros(shape, dtype=dtype, device=live.device), True
            buffers[(module, pname)] = target
            if repack and getattr(module, "quant_method", None) is not None:
                processed[id(module)] = module
            for _, name, index, offset, stride in pieces:
                if index is None and own:
                    raise LayoutError(f"{name} shares {pname} of {type(module).__name__} with a tracked tensor, and its layout there is not windows")
                if index is None:
                    continue
                if name in tracked:
                    pieces_of.setdefault(name, []).append((_as_2d(target)[index], offset, stride))
                elif own:  # an untracked part of a buffer of ours: θ₀, written once
                    fills_of.setdefault(name, []).append((_as_2d(target)[index], offset, stride))
        windows = []
        for name in [*pieces_of, *(n for n in fills_of if n not in pieces_of)]:  # one HF tensor read at a time
            theta = checkpoint.tensor(name).reshape(-1)
            for view, offset, stride in pieces_of.get(name, []) + fills_of.get(name, []):
                rows, width = (1, view.numel()) if view.dim() == 1 else view.shape
                window = theta.as_strided((rows, width), (stride, 1), offset).reshape(view.shape).to(view.device, copy=True)
                if name in tracked:
                    windows.append(Window(name, view, window, offset, stride))
                else:
                    noise.write_update(view, window, name, [], [], offset=offset, row_stride=stride)  # θ₀ rounded, as vLLM loads it
        if repack:
            for module in _sharing(model, list(processed.values())):
                processed[id(module)] = module
        self._corpmerge = {"windows": windows, "buffers": buffers, "processed": list(processed.values())}
        log.info("corpmerge: %d windows of %d tensors on this rank; %d layers re-packed per update", len(windows), len(names), len(processed) if repack else 0)
        return [w.describe() for w in windows]

    def corpmerge_write(self, seeds: Sequence[int], amplitudes: Sequence[float], scheme: str) -> None:
        """Every tracked window ← round(θ₀ + Σₖ aₖ·ε(sₖ)) (no seeds: θ₀); then the CPU kernels' packed copies."""
        from corpmerge import noise

        state = self._corpmerge
        with torch.no_grad():
            for w in state["windows"]:
                noise.write_update(w.dest, w.theta0, w.name, seeds, amplitudes, offset=w.offset, row_stride=w.row_stride, scheme_name=scheme)
            for module in state["processed"]:
                _repack(module, state["buffers"])

    def corpmerge_weights(self) -> dict[str, list[tuple[int, int, int, int, torch.Tensor]]]:
        """What the engine holds of each tracked tensor on this rank: (offset, rows, width, row_stride, values) per window
        (tests and diagnostics: the values are read from the tensors the layers read or pack from)."""
        out: dict[str, list[tuple[int, int, int, int, torch.Tensor]]] = {}
        for w in self._corpmerge["windows"]:
            name, offset, rows, width, stride = w.describe()
            out.setdefault(name, []).append((offset, rows, width, stride, w.dest.detach().to("cpu", copy=True)))
        return out


def _repacks() -> bool:
    """Whether this platform's layers read pre-packed copies of their weights (vLLM's CPU kernels do)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _sharing(model: torch.nn.Module, modules: list[torch.nn.Module]) -> list[torch.nn.Module]:
    """Layers with a quant_method whose weight is the weight of one of ``modules`` (a tied lm_head)."""
    weights = {id(m.weight) for m in modules if isinstance(getattr(m, "weight", None), torch.Tensor)}
    return [m for m in model.modules() if getattr(m, "quant_method", None) is not None and id(getattr(m, "weight", None)) in weights]


def _repack(module: torch.nn.Module, buffers: dict[tuple[torch.nn.Module, str], torch.Tensor]) -> None:
    """The layer's own post-load processing again, from the loading-format values (vLLM's reload does the same)."""
    for (owner, pname), buffer in buffers.items():
        if owner is module and module._parameters[pname].data_ptr() != buffer.data_ptr():
            module._parameters[pname] = torch.nn.Parameter(buffer, requires_grad=False)
    module.quant_method.process_weights_after_loading(module)


def _derive_layout(
    model: torch.nn.Module, shapes: dict[str, tuple[int, ...]], budget: int = MARKER_BYTES, required: set[str] | None = None
) -> dict[tuple[torch.nn.Module, str], list[tuple[tuple[int, ...], str, tuple[slice, ...], int, int]]]:
    """Where each HF tensor's elements land, by vLLM's own ``load_weights`` on marker values.

    Returns {(module, parameter name): [(loading shape, HF name, index, offset, row_stride)]}. Every ``required`` name
    (default: all) must land somewhere on this rank (replicated or sharded); a layout that is not windows raises LayoutError.
    The parameters are marked ``budget`` bytes at a time (float64, the others on ``meta``, where writes are no-ops),
    one ``load_weights`` pass per group, so deriving holds at most ``budget`` bytes of markers beside the model."""
    from vllm.model_executor.model_loader.reload.layerwise import LAYERWISE_INFO
    from vllm.model_executor.model_loader.reload.sanitize import restore_layer_refs

    names = list(shapes)
    starts = np.cumsum([0] + [int(np.prod(shapes[n])) for n in names])
    if starts[-1] + 1 >= 2**53:
        raise LayoutError("the tracked tensors hold more than 2^53 elements")
    slots: list[tuple[torch.nn.Module, str, torch.nn.Parameter, torch.Tensor]] = []
    for module in model.modules():
        info = LAYERWISE_INFO.get(module)
        meta = info.restore_metadata[0] if info is not None else {}
        for pname, live in module._parameters.items():
            if live is not None:
                slots.append((module, pname, live, restore_layer_refs(meta[pname], module) if pname in meta else live))
    groups: list[list[int]] = [[]]
    used = 0
    for k, (_, _, _, template) in enumerate(slots):
        size = 8 * template.numel()
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(k)
        used += size
    layout: dict[tuple[torch.nn.Module, str], list] = {}
    found: set[str] = set()
    for group in groups:
        markers = _marked(model, slots, set(group), names, shapes, starts)
        for module, pname, marker in markers:
            found |= _read_back(module, pname, marker, names, starts, layout, required)
    missing = sorted((set(names) if required is None else required) - found)
    if missing:
        raise LayoutError(f"{missing[0]} loads into no parameter of the engine")
    return layout


def _marked(
    model: torch.nn.Module,
    slots: list[tuple[torch.nn.Module, str, torch.nn.Parameter, torch.Tensor]],
    chosen: set[int],
    names: list[str],
    shapes: dict[str, tuple[int, ...]],
    starts: np.ndarray,
) -> list[tuple[torch.nn.Module, str, torch.Tensor]]:
    """One ``load_weights`` pass of marker tensors: the ``chosen`` parameters as float64 markers (−1 where nothing
    lands), the others on ``meta``; the live parameters are back in place afterwards."""
    from vllm.model_executor.model_loader.reload.layerwise import _get_original_loader

    markers = []
    try:
        for k, (module, pname, _, template) in enumerate(slots):
            marker = (
                torch.full(tuple(template.shape), -1.0, dtype=torch.float64)
                if k in chosen
                else torch.empty(tuple(template.shape), dtype=torch.float64, device="meta")
            )
            marker.__class__ = template.__class__
            marker.__dict__ = template.__dict__.copy()
            if hasattr(template, "weight_loader"):  # without the wrapper a reload leaves on vLLM's recorded metadata
                marker.weight_loader = _get_original_loader(template)
            module._parameters[pname] = marker
            if k in chosen:
                markers.append((module, pname, marker))
        with torch.no_grad():
            model.load_weights(_marker_tensors(names, shapes, starts))
    finally:
        for module, pname, live, _ in slots:
            module._parameters[pname] = live
    return markers


def _read_back(
    module: torch.nn.Module,
    pname: str,
    marker: torch.Tensor,
    names: list[str],
    starts: np.ndarray,
    layout: dict[tuple[torch.nn.Module, str], list],
    required: set[str] | None,
) -> set[str]:
    """Where the markers landed in one parameter, as windows added to ``layout``; returns the HF names found there.
    A name that is not ``required`` and whose layout is not windows is added with index None (its part unknown)."""
    values = _as_2d(marker.data).reshape(-1).numpy()
    hit = np.flatnonzero(values >= 1)
    if hit.size == 0:
        return set()
    codes = values[hit] - 1
    where = f"{pname} of {type(module).__name__}"
    exact = np.floor(codes) == codes
    which = np.searchsorted(starts, np.floor(codes).astype(np.int64), side="right") - 1
    shape = tuple(_as_2d(marker.data).shape)
    found = set()
    for k in np.unique(which):
        sel = which == k
        name = names[k]
        try:
            if not exact[sel].all():
                raise LayoutError(f"{name} in {where}: vLLM transforms the checkpoint's values as it loads them")
            windows = rectangles(name, where, hit[sel], codes[sel].astype(np.int64) - starts[k], shape)
        except LayoutError:
            if required is None or name in required:
                raise
            windows = [(None, 0, 0)]
        for index, offset, stride in windows:
            layout.setdefault((module, pname), []).append((tuple(marker.shape), name, index, offset, stride))
        found.add(name)
    return found


def _marker_tensors(names: list[str], shapes: dict[str, tuple[int, ...]], starts: np.ndarray) -> Iterator[tuple[str, torch.Tensor]]:
    """Each HF tensor as 1 + its elements' global indices (one tensor alive at a time)."""
    for name, start in zip(names, starts):
        yield name, torch.arange(1 + int(start), 1 + int(start) + int(np.prod(shapes[name])), dtype=torch.float64).reshape(shapes[name])


def coverage_problem(names: dict[str, int], windows: Sequence[Sequence[tuple[str, int, int, int, int]]]) -> str | None:
    """Driver side: every element of every tracked tensor is held by some rank, else why not (one line)."""
    per_name: dict[str, list[tuple[int, int, int, int]]] = {}
    for rank in windows:
        for name, offset, rows, width, stride in rank:
            per_name.setdefault(name, []).append((offset, rows, width, stride))
    for name, numel in names.items():
        covered = np.zeros(numel, dtype=bool)
        for offset, rows, width, stride in per_name.get(name, []):
            covered[(offset + np.arange(rows)[:, None] * stride + np.arange(width)[None, :]).reshape(-1)] = True
        if not covered.all():
            return f"{int((~covered).sum())} of {numel} elements of {name} are held by no worker"
    return None
