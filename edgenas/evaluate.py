"""Score architectures of a trained supernet on a data split, the read-only way.

Scoring = recalibrate the path's BN statistics on fixed training batches, then measure top-1
accuracy and loss on the split, all inside :func:`edgenas.supernet.recalibrated`, so the
supernet is bit-for-bit unchanged afterwards. Search uses the validation split; the test split
is for final reporting only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from edgenas.data import DatasetSplits, iterate_batches
from edgenas.errors import EdgenasError
from edgenas.space import Arch
from edgenas.supernet import Supernet, evaluate, recalibrated
from edgenas.torch_utils import recal_batches, to_device

__all__ = ["ArchScore", "prepare_scoring", "score_arch", "score_archs"]


@dataclass(frozen=True)
class ArchScore:
    arch: str
    split: str
    accuracy: float
    loss: float
    count: int


def score_archs(
    supernet: Supernet,
    archs: Sequence[Arch],
    data: DatasetSplits,
    *,
    split: Literal["train", "val", "test"] = "val",
    recal: int = 10,
    batch_size: int = 256,
    device: torch.device | None = None,
    channels_last: bool = True,
    seed: int = 0,
) -> list[ArchScore]:
    """Accuracy and loss of each architecture on ``split`` with recalibrated BN."""
    device, recal_set = prepare_scoring(supernet, data, recal=recal, batch_size=batch_size, device=device,
                                        channels_last=channels_last, seed=seed)
    return [score_arch(supernet, arch, data, recal_set, split=split, batch_size=batch_size, device=device,
                       channels_last=channels_last) for arch in archs]


def prepare_scoring(
    supernet: Supernet, data: DatasetSplits, *, recal: int = 10, batch_size: int = 256,
    device: torch.device | None = None, channels_last: bool = True, seed: int = 0,
) -> tuple[torch.device, list[torch.Tensor]]:
    """Check the supernet fits the data, place it, and draw the fixed recalibration batches.

    Done once per search rather than per candidate: the batches are the same for every candidate
    (fixed seed), so rebuilding them for each one only repeats work.
    """
    if data.num_classes != supernet.num_classes:
        raise EdgenasError(
            f"the supernet has {supernet.num_classes} classes but dataset {data.name} has {data.num_classes}"
        )
    if data.in_channels != supernet.in_channels:
        raise EdgenasError(
            f"the supernet takes {supernet.in_channels}-channel input but dataset {data.name} has {data.in_channels}"
        )
    device = device or next(supernet.parameters()).device
    supernet.to(device)
    if channels_last:
        supernet.to(memory_format=torch.channels_last)
    return device, recal_batches(data, recal, batch_size, seed, device, channels_last)


def score_arch(
    supernet: Supernet, arch: Arch, data: DatasetSplits, recal_set: list[torch.Tensor], *,
    split: Literal["train", "val", "test"] = "val", batch_size: int = 256, device: torch.device,
    channels_last: bool = True,
) -> ArchScore:
    """Score one architecture with BN recalibrated on ``recal_set`` (see :func:`prepare_scoring`)."""
    supernet.space.validate(arch)
    part = {"train": data.train, "val": data.val, "test": data.test}[split]
    with recalibrated(supernet, arch, recal_set):
        res = evaluate(
            lambda x: supernet(to_device(x, device, channels_last), arch),
            ((x, y.to(device)) for x, y in iterate_batches(part, batch_size, shuffle=False)),
            supernet,
        )
    return ArchScore(arch.to_str(), split, res["accuracy"], res["loss"], int(res["count"]))
