"""Choice blocks of the two spaces, each with a closed-form multiply-add count.

Every block is a plain ``nn.Module`` with fixed shapes, so a supernet layer is just a list of
them and a standalone subnet reuses the very same classes (weights copy over by name). Each block
also states its multiply-accumulate count in closed form (convolutions and linear layers, one
multiply-add = one MAC): cheap cost models and FLOPs-bin sampling need it without running a model.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "ConvBNAct",
    "Head",
    "InvertedResidual",
    "ShuffleUnit",
    "ShuffleXception",
    "SkipBlock",
    "SqueezeExcite",
    "conv_macs",
    "make_divisible",
]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a width to a multiple of ``divisor`` without dropping more than 10% (MobileNet rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Spatial output size of a 'same'-padded convolution."""
    pad = kernel // 2
    return (size + 2 * pad - kernel) // stride + 1


def conv_macs(cin: int, cout: int, kernel: int, stride: int, groups: int, hw: tuple[int, int]) -> int:
    h, w = (conv_out(s, kernel, stride) for s in hw)
    return cout * h * w * (cin // groups) * kernel * kernel


def _act(kind: str) -> nn.Module:
    return {"relu": nn.ReLU(inplace=True), "hswish": nn.Hardswish(inplace=True), "none": nn.Identity()}[kind]


class ConvBNAct(nn.Sequential):
    """Convolution, batch norm and activation; the unit every block is made of."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: str = "relu"
    ) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            _act(act),
        )
        self.cin, self.cout, self.kernel, self.stride, self.groups = cin, cout, kernel, stride, groups

    def macs(self, hw: tuple[int, int]) -> int:
        return conv_macs(self.cin, self.cout, self.kernel, self.stride, self.groups, hw)

    def out_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        return conv_out(hw[0], self.kernel, self.stride), conv_out(hw[1], self.kernel, self.stride)


class SqueezeExcite(nn.Module):
    """MobileNetV3 squeeze-excite: global pool, reduce, ReLU, expand, hard-sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.squeezed = make_divisible(channels / reduction)
        self.reduce = nn.Conv2d(channels, self.squeezed, 1)
        self.expand = nn.Conv2d(self.squeezed, channels, 1)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = nn.functional.hardsigmoid(self.expand(nn.functional.relu(self.reduce(s))))
        return x * s

    def macs(self) -> int:
        return 2 * self.channels * self.squeezed


class InvertedResidual(nn.Module):
    """MobileNetV3 block: 1x1 expand, kxk depthwise, optional SE, 1x1 project, residual if shapes allow."""

    def __init__(
        self, cin: int, cout: int, kernel: int, expand: int, stride: int, se: bool, act: str
    ) -> None:
        super().__init__()
        mid = make_divisible(cin * expand)
        self.expand = ConvBNAct(cin, mid, 1, act=act)
        self.depthwise = ConvBNAct(mid, mid, kernel, stride, groups=mid, act=act)
        self.se = SqueezeExcite(mid) if se else nn.Identity()
        self.project = ConvBNAct(mid, cout, 1, act="none")
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return x + out if self.residual else out

    def macs(self, hw: tuple[int, int]) -> int:
        total = self.expand.macs(hw) + self.depthwise.macs(hw)
        if isinstance(self.se, SqueezeExcite):
            total += self.se.macs()
        return total + self.project.macs(self.depthwise.out_hw(hw))


def _split_interleaved(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel shuffle fused with the split (as in SPOS): even channels pass through, odd ones are processed."""
    return x[:, 0::2], x[:, 1::2]


class _ShuffleBase(nn.Module):
    """Shared plumbing of ShuffleNetV2 units: channel split at stride 1, projection branch at stride 2."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        if stride == 1 and cin != cout:
            raise ValueError("a stride-1 shuffle unit keeps its width")
        self.stride, self.cin, self.cout, self.kernel = stride, cin, cout, kernel
        self.branch_in = cin // 2 if stride == 1 else cin
        self.branch_out = cout - (cin // 2 if stride == 1 else cin)
        self.mid = cout // 2
        if stride == 2:
            self.proj = nn.Sequential(
                ConvBNAct(cin, cin, kernel, 2, groups=cin, act="none"), ConvBNAct(cin, cin, 1)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            keep, x = _split_interleaved(x)
            return torch.cat((keep, self.branch(x)), 1)
        return torch.cat((self.proj(x), self.branch(x)), 1)

    def _proj_macs(self, hw: tuple[int, int]) -> int:
        if self.stride == 1:
            return 0
        dw, pw = self.proj[0], self.proj[1]
        return dw.macs(hw) + pw.macs(dw.out_hw(hw))


class ShuffleUnit(_ShuffleBase):
    """SPOS 'shuffle k' choice: 1x1, kxk depthwise, 1x1 on half the channels."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__(cin, cout, kernel, stride)
        self.branch = nn.Sequential(
            ConvBNAct(self.branch_in, self.mid, 1),
            ConvBNAct(self.mid, self.mid, kernel, stride, groups=self.mid, act="none"),
            ConvBNAct(self.mid, self.branch_out, 1),
        )

    def macs(self, hw: tuple[int, int]) -> int:
        pw1, dw, pw2 = self.branch
        return self._proj_macs(hw) + pw1.macs(hw) + dw.macs(hw) + pw2.macs(dw.out_hw(hw))


class ShuffleXception(_ShuffleBase):
    """SPOS 'xception' choice: three (3x3 depthwise, 1x1) pairs on the branch."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__(cin, cout, 3, stride)
        m = self.mid
        self.branch = nn.Sequential(
            ConvBNAct(self.branch_in, self.branch_in, 3, stride, groups=self.branch_in, act="none"),
            ConvBNAct(self.branch_in, m, 1),
            ConvBNAct(m, m, 3, 1, groups=m, act="none"),
            ConvBNAct(m, m, 1),
            ConvBNAct(m, m, 3, 1, groups=m, act="none"),
            ConvBNAct(m, self.branch_out, 1),
        )

    def macs(self, hw: tuple[int, int]) -> int:
        total, cur = self._proj_macs(hw), hw
        for unit in self.branch:
            total += unit.macs(cur)
            cur = unit.out_hw(cur)
        return total


class SkipBlock(nn.Identity):
    """The 'skip' choice of elastic depth: the layer is dropped."""

    def macs(self, hw: tuple[int, int]) -> int:
        return 0


class Head(nn.Module):
    """Shared classifier head: 1x1 conv to ``features``, global average pool, dropout, linear.

    The final ``classifier`` is its own named module so transfer to a new dataset can replace it
    without touching anything else.
    """

    def __init__(self, cin: int, features: int, num_classes: int, act: str, dropout: float) -> None:
        super().__init__()
        self.conv = ConvBNAct(cin, features, 1, act=act)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).mean((2, 3))
        return self.classifier(self.dropout(x))

    def macs(self, hw: tuple[int, int]) -> int:
        return self.conv.macs(hw) + self.classifier.in_features * self.classifier.out_features
