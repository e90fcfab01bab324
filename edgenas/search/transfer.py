"""Transfer a supernet trained on dataset A to dataset B, for the shifting search to train on B.

The classifier is always replaced (B's labels mean something else even when the class count
matches) with a seeded initialisation, so a transfer is reproducible. When B's images have another
channel count, the stem's first convolution is rebuilt for it from the trained filters: every new
input channel gets the sum of the old filters over the input channels divided by the new count,
which gives the same response as before to an image whose channels are all equal (grey RGB
from grey, or grey from averaged RGB), instead of throwing the stem away. Each change is
reported as a note for the user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgenas.data import DatasetSplits
from edgenas.errors import CheckpointError
from edgenas.supernet import Supernet, load_checkpoint

__all__ = ["TransferResult", "adapt_stem_input", "transfer_supernet"]


@dataclass
class TransferResult:
    supernet: Supernet
    source_meta: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def adapt_stem_input(supernet: Supernet, in_channels: int) -> str:
    """Rebuild the stem's first convolution for ``in_channels`` inputs; returns the note to show."""
    old_in = supernet.in_channels
    name, conv = next(((n, m) for n, m in supernet.stem.named_modules() if isinstance(m, nn.Conv2d)), ("", None))
    if conv is None or conv.in_channels != old_in or conv.groups != 1:
        raise CheckpointError(f"cannot adapt the stem of {supernet.space.name} to {in_channels}-channel input: "
                              "its first layer is not a plain convolution over the input channels")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,  # type: ignore[arg-type]
                    conv.dilation, 1, conv.bias is not None, conv.padding_mode).to(conv.weight.device)
    with torch.no_grad():
        summed = conv.weight.sum(dim=1, keepdim=True) / in_channels
        new.weight.copy_(summed.expand(-1, in_channels, -1, -1))
        if conv.bias is not None and new.bias is not None:
            new.bias.copy_(conv.bias)
    parent_name, _, leaf = name.rpartition(".")
    parent = supernet.stem.get_submodule(parent_name) if parent_name else supernet.stem
    setattr(parent, leaf, new)
    if hasattr(supernet.stem, "cin"):
        supernet.stem.cin = in_channels  # ConvBNAct keeps it for its MAC count
    supernet.in_channels = in_channels
    return (f"stem convolution adapted from {old_in} to {in_channels} input channels: each new filter is the "
            f"sum of the trained filters over the old channels divided by {in_channels}")


def transfer_supernet(path: str | Path, data: DatasetSplits, *, seed: int = 0) -> TransferResult:
    """Load a supernet checkpoint and fit its classifier (and stem input, if needed) to ``data``."""
    supernet, meta, _ = load_checkpoint(path)
    source = str(dict(meta.get("data") or {}).get("name", "another dataset"))
    notes = []
    if data.in_channels != supernet.in_channels:
        notes.append(adapt_stem_input(supernet, data.in_channels))
    old_classes = supernet.num_classes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        supernet.replace_classifier(data.num_classes)
    notes.append(f"classifier replaced for {data.name} ({old_classes} classes of {source} -> {data.num_classes}); "
                 "it starts untrained, so run the shifting search (not --no-shift) to train it")
    return TransferResult(supernet, meta, notes)
