"""How a long stage tells its caller what it is doing, without knowing who listens.

Every pipeline function takes a :class:`Progress`. The base class is silent, so a Python user who
passes nothing gets no output; the CLI passes one that prints to stderr (and draws a progress bar
on a terminal); a notebook or a service can pass its own. Stages call these methods only between
units of work, never inside a timed measurement.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Progress"]


class Progress:
    """Observer of the pipeline's stages; every method is a no-op here. Override what you need."""

    def message(self, text: str) -> None:
        """A one-line status ("measuring 8 subnets ...", "latency budget 0.53 ms: ...")."""

    def warning(self, text: str) -> None:
        """Something the user should act on, while the work goes on (a stale table, a loose budget)."""

    def stage(self, key: str, title: str, skipped: bool) -> None:
        """``edgenas run`` starts (or, when ``skipped``, passes over a finished) stage."""

    def train_step(self, epoch: int, step: int, total: int, loss: float) -> None:
        """One optimiser step of supernet training."""

    def train_epoch(self, stats: Any) -> None:
        """A finished supernet epoch (:class:`edgenas.train.EpochStats`)."""

    def search_generation(self, record: Any) -> None:
        """A finished generation of the search (:class:`edgenas.search.GenerationRecord`)."""

    def finetune_epoch(self, stats: Any) -> None:
        """A finished fine-tuning epoch (:class:`edgenas.finetune.EpochStats`)."""

    def rank_arch(self, index: int, total: int, entry: Any) -> None:
        """One architecture of a rank check scored and trained alone (:class:`edgenas.proxy.RankEntry`)."""


def silent(progress: Progress | None) -> Progress:
    """``progress`` or the silent default."""
    return progress if progress is not None else Progress()
