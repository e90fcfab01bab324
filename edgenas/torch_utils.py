"""Small torch helpers every stage shares: devices, rank layout, scoped seeds and threads, batches.

They lived in ``train.py``, which made search, extraction and evaluation import the training
module for a device name. Nothing here changes global state for longer than a ``with`` block:
:func:`seeded` forks the RNGs it seeds and :func:`torch_threads` restores the thread count, so a
library user's own seeds and thread settings survive a call into edgenas.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgenas.errors import ConfigError

__all__ = [
    "DistInfo",
    "dist_info",
    "param_groups",
    "recal_batches",
    "resolve_device",
    "seeded",
    "to_device",
    "torch_threads",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """Rank layout from torchrun's environment; a plain process is rank 0 of 1."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but no CUDA device is available")
    if name in ("auto", "cuda"):
        # one GPU per rank under torchrun; a bare "cuda" would put every rank on GPU 0
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights only: decaying BN scales and biases only hurts."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


def recal_batches(data: Any, count: int, batch_size: int, seed: int, device: torch.device,
                  channels_last: bool) -> list[torch.Tensor]:
    """A fixed set of training images for BN recalibration (same images for every candidate)."""
    from edgenas.data import iterate_batches

    gen = torch.Generator().manual_seed(seed + 7_777)
    out = []
    for x, _ in iterate_batches(data.train, batch_size, shuffle=True, generator=gen, drop_last=True):
        if len(out) >= count:
            break
        out.append(to_device(x, device, channels_last))
    return out


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | str | None = None) -> Iterator[None]:
    """Run the block with torch's RNGs seeded by ``seed`` (``None``: as they are) and restore the
    caller's RNG states after.

    Weight initialisation and dropout draw from torch's global generators; seeding them inside a
    fork gives the same numbers as a bare ``torch.manual_seed`` without leaving a library user's
    RNG changed. The CUDA generator of ``device`` is forked (and seeded) too when it is a GPU.
    """
    dev = torch.device(device) if device is not None else None
    cuda = [dev] if dev is not None and dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        if seed is not None:
            torch.default_generator.manual_seed(seed)
            for d in cuda:
                with torch.cuda.device(d):
                    torch.cuda.manual_seed(seed)
        yield


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` (``None``: unchanged) and restore the count.

    Tracing and exporting batch-1 models gains nothing from intra-op threads, and on a shared
    machine two OpenMP threads contending with other jobs made one traced forward pass 10-100x
    slower (0.03 s vs up to 4 s for an spos subnet), so those steps run single-threaded.
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
