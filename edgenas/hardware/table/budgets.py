"""Budgets read off a table: quantiles of the space's predicted latency, and loose-budget warnings."""

from __future__ import annotations

import numpy as np

from edgenas.errors import ConfigError
from edgenas.hardware.profile import Budgets
from edgenas.hardware.table.core import LatencyTable
from edgenas.space import SearchSpace


# ----- budgets ---------------------------------------------------------------------------------------------------
def loose_budget_warnings(space: SearchSpace, table: LatencyTable | None, budgets: Budgets) -> list[str]:
    """A latency budget above the slowest architecture's predicted latency constrains nothing: say so,
    with the space's range on this machine, since a budget carried over from a slower device (or
    another machine) silently turns a constrained search into an unconstrained one."""
    if table is None or budgets.latency_ms is None:
        return []
    slowest, fastest = table.max_latency_arch(space), table.min_latency_arch(space)
    top = table.predict(slowest)
    if top > budgets.latency_ms:
        return []
    return [f"the latency budget {budgets.latency_ms:g} ms admits every architecture of {space.name}: predicted "
            f"latencies on this target span {table.predict(fastest):.3g}-{top:.3g} ms, so latency constrains "
            "nothing; lower the budget to search under it"]


def check_quantile(q: float) -> float:
    """``q`` if it is a quantile strictly between 0 and 1, else a one-line error."""
    if not (isinstance(q, (int, float)) and 0.0 < q < 1.0):
        raise ConfigError(f"the latency quantile must be between 0 and 1 exclusive (e.g. 0.25), not {q!r}")
    return q


def quantile_budget(table: LatencyTable, space: SearchSpace, q: float, samples: int = 10_000, seed: int = 0
                    ) -> float:
    """The ``q``-quantile of predicted latency over ``samples`` seeded uniform architectures of ``space``.

    A budget given this way ("the fastest quarter of this space on this target") means the same
    thing on every machine, while a budget in milliseconds made for one device can admit every
    architecture, or none, on another; the demo and the benchmarks use it for that reason.
    """
    check_quantile(q)
    rng = np.random.default_rng([seed, 0x0B0D])
    predicted = np.array([table.predict(space.sample(rng)) for _ in range(samples)])
    return float(np.quantile(predicted, q))
