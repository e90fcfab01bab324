"""Flatness: how much a candidate's validation loss rises when the supernet's weights are nudged.

GeNAS (Jeong et al., IJCAI 2023) observed that architectures whose loss sits in a flat region of
the weight space generalise better, and used the flatness of the supernet's loss along a path as
a search proxy. Ours: score the path as the supernet scorer does (BN recalibrated on fixed
training batches), then again ``samples`` times with every weight multiplied by ``1 + sigma * e``,
``e`` standard normal (a relative perturbation, so wide and narrow layers are nudged alike), and
report ``-(mean perturbed loss - loss)``: higher is flatter. Weights off the path do not change its
output, so perturbing the whole supernet is the same as perturbing the path. The perturbations are
seeded (the same for every candidate) and the weights are restored exactly after each.

It costs ``samples + 1`` supernet scorings per candidate. Whether it ranks better than the plain
supernet accuracy on a user's data is what the proxy-quality table of docs/BENCHMARKS.md measures.
"""

from __future__ import annotations

from typing import Any

import torch

from edgenas.data import DatasetSplits
from edgenas.errors import ConfigError
from edgenas.evaluate import prepare_scoring, score_arch
from edgenas.space import Arch

__all__ = ["FlatnessScorer"]


class FlatnessScorer:
    """``scorer(arch) -> (-(loss increase under perturbation), {flatness, loss, perturbed_loss, accuracy})``."""

    deterministic = True  # the same perturbations and recalibration batches for every candidate

    def __init__(self, supernet: Any, data: DatasetSplits, config: Any = None, *, seed: int = 0,
                 device: torch.device | None = None, channels_last: bool = True, sigma: float = 0.02,
                 samples: int = 2) -> None:
        if not 0 < sigma < 1 or samples < 1:
            raise ConfigError(f"flatness: sigma must be in (0, 1) and samples >= 1, not {sigma} and {samples}")
        self.supernet, self.data, self.seed = supernet, data, seed
        self.sigma, self.samples = sigma, samples
        self.recal = int(getattr(config, "recal_batches", 10))
        self.batch_size = int(getattr(config, "batch_size", 256))
        self.device, self.channels_last = device, channels_last
        self.evaluations = 0
        self._prepared: tuple[torch.device, list[torch.Tensor]] | None = None

    def _score(self, arch: Arch) -> Any:
        assert self._prepared is not None
        device, recal_set = self._prepared
        return score_arch(self.supernet, arch, self.data, recal_set, split="val", batch_size=self.batch_size,
                          device=device, channels_last=self.channels_last)

    def __call__(self, arch: Arch) -> tuple[float, dict[str, float]]:
        if self._prepared is None:
            self._prepared = prepare_scoring(self.supernet, self.data, recal=self.recal, batch_size=self.batch_size,
                                             device=self.device, channels_last=self.channels_last, seed=self.seed)
        base = self._score(arch)
        params = list(self.supernet.parameters())
        saved = [p.detach().clone() for p in params]
        losses = []
        try:
            for k in range(self.samples):
                gen = torch.Generator(device="cpu").manual_seed(self.seed * 1000 + k)
                with torch.no_grad():
                    for p in params:
                        noise = torch.randn(p.shape, generator=gen).to(p.device, p.dtype)
                        p.mul_(1 + self.sigma * noise)
                losses.append(self._score(arch).loss)
                with torch.no_grad():
                    for p, s in zip(params, saved):
                        p.copy_(s)
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)
        perturbed = sum(losses) / len(losses)
        flatness = -(perturbed - base.loss)
        self.evaluations += 1
        return flatness, {"flatness": flatness, "loss": base.loss, "perturbed_loss": perturbed,
                          "accuracy": base.accuracy}
