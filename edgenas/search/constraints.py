"""Budgets as plain callables over cheap cost models (latency, FLOPs, parameters).

Constraints only use the cheap side (STYLE 2): FLOPs and parameters are additive over the
layers of our spaces (each layer's input shape is fixed, whatever the other choices), so
:func:`flops_cost` and :func:`params_cost` count every (layer, choice) block once and answer any
architecture with a table sum. FLOPs follow ``FLOPS_CONVENTION`` (1 multiply-add = 1 FLOP, plus
batch norm, activations, residual adds and pooling), the same count as ``count_flops`` on the
whole subnet and the unit of a profile's ``mflops`` budget; ``space.macs`` (convolutions and
linear layers only) would undercount by ~10% and let over-budget candidates through.

Latency comes from the profile's calibrated table, through :func:`latency_cost` (duck-typed on the
table's public methods, so this module does not depend on how the table is built) or any
``arch -> ms`` callable. Additive costs also give an exact floor, which :func:`check_feasible`
uses to refuse an impossible budget before any compute, and let :func:`budget_sampler` steer
random proposals into a tight budget.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgenas.errors import ConfigError, InfeasibleBudgetError, SpaceError
from edgenas.search.evolution import Constraint
from edgenas.space.arch import Arch
from edgenas.space.walk import walk_into_range

if TYPE_CHECKING:
    from torch import nn

    from edgenas.space import SearchSpace

__all__ = [
    "AdditiveCost",
    "Budget",
    "budget_sampler",
    "check_feasible",
    "flops_cost",
    "latency_cost",
    "make_budget_constraints",
    "params_cost",
]


@dataclass(frozen=True)
class AdditiveCost:
    """``scale * (fixed + sum(rows[i][choice_i])) + offset``: a cost model answered by a table sum.

    The affine form covers a calibrated latency table as well as FLOPs and parameter counts.
    """

    fixed: float
    rows: tuple[tuple[float, ...], ...]
    scale: float = 1.0
    offset: float = 0.0

    def __call__(self, arch: Arch) -> float:
        if len(arch.choices) != len(self.rows):
            raise ConfigError(f"architecture {arch} has {len(arch.choices)} layers, the cost table {len(self.rows)}")
        return self.scale * (self.fixed + sum(row[c] for row, c in zip(self.rows, arch.choices))) + self.offset

    def _extreme(self, largest: bool) -> tuple[float, tuple[int, ...]]:
        pick = max if largest == (self.scale >= 0) else min
        choices = tuple(pick(range(len(row)), key=row.__getitem__) for row in self.rows)
        return self.scale * (self.fixed + sum(row[c] for row, c in zip(self.rows, choices))) + self.offset, choices

    def minimum(self) -> tuple[float, tuple[int, ...]]:
        """The least cost of any architecture, and the choices attaining it (exact: costs add up)."""
        return self._extreme(largest=False)

    def maximum(self) -> tuple[float, tuple[int, ...]]:
        return self._extreme(largest=True)

    def raw_limit(self, limit: float) -> float:
        """The bound on ``fixed + sum(rows)`` equivalent to ``cost <= limit`` (for a positive scale)."""
        return (limit - self.offset) / self.scale


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def flops_cost(space: SearchSpace, input_hw: tuple[int, int], in_channels: int, num_classes: int) -> AdditiveCost:
    """MFLOPs of any architecture at one input size, from one ``count_flops`` per block.

    Built once per (space, input size): it traces every block (about 35 ms each on one core).
    """
    from torch import nn

    from edgenas.hardware.flops import count_flops

    h, w = int(input_hw[0]), int(input_hw[1])
    rows = []
    for layer, (c, lh, lw) in zip(space.layers, space.layer_input_shapes((h, w))):
        row = []
        for choice in range(len(layer.choices)):
            block = space.build_choice(layer.index, choice)
            row.append(0.0 if isinstance(block, nn.Identity) else float(count_flops(block, (1, c, lh, lw)).flops))
        rows.append(tuple(row))
    head_c, head_h, head_w = space.head_input_shape((h, w))
    fixed = (count_flops(space.build_stem(in_channels), (1, in_channels, h, w)).flops
             + count_flops(space.build_head(num_classes), (1, head_c, head_h, head_w)).flops)
    return AdditiveCost(float(fixed), tuple(rows), scale=1e-6)


def params_cost(space: SearchSpace, in_channels: int, num_classes: int) -> AdditiveCost:
    """Millions of parameters of any architecture (stem + chosen blocks + head)."""
    rows = tuple(
        tuple(float(_params(space.build_choice(layer.index, c))) for c in range(len(layer.choices)))
        for layer in space.layers
    )
    fixed = _params(space.build_stem(in_channels)) + _params(space.build_head(num_classes))
    return AdditiveCost(float(fixed), rows, scale=1e-6)


def latency_cost(table: Any, space: SearchSpace, samples: int = 8) -> AdditiveCost:
    """A calibrated latency table (``cost_rows``, ``predict_raw``, ``predict``, ``calibration``) as an
    :class:`AdditiveCost`, so a latency budget gets an exact floor and steered sampling.

    Checked against ``table.predict`` on a few architectures, so a change in how the table predicts
    cannot go unnoticed.
    """
    rows = tuple(tuple(float(v) for v in row) for row in table.cost_rows())
    base = space.arch([0] * len(space.layers))
    fixed = float(table.predict_raw(base)) - sum(row[0] for row in rows)
    cost = AdditiveCost(fixed, rows, float(table.calibration.scale), float(table.calibration.offset_ms))
    rng = np.random.default_rng(0)
    for arch in [base, *(space.sample(rng) for _ in range(samples))]:
        expected = float(table.predict(arch))
        if abs(cost(arch) - expected) > 1e-9 * max(1.0, abs(expected)):
            raise ConfigError(f"the latency table is not additive as expected: {cost(arch)} != {expected} for {arch}")
    return cost


@dataclass(frozen=True)
class Budget:
    """``cost(arch) <= limit`` as a constraint; with ``limit=None`` it only reports the metric.

    ``floor`` (the least any architecture costs, with ``floor_arch`` attaining it) is optional;
    when known, :func:`check_feasible` refuses an impossible budget up front with those figures.
    """

    name: str
    cost: Callable[[Arch], float]
    limit: float | None = None
    floor: float | None = None
    floor_arch: Arch | None = None
    unit: str = ""

    def __post_init__(self) -> None:
        if self.limit is not None and not (isinstance(self.limit, numbers.Real) and 0 <= self.limit < math.inf):
            raise ConfigError(f"budget {self.name} must be a finite number >= 0, not {self.limit!r}")

    @property
    def label(self) -> str:
        return self.name if self.limit is None else f"{self.name}<={self.limit:g}"

    def __call__(self, arch: Arch) -> tuple[bool, dict[str, float]]:
        value = float(self.cost(arch))
        return self.limit is None or value <= self.limit, {self.name: value}


def make_budget_constraints(
    space: SearchSpace,
    *,
    input_hw: tuple[int, int],
    in_channels: int,
    num_classes: int,
    latency_ms: float | None = None,
    mflops: float | None = None,
    params_m: float | None = None,
    latency: Callable[[Arch], float] | None = None,
    latency_floor: tuple[float, Arch] | None = None,
) -> list[Budget]:
    """Latency (when a predictor is given), FLOPs and parameter budgets; each also reports its
    metric for every candidate, budgeted or not, so results always carry all three.

    ``latency`` is best :func:`latency_cost` of the profile's table (exact floor, steered sampling);
    any ``arch -> ms`` callable works, with ``latency_floor`` = (its minimum, the architecture
    attaining it) if known.
    """
    if latency_ms is not None and latency is None:
        raise ConfigError("a latency budget needs a latency predictor: build the profile's table "
                          "(edgenas profile build) and pass it")
    budgets: list[Budget] = []
    if latency is not None:
        floor, floor_arch = latency_floor if latency_floor is not None else (None, None)
        if floor is None and isinstance(latency, AdditiveCost):
            floor, choices = latency.minimum()
            floor_arch = space.arch(choices)
        budgets.append(Budget("latency_ms", latency, latency_ms, floor, floor_arch, "ms"))
    flops = flops_cost(space, input_hw, in_channels, num_classes)
    low, choices = flops.minimum()
    budgets.append(Budget("mflops", flops, mflops, low, space.arch(choices), "MFLOPs"))
    params = params_cost(space, in_channels, num_classes)
    low, choices = params.minimum()
    budgets.append(Budget("params_m", params, params_m, low, space.arch(choices), "M params"))
    return budgets


def check_feasible(constraints: Sequence[Constraint]) -> None:
    """Raise :class:`InfeasibleBudgetError` naming every budget below its space's floor (the smallest
    reachable value and the architecture reaching it), before any compute. The one feasibility check:
    the CLI, the pipeline and :func:`~edgenas.search.run_search` all come here."""
    problems = []
    for c in constraints:
        if not isinstance(c, Budget) or c.limit is None:
            continue
        floor, floor_arch = c.floor, c.floor_arch
        if floor is None and isinstance(c.cost, AdditiveCost):  # a user's Budget: the exact floor is cheap here
            floor, choices = c.cost.minimum()
            floor_arch = None if not choices else f"choices {'-'.join(map(str, choices))}"
        if floor is not None and floor > c.limit:
            where = f" ({floor_arch})" if floor_arch is not None else ""
            problems.append(f"{c.label} {c.unit}".rstrip() + f": the smallest is {floor:.4g}{where}")
    if problems:
        raise InfeasibleBudgetError("no architecture can meet the budget: " + "; ".join(problems)
                          + ". Relax the budget or use a smaller space (e.g. --width-mult)")


def budget_sampler(space: SearchSpace,
                   constraints: Sequence[Constraint]) -> Callable[[np.random.Generator], Arch] | None:
    """A random-proposal sampler that lands inside the tightest additive budget.

    Uniform samples concentrate around the middle of the cost range, so a budget near the space's
    floor is almost never met by rejection sampling alone (e.g. 0 of 2000 samples). This sampler
    draws a uniform sample and, only if it is over the budget, re-draws random layers towards cheaper
    choices until it fits (:meth:`SearchSpace.sample_in_range`); a sample that already fits is kept
    as drawn. Other constraints are still checked by the loop. ``None`` when no budget is additive.
    A space without ``sample_in_range`` (a custom one) has its own sample walked down the same way
    (:func:`edgenas.space.walk.walk_into_range`).
    """
    best: tuple[float, Budget] | None = None
    for c in constraints:
        if isinstance(c, Budget) and c.limit is not None and isinstance(c.cost, AdditiveCost) and c.cost.scale > 0:
            low, high = c.cost.minimum()[0], c.cost.maximum()[0]
            tightness = (c.limit - low) / (high - low) if high > low else 1.0
            if best is None or tightness < best[0]:
                best = (tightness, c)
    if best is None or best[0] >= 1.0:
        return None
    cost = best[1].cost
    assert isinstance(cost, AdditiveCost) and best[1].limit is not None
    high_raw = cost.raw_limit(best[1].limit)

    def sample(rng: np.random.Generator) -> Arch:
        try:
            if callable(getattr(space, "sample_in_range", None)):
                return space.sample_in_range(rng, cost.rows, -math.inf, high_raw, base=cost.fixed)
            drawn = space.sample(rng)  # any space: walk its own sample down into the budget
            choices = walk_into_range(rng, cost.rows, drawn.choices, -math.inf, high_raw, base=cost.fixed)
            return space.validate(Arch(drawn.space, drawn.version, tuple(choices)))
        except SpaceError:  # cannot happen above the floor; the loop's rejection still guards it
            return space.sample(rng)

    return sample

