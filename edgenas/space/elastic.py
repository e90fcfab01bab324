"""Weight-entangled (shared) supernet layers: one set of weights per layer, a choice takes a slice.

With separate weights every (layer, choice) owns its block, so each block sees only a fraction of
the training steps and the supernet ranks poorly (Once-for-All, BigNAS). Here a layer keeps one
inverted-residual block at the largest kernel and expansion; choice ``kKeE`` runs the centre
``K x K`` of the depthwise kernel and the leading ``mid = make_divisible(cin * E)`` channels of the
expansion, of the squeeze-excite widths that follow, of the batch norms and of the projection's
input. ``skip`` returns the input (elastic depth).

The slices are exactly what a plain :class:`~edgenas.space.blocks.InvertedResidual` of that choice
holds, parameter for parameter under the same names, so extraction is "slice every tensor to the
plain block's shape" (:func:`slice_like`) and the extracted network computes what the supernet path
computes.

Batch norms are sliced too (:class:`SlicedBatchNorm2d` normalises the leading channels its input
has). Their running statistics mix all the paths that trained them, so scoring recalibrates them per
subnet, as it does with separate weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgenas.space.blocks import InvertedResidual, SqueezeExcite, make_divisible

__all__ = ["ElasticInvertedResidual", "SlicedBatchNorm2d", "slice_like"]


class SlicedBatchNorm2d(nn.BatchNorm2d):
    """A batch norm over the *leading* channels of its input, however many there are.

    Same parameters and buffers (and state-dict names) as ``nn.BatchNorm2d``; running statistics are
    updated in place on the slice, so the other channels are untouched by a narrower path.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c > self.num_features:
            raise ValueError(f"input has {c} channels; this batch norm has {self.num_features}")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch = self.training or self.running_mean is None
        return F.batch_norm(
            x,
            self.running_mean[:c] if self.running_mean is not None else None,
            self.running_var[:c] if self.running_var is not None else None,
            self.weight[:c] if self.weight is not None else None,
            self.bias[:c] if self.bias is not None else None,
            use_batch, factor, self.eps,
        )


def _sliced_bn(bn: nn.BatchNorm2d) -> SlicedBatchNorm2d:
    return SlicedBatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)


class ElasticInvertedResidual(nn.Module):
    """One layer of the shared supernet: ``forward(x, choice)`` runs that choice's slice.

    ``choices[i]`` is ``(kernel, expansion)`` or ``None`` for skip. The weights live in ``block``, a
    plain :class:`InvertedResidual` at the largest kernel and expansion whose two inner batch norms
    are :class:`SlicedBatchNorm2d` (the projection's batch norm always sees the full output width).
    """

    def __init__(self, cin: int, cout: int, stride: int, se: bool, act: str,
                 choices: Sequence[tuple[int, int] | None]) -> None:
        super().__init__()
        real = [c for c in choices if c is not None]
        if not real:
            raise ValueError("an elastic layer needs at least one non-skip choice")
        if any(c is None for c in choices) and (stride != 1 or cin != cout):
            raise ValueError("skip needs stride 1 and equal widths")
        self.choices = tuple(choices)
        self.cin, self.cout, self.stride = cin, cout, stride
        self.max_kernel = max(k for k, _ in real)
        self.block = InvertedResidual(cin, cout, self.max_kernel, max(e for _, e in real), stride, se, act)
        self.block.expand[1] = _sliced_bn(self.block.expand[1])
        self.block.depthwise[1] = _sliced_bn(self.block.depthwise[1])

    def is_skip(self, choice: int) -> bool:
        return self.choices[choice] is None

    def forward(self, x: torch.Tensor, choice: int) -> torch.Tensor:
        spec = self.choices[choice]
        if spec is None:
            return x
        kernel, expansion = spec
        mid = make_divisible(self.cin * expansion)
        b = self.block
        h = b.expand[2](b.expand[1](F.conv2d(x, b.expand[0].weight[:mid])))
        off = (self.max_kernel - kernel) // 2
        dw = b.depthwise[0].weight[:mid, :, off:off + kernel, off:off + kernel]
        h = b.depthwise[2](b.depthwise[1](F.conv2d(h, dw, None, self.stride, kernel // 2, 1, mid)))
        if isinstance(b.se, SqueezeExcite):
            sq = make_divisible(mid / 4)
            s = h.mean((2, 3), keepdim=True)
            s = F.relu(F.conv2d(s, b.se.reduce.weight[:sq, :mid], b.se.reduce.bias[:sq]))
            s = F.hardsigmoid(F.conv2d(s, b.se.expand.weight[:mid, :sq], b.se.expand.bias[:mid]))
            h = h * s
        out = b.project[1](F.conv2d(h, b.project[0].weight[:, :mid]))
        return x + out if b.residual else out


def slice_like(source: torch.Tensor, shape: torch.Size | Sequence[int]) -> torch.Tensor:
    """The part of a shared tensor that a smaller block of ``shape`` holds.

    Leading entries along the channel dimensions (0 and 1); the centre along the spatial ones
    (2 and 3, the kernel), exactly as :class:`ElasticInvertedResidual` slices in its forward.
    """
    shape = tuple(shape)
    if source.ndim != len(shape) or any(s > t for s, t in zip(shape, source.shape)):
        raise ValueError(f"cannot take a {shape} slice of a {tuple(source.shape)} tensor")
    index = []
    for dim, (want, have) in enumerate(zip(shape, source.shape)):
        start = (have - want) // 2 if dim >= 2 else 0
        index.append(slice(start, start + want))
    return source[tuple(index)].clone()
