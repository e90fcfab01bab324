"""MobileNetV3-style edge space: kernel x expansion per layer, plus 'skip' for elastic depth.

Stages of inverted-residual blocks; the first layer of a stage changes width and stride and so is
always present, the others may be skipped. Squeeze-excite and hard-swish are per-stage switches as
in MobileNetV3. Two presets: ``small`` (28-32 px inputs: stride-1 stem, three down-samplings) and
``imagenet`` (224 px: stride-2 stem, five down-samplings); both accept any input size since the
head pools globally.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from edgenas.errors import SpaceError
from edgenas.space.base import LayerSpec, SearchSpace
from edgenas.space.blocks import ConvBNAct, Head, InvertedResidual, SkipBlock, make_divisible
from edgenas.space.elastic import ElasticInvertedResidual

__all__ = ["Mbv3Config", "Mbv3Space", "StageConfig"]


@dataclass(frozen=True)
class StageConfig:
    channels: int
    depth: int
    stride: int
    se: bool = False
    hswish: bool = False


_SMALL = (
    StageConfig(24, 2, 2),
    StageConfig(40, 3, 2, se=True, hswish=True),
    StageConfig(64, 3, 1, hswish=True),
    StageConfig(96, 3, 2, se=True, hswish=True),
)
_IMAGENET = (
    StageConfig(16, 2, 1),
    StageConfig(24, 3, 2),
    StageConfig(40, 3, 2, se=True),
    StageConfig(80, 4, 2, hswish=True),
    StageConfig(112, 3, 1, se=True, hswish=True),
    StageConfig(160, 3, 2, se=True, hswish=True),
)


@dataclass(frozen=True)
class Mbv3Config:
    stem_channels: int = 16
    stem_stride: int = 1
    stages: tuple[StageConfig, ...] = field(default=_SMALL)
    head_channels: int = 256
    kernels: tuple[int, ...] = (3, 5, 7)
    expansions: tuple[int, ...] = (3, 4, 6)
    width_mult: float = 1.0
    dropout: float = 0.1

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Mbv3Config:
        presets = {
            "small": {},
            "imagenet": {"stem_stride": 2, "stages": _IMAGENET, "head_channels": 576},
        }
        if name not in presets:
            raise SpaceError(f"unknown mbv3 preset '{name}'; known: {', '.join(presets)}")
        return cls(**{**presets[name], **overrides})

    def __post_init__(self) -> None:
        if isinstance(self.stages, list) or any(isinstance(s, dict) for s in self.stages):
            object.__setattr__(
                self, "stages", tuple(s if isinstance(s, StageConfig) else StageConfig(**s) for s in self.stages)
            )
        object.__setattr__(self, "kernels", tuple(self.kernels))
        object.__setattr__(self, "expansions", tuple(self.expansions))
        if not self.stages or any(s.depth < 1 or s.stride not in (1, 2) for s in self.stages):
            raise SpaceError("mbv3 stages need depth >= 1 and stride 1 or 2")
        if any(k % 2 == 0 or k < 1 for k in self.kernels) or any(e < 1 for e in self.expansions):
            raise SpaceError("mbv3 kernels must be odd and expansions >= 1")
        if self.width_mult <= 0:
            raise SpaceError("mbv3 width_mult must be positive")


class Mbv3Space(SearchSpace):
    """The ``mbv3`` space; choice ``k*len(expansions)+e`` is kernel k, expansion e; the last is skip."""

    name = "mbv3"
    version = 1

    def __init__(self, config: Mbv3Config | None = None) -> None:
        super().__init__(config or Mbv3Config())

    def _width(self, channels: int) -> int:
        return make_divisible(channels * self.config.width_mult)

    @property
    def stem_channels(self) -> int:
        return self._width(self.config.stem_channels)

    @property
    def stem_stride(self) -> int:
        return self.config.stem_stride

    def _layer_specs(self) -> list[LayerSpec]:
        cfg = self.config
        base = tuple(f"k{k}e{e}" for k in cfg.kernels for e in cfg.expansions)
        specs, cin = [], self.stem_channels
        for s, stage in enumerate(cfg.stages):
            cout = self._width(stage.channels)
            for d in range(stage.depth):
                first = d == 0
                specs.append(
                    LayerSpec(len(specs), s, cin, cout, stage.stride if first else 1,
                              base if first else (*base, "skip"))
                )
                cin = cout
        return specs

    def build_stem(self, in_channels: int) -> ConvBNAct:
        return ConvBNAct(in_channels, self.stem_channels, 3, self.stem_stride, act="hswish")

    def choice_spec(self, layer: int, choice: int) -> tuple[int, int] | None:
        """``(kernel, expansion)`` of a choice, or ``None`` for skip."""
        if self.layers[layer].choices[choice] == "skip":
            return None
        cfg = self.config
        return cfg.kernels[choice // len(cfg.expansions)], cfg.expansions[choice % len(cfg.expansions)]

    def _stage_opts(self, layer: int) -> tuple[bool, str]:
        stage = self.config.stages[self.layers[layer].stage]
        return stage.se, "hswish" if stage.hswish else "relu"

    def build_choice(self, layer: int, choice: int) -> nn.Module:
        spec, chosen = self.layers[layer], self.choice_spec(layer, choice)
        if chosen is None:
            return SkipBlock()
        se, act = self._stage_opts(layer)
        return InvertedResidual(spec.in_channels, spec.out_channels, *chosen, spec.stride, se, act)

    supports_shared = True

    def build_shared_layer(self, layer: int) -> ElasticInvertedResidual:
        spec = self.layers[layer]
        return ElasticInvertedResidual(spec.in_channels, spec.out_channels, spec.stride, *self._stage_opts(layer),
                                       [self.choice_spec(layer, c) for c in range(len(spec.choices))])

    def build_head(self, num_classes: int) -> Head:
        return Head(self.layers[-1].out_channels, self._width(self.config.head_channels), num_classes,
                    "hswish", self.config.dropout)
