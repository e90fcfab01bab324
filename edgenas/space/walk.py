"""Steering an architecture into a cost interval, one layer at a time (numpy only, any space).

Uniform samples concentrate in the middle of an additive cost's range, so the extremes (a tight
budget, the end bins of FLOPs-uniform sampling) are almost never hit by rejection alone. Starting
from a drawn architecture, a random layer takes a random cheaper choice while the cost is above the
interval (a dearer one while below) until it lies inside. Shared by
:meth:`edgenas.space.SearchSpace.sample_in_range` and the search's budget sampler for spaces of
any kind.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgenas.errors import SpaceError

__all__ = ["walk_into_range"]


def walk_into_range(rng: np.random.Generator, cost: Sequence[Sequence[float]], choices: Sequence[int], low: float,
                    high: float, base: float = 0.0, max_steps: int = 2000) -> list[int]:
    """``choices`` moved until ``base + sum(cost[i][choices[i]])`` lies in ``[low, high]``."""
    rows = [np.asarray(row, dtype=float) for row in cost]
    choices = [int(c) for c in choices]
    total = base + sum(float(row[c]) for row, c in zip(rows, choices))
    for _ in range(max_steps):
        if low <= total <= high:
            return choices
        i = int(rng.integers(len(rows)))
        row, cur = rows[i], choices[i]
        options = np.flatnonzero(row < row[cur]) if total > high else np.flatnonzero(row > row[cur])
        if options.size == 0:
            continue
        new = int(rng.choice(options))
        total += row[new] - row[cur]
        choices[i] = new
    raise SpaceError(f"no architecture found with cost in [{low:.4g}, {high:.4g}]")
