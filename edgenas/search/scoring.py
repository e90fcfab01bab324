"""Score candidates with a supernet: read-only, on the held-out validation split.

A thin adapter from :func:`edgenas.evaluate.score_archs` (BN recalibrated on fixed training
batches inside a context that restores the supernet's buffers) to the loop's scorer contract.
It never takes a gradient or an optimiser step (STYLE 3): Supernet Shifting is a separate hook.
The validation split is carved from the training data; the test split is never looked at here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgenas.data import DatasetSplits
from edgenas.errors import ConfigError
from edgenas.evaluate import prepare_scoring, score_arch
from edgenas.space import Arch
from edgenas.supernet import Supernet

__all__ = ["ScoreConfig", "SupernetScorer"]


@dataclass(frozen=True)
class ScoreConfig:
    """BN recalibration batches (training images, the same for every candidate) and eval batch size."""

    recal_batches: int = 10
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.recal_batches < 1 or self.batch_size < 1:
            raise ConfigError("score config: recal_batches and batch_size must be >= 1")


class SupernetScorer:
    """``scorer(arch) -> (val accuracy, {accuracy, error, loss})`` for :class:`EvolutionarySearch`."""

    def __init__(self, supernet: Supernet, data: DatasetSplits, config: ScoreConfig | None = None, *,
                 seed: int = 0, device: torch.device | None = None, channels_last: bool = True) -> None:
        self.supernet = supernet
        self.data = data
        self.config = config or ScoreConfig()
        self.seed = seed
        self.device = device
        self.channels_last = channels_last
        self.evaluations = 0
        self._prepared: tuple[torch.device, list[torch.Tensor]] | None = None

    def __call__(self, arch: Arch) -> tuple[float, dict[str, float]]:
        if self._prepared is None:  # the recalibration batches are the same for every candidate
            self._prepared = prepare_scoring(self.supernet, self.data, recal=self.config.recal_batches,
                                             batch_size=self.config.batch_size, device=self.device,
                                             channels_last=self.channels_last, seed=self.seed)
        device, recal_set = self._prepared
        res = score_arch(self.supernet, arch, self.data, recal_set, split="val", batch_size=self.config.batch_size,
                         device=device, channels_last=self.channels_last)
        self.evaluations += 1
        return res.accuracy, {"accuracy": res.accuracy, "error": 1.0 - res.accuracy, "loss": res.loss}
