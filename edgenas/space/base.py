"""What every search space offers: layers, sampling, mutation, crossover and network builders.

A space is a frozen description (a typed config plus the derived per-layer specs). It builds the
supernet and standalone subnets from the same block classes, so weights inherited by a subnet are
the supernet's weights by construction, and it answers shape and MAC questions in closed form,
which is what the latency table and the FLOPs-bin sampler need.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from edgenas.errors import SpaceError
from edgenas.space.arch import Arch
from edgenas.space.blocks import Head, conv_out
from edgenas.space.walk import walk_into_range

__all__ = ["LayerSpec", "SearchSpace", "Subnet"]


@dataclass(frozen=True)
class LayerSpec:
    """One searchable layer: its place, widths, stride and the labels of its choices."""

    index: int
    stage: int
    in_channels: int
    out_channels: int
    stride: int
    choices: tuple[str, ...]


class SearchSpace(ABC):
    """Base class of the spaces; subclasses supply the config and the block builders."""

    name: ClassVar[str]
    version: ClassVar[int] = 1

    def __init__(self, config: Any) -> None:
        self.config = config
        self.layers: tuple[LayerSpec, ...] = tuple(self._layer_specs())
        self._macs_cache: dict[tuple[int, int], tuple[tuple[int, ...], ...]] = {}

    # ----- description -------------------------------------------------------------------------
    @abstractmethod
    def _layer_specs(self) -> Sequence[LayerSpec]: ...

    @property
    @abstractmethod
    def stem_channels(self) -> int: ...

    @property
    @abstractmethod
    def stem_stride(self) -> int: ...

    @property
    def num_choices(self) -> tuple[int, ...]:
        return tuple(len(layer.choices) for layer in self.layers)

    @property
    def size(self) -> int:
        """Number of distinct architectures in the space."""
        return int(np.prod([float(n) for n in self.num_choices]))

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def config_hash(self) -> str:
        """Hash of name, version and config: a latency table or checkpoint built for another space
        config is detected by comparing it."""
        blob = json.dumps({"space": self.name, "version": self.version, "config": self.config_dict()},
                          sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def labels(self, arch: Arch) -> list[str]:
        self.validate(arch)
        return [layer.choices[c] for layer, c in zip(self.layers, arch.choices)]

    def describe(self, arch: Arch) -> str:
        return " ".join(self.labels(arch))

    # ----- architectures ---------------------------------------------------------------------------
    def arch(self, choices: Sequence[int]) -> Arch:
        return self.validate(Arch(self.name, self.version, tuple(int(c) for c in choices)))

    def parse(self, text: str) -> Arch:
        return self.validate(Arch.from_str(text))

    def validate(self, arch: Arch) -> Arch:
        if arch.space != self.name or arch.version != self.version:
            raise SpaceError(
                f"architecture {arch} belongs to space '{arch.space}@v{arch.version}', "
                f"not '{self.name}@v{self.version}'"
            )
        if len(arch.choices) != len(self.layers):
            raise SpaceError(
                f"architecture {arch} has {len(arch.choices)} layers; space {self.name} has {len(self.layers)}"
            )
        for layer, c in zip(self.layers, arch.choices):
            if c >= len(layer.choices):
                raise SpaceError(
                    f"architecture {arch}: layer {layer.index} has {len(layer.choices)} choices, got index {c}"
                )
        return arch

    def sample(self, rng: np.random.Generator) -> Arch:
        """Uniform single-path sample: each layer's choice drawn independently and uniformly."""
        return self.arch([int(rng.integers(n)) for n in self.num_choices])

    def mutate(self, arch: Arch, rng: np.random.Generator, prob: float = 0.1) -> Arch:
        """Re-draw each layer with probability ``prob``; a re-drawn layer always takes another choice."""
        self.validate(arch)
        out = list(arch.choices)
        for i, n in enumerate(self.num_choices):
            if n > 1 and rng.random() < prob:
                new = int(rng.integers(n - 1))
                out[i] = new + (new >= out[i])
        return self.arch(out)

    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch:
        """Uniform crossover: each layer taken from either parent with equal probability."""
        self.validate(a)
        self.validate(b)
        pick = rng.random(len(self.layers)) < 0.5
        return self.arch([x if p else y for x, y, p in zip(a.choices, b.choices, pick)])

    def extreme_arch(self, cost: Sequence[Sequence[float]], largest: bool = False) -> Arch:
        """The cheapest (or dearest) architecture under an additive per-(layer, choice) cost."""
        pick = np.argmax if largest else np.argmin
        return self.arch([int(pick(np.asarray(row))) for row in cost])

    def sample_in_range(
        self, rng: np.random.Generator, cost: Sequence[Sequence[float]], low: float, high: float,
        base: float = 0.0, max_steps: int = 2000,
    ) -> Arch:
        """Draw an architecture whose additive cost ``base + sum(cost[i][c])`` lies in ``[low, high]``.

        Starts from a uniform sample and re-draws random layers towards the interval (a cheaper
        choice when above, a dearer one when below). Used for FLOPs-bin-uniform sampling, where
        plain rejection sampling would almost never reach the extreme bins.
        """
        start = [int(rng.integers(len(row))) for row in cost]
        return self.arch(walk_into_range(rng, cost, start, low, high, base, max_steps))

    def sample_flops_uniform(self, rng: np.random.Generator, input_hw: tuple[int, int], bins: int = 10) -> Arch:
        """SPOS-style sampling: pick one of ``bins`` equal MAC intervals uniformly, then an
        architecture inside it, so small and large subnets are drawn equally often."""
        table = self.macs_table(input_hw)
        lo = sum(min(row) for row in table)
        hi = sum(max(row) for row in table)
        k = int(rng.integers(bins))
        width = (hi - lo) / bins
        return self.sample_in_range(rng, table, lo + k * width, lo + (k + 1) * width)

    # ----- shapes and MACs ---------------------------------------------------------------------------
    def stem_out_hw(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        return conv_out(input_hw[0], 3, self.stem_stride), conv_out(input_hw[1], 3, self.stem_stride)

    def layer_input_shapes(self, input_hw: tuple[int, int]) -> list[tuple[int, int, int]]:
        """(C, H, W) entering each searchable layer; the same for every choice of the layer."""
        shapes, (h, w) = [], self.stem_out_hw(input_hw)
        for layer in self.layers:
            shapes.append((layer.in_channels, h, w))
            h, w = conv_out(h, 3, layer.stride), conv_out(w, 3, layer.stride)
        return shapes

    def head_input_shape(self, input_hw: tuple[int, int]) -> tuple[int, int, int]:
        _, h, w = self.layer_input_shapes(input_hw)[-1]
        last = self.layers[-1]
        return last.out_channels, conv_out(h, 3, last.stride), conv_out(w, 3, last.stride)

    def macs_table(self, input_hw: tuple[int, int]) -> tuple[tuple[int, ...], ...]:
        """Closed-form MACs of every (layer, choice) at its input shape (computed once per size:
        it builds every block, and samplers ask for it on every draw)."""
        key = (int(input_hw[0]), int(input_hw[1]))
        if key not in self._macs_cache:
            self._macs_cache[key] = tuple(
                tuple(self.build_choice(layer.index, c).macs((h, w)) for c in range(len(layer.choices)))
                for layer, (_, h, w) in zip(self.layers, self.layer_input_shapes(key))
            )
        return self._macs_cache[key]

    def fixed_macs(self, input_hw: tuple[int, int], in_channels: int, num_classes: int) -> int:
        """MACs of the stem and head, which every architecture pays."""
        stem = self.build_stem(in_channels).macs(input_hw)
        _, h, w = self.head_input_shape(input_hw)
        return stem + self.build_head(num_classes).macs((h, w))

    def macs(self, arch: Arch, input_hw: tuple[int, int], in_channels: int, num_classes: int) -> int:
        table = self.macs_table(input_hw)
        self.validate(arch)
        return self.fixed_macs(input_hw, in_channels, num_classes) + sum(
            row[c] for row, c in zip(table, arch.choices)
        )

    # ----- builders ------------------------------------------------------------------------------------
    @abstractmethod
    def build_stem(self, in_channels: int) -> nn.Module: ...

    @abstractmethod
    def build_choice(self, layer: int, choice: int) -> nn.Module: ...

    @abstractmethod
    def build_head(self, num_classes: int) -> Head: ...

    #: whether :meth:`build_shared_layer` exists (a weight-entangled supernet can be built)
    supports_shared: ClassVar[bool] = False

    def build_shared_layer(self, layer: int) -> nn.Module:
        """One module holding every choice of ``layer`` in shared weights; ``forward(x, choice)``
        runs a choice and ``is_skip(choice)`` says whether it is the identity. The parameters a
        choice uses must be slices (:func:`edgenas.space.elastic.slice_like`) of the module's, under
        the plain block's names prefixed with ``block.``."""
        raise SpaceError(f"space '{self.name}' has separate weights only (no shared-weight supernet)")

    @property
    def default_weights(self) -> str:
        """The supernet weight layout used when none is asked for."""
        return "shared" if self.supports_shared else "separate"

    def build_subnet(self, arch: Arch, num_classes: int, in_channels: int) -> Subnet:
        self.validate(arch)
        return Subnet(
            arch,
            self.build_stem(in_channels),
            [self.build_choice(i, c) for i, c in enumerate(arch.choices)],
            self.build_head(num_classes),
            space=self,
        )


class Subnet(nn.Module):
    """A standalone network: stem, the chosen block of each layer, head. No dynamic ops left.

    Parameter names are the supernet's with the choice index dropped (``layers.3.2.x`` becomes
    ``layers.3.x``), which is how inherited weights are copied.
    """

    def __init__(self, arch: Arch, stem: nn.Module, blocks: list[nn.Module], head: nn.Module,
                 space: SearchSpace | None = None) -> None:
        super().__init__()
        self.arch = arch
        self.space = space  # what to rebuild it from when its checkpoint is loaded
        self.stem = stem
        self.layers = nn.Sequential(*blocks)
        self.head = head

    @property
    def num_classes(self) -> int:
        return int(self.head.classifier.out_features)

    @property
    def in_channels(self) -> int:
        """Input channels of the stem's first convolution (what the network must be fed)."""
        return int(next(m for m in self.stem.modules() if isinstance(m, nn.Conv2d)).in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))
