"""Scorers: architecture -> score (higher is better), read-only; a registry and a cache.

:class:`SupernetScorer` is a thin adapter from :func:`edgenas.evaluate.score_archs` (BN
recalibrated on fixed training batches inside a context that restores the supernet's buffers) to
the loop's scorer contract. It never takes a gradient or an optimiser step (STYLE 3): Supernet
Shifting is a separate hook. The validation split is carved from the training data; the test split
is never looked at here.

``SCORERS`` maps ``--scorer`` names to factories with one signature (see :data:`ScorerFactory`):
``supernet``, ``params`` and the zero-cost proxies of :mod:`edgenas.search.zero_cost` (``naswot``,
``synflow``), which score an architecture at initialisation and ignore the supernet's weights, and
``flatness`` (:mod:`edgenas.search.flatness`), the loss increase under small weight perturbations.
A scorer that sets ``deterministic = True`` returns the same value for the same architecture as
long as the supernet's weights do not change; :class:`CachedScorer` then scores each architecture
once (the search wraps it so when it does not shift the supernet).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from edgenas.data import DatasetSplits
from edgenas.errors import ConfigError
from edgenas.evaluate import prepare_scoring, score_arch
from edgenas.registry import Registry
from edgenas.space import Arch
from edgenas.supernet import Supernet

__all__ = ["SCORERS", "CachedScorer", "ParamsScorer", "ScoreConfig", "ScorerFactory", "SupernetScorer"]


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

    deterministic = True  # fixed recalibration batches and evaluation order

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


class ParamsScorer:
    """``scorer(arch) -> parameter count``: the zero-cost baseline a proxy has to beat (larger networks
    tend to be more accurate, and under a budget the search then fills it). Needs no training."""

    deterministic = True

    def __init__(self, supernet: Supernet, data: DatasetSplits) -> None:
        from edgenas.search.constraints import params_cost

        self._cost = params_cost(supernet.space, data.in_channels, data.num_classes)
        self.evaluations = 0

    def __call__(self, arch: Arch) -> tuple[float, dict[str, float]]:
        self.evaluations += 1
        params = float(self._cost(arch))
        return params, {"params": params}


#: ``factory(supernet, data, config, *, seed, device, channels_last) -> scorer``
ScorerFactory = Callable[..., Callable[[Arch], Any]]

SCORERS: Registry[ScorerFactory] = Registry("scorer", ConfigError)
SCORERS.register("supernet", SupernetScorer)
SCORERS.register("params", lambda supernet, data, config=None, **_: ParamsScorer(supernet, data))


def _register_zero_cost() -> None:
    from edgenas.search.flatness import FlatnessScorer
    from edgenas.search.zero_cost import PROXIES, factory

    for name in PROXIES:
        SCORERS.register(name, factory(name))
    SCORERS.register("flatness", FlatnessScorer)


_register_zero_cost()


class CachedScorer:
    """Scores each architecture once; only for a deterministic scorer on weights that do not change."""

    deterministic = True

    def __init__(self, scorer: Callable[[Arch], Any]) -> None:
        self.scorer = scorer
        self.cache: dict[Arch, Any] = {}
        self.hits = 0

    @property
    def evaluations(self) -> int:
        return len(self.cache)

    def __call__(self, arch: Arch) -> Any:
        if arch in self.cache:
            self.hits += 1
        else:
            self.cache[arch] = self.scorer(arch)
        return self.cache[arch]
