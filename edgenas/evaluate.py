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
from edgenas.train import recal_batches, to_device

__all__ = ["ArchScore", "score_archs"]


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
    batches = recal_batches(data, recal, batch_size, seed, device, channels_last)
    part = {"train": data.train, "val": data.val, "test": data.test}[split]
    out = []
    for arch in archs:
        supernet.space.validate(arch)
        with recalibrated(supernet, arch, batches):
            res = evaluate(
                lambda x, a=arch: supernet(to_device(x, device, channels_last), a),
                ((x, y.to(device)) for x, y in iterate_batches(part, batch_size, shuffle=False)),
                supernet,
            )
        out.append(ArchScore(arch.to_str(), split, res["accuracy"], res["loss"], int(res["count"])))
    return out
