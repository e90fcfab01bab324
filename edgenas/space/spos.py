"""The SPOS ShuffleNetV2 space used by the Supernet Shifting paper.

Four stages (depths 4-4-8-4 by default), four choices per layer: shuffle units with 3x3, 5x5 and
7x7 depthwise kernels, and the xception-style unit. Every stage starts with a stride-2 unit, as in
SPOS. Widths scale with ``width_mult``; the ``small`` preset (28-32 px) has a stride-1 stem and
narrower stages, ``imagenet`` is the paper's 1.0x network for 224 px.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from edgenas.errors import SpaceError
from edgenas.space.base import LayerSpec, SearchSpace
from edgenas.space.blocks import ConvBNAct, Head, ShuffleUnit, ShuffleXception, make_divisible

__all__ = ["SposConfig", "SposSpace"]

_CHOICES = ("shuffle3", "shuffle5", "shuffle7", "xception")


@dataclass(frozen=True)
class SposConfig:
    stem_channels: int = 16
    stem_stride: int = 1
    stage_channels: tuple[int, ...] = (48, 96, 192, 384)
    depths: tuple[int, ...] = (4, 4, 8, 4)
    head_channels: int = 512
    width_mult: float = 1.0
    dropout: float = 0.1

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SposConfig:
        presets = {
            "small": {},
            "imagenet": {"stem_stride": 2, "stage_channels": (64, 160, 320, 640), "head_channels": 1024},
        }
        if name not in presets:
            raise SpaceError(f"unknown spos preset '{name}'; known: {', '.join(presets)}")
        return cls(**{**presets[name], **overrides})

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage_channels", tuple(self.stage_channels))
        object.__setattr__(self, "depths", tuple(self.depths))
        if len(self.stage_channels) != len(self.depths) or any(d < 1 for d in self.depths):
            raise SpaceError("spos needs one channel count per stage and depths >= 1")
        if self.width_mult <= 0:
            raise SpaceError("spos width_mult must be positive")


class SposSpace(SearchSpace):
    """The ``spos`` space; choices ``shuffle3, shuffle5, shuffle7, xception`` in every layer."""

    name = "spos"
    version = 1

    def __init__(self, config: SposConfig | None = None) -> None:
        super().__init__(config or SposConfig())

    def _width(self, channels: int) -> int:
        # Even widths keep the channel split exact; multiples of 8 keep kernels vectorised.
        return make_divisible(channels * self.config.width_mult, 8)

    @property
    def stem_channels(self) -> int:
        return self._width(self.config.stem_channels)

    @property
    def stem_stride(self) -> int:
        return self.config.stem_stride

    def _layer_specs(self) -> list[LayerSpec]:
        specs, cin = [], self.stem_channels
        for s, (channels, depth) in enumerate(zip(self.config.stage_channels, self.config.depths)):
            cout = self._width(channels)
            if cout <= cin:
                raise SpaceError(f"spos stage {s} must widen ({cin} -> {cout} channels)")
            for d in range(depth):
                specs.append(LayerSpec(len(specs), s, cin, cout, 2 if d == 0 else 1, _CHOICES))
                cin = cout
        return specs

    def build_stem(self, in_channels: int) -> ConvBNAct:
        return ConvBNAct(in_channels, self.stem_channels, 3, self.stem_stride)

    def build_choice(self, layer: int, choice: int) -> nn.Module:
        spec = self.layers[layer]
        label = spec.choices[choice]
        if label == "xception":
            return ShuffleXception(spec.in_channels, spec.out_channels, spec.stride)
        return ShuffleUnit(spec.in_channels, spec.out_channels, int(label[-1]), spec.stride)

    def build_head(self, num_classes: int) -> Head:
        return Head(self.layers[-1].out_channels, self._width(self.config.head_channels), num_classes,
                    "relu", self.config.dropout)
