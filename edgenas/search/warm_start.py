"""Warm start: the first population is the best of a large random pool ranked by a cheap proxy.

A search's first generation is random, and with a budget of a few thousand evaluations that costs a
tenth of them on architectures no better than chance. A zero-cost proxy scores an architecture in
milliseconds (:mod:`edgenas.search.zero_cost`), so ranking ``pool`` feasible random architectures by
it and starting from the best ``population`` of them is nearly free. Whether it helps depends on the
proxy ranking like the real scorer does on the user's data: ``benchmarks/search_race.py`` measures
that rather than assuming it.

:class:`WarmStart` is both the search's *sampler* (it serves the ranked architectures first, then
hands over to the base sampler) and a :class:`~edgenas.search.evolution.SearchHook` whose state (the
ranked queue and how much of it was served) is checkpointed with the search, so a resumed search
draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgenas.errors import ConfigError
from edgenas.search.evolution import SearchHook
from edgenas.space import Arch

__all__ = ["WarmStart", "WarmStartConfig"]


@dataclass(frozen=True)
class WarmStartConfig:
    """Rank ``pool`` feasible random architectures by the scorer named ``proxy`` (a zero-cost one:
    ``naswot``, ``synflow``, ``params``) and start from the best ``population`` of them."""

    pool: int = 1000
    proxy: str = "naswot"

    def __post_init__(self) -> None:
        if self.pool < 1:
            raise ConfigError(f"warm start: pool must be >= 1, not {self.pool}")


class WarmStart(SearchHook):
    """Serve the top ``count`` of ``pool`` feasible random architectures by ``proxy``, then ``base``."""

    state_key = "warm_start"

    def __init__(self, space: Any, base: Callable[[np.random.Generator], Arch], proxy: Callable[[Arch], Any],
                 constraints: Sequence[Callable[[Arch], tuple[bool, Any]]], *, pool: int, count: int,
                 seed: int = 0, max_tries: int = 100) -> None:
        if pool < count or count < 1:
            raise ConfigError(f"warm start: the pool ({pool}) must hold at least the population ({count}) and "
                              "the population must be >= 1")
        self.space, self.base, self.proxy, self.constraints = space, base, proxy, list(constraints)
        self.pool, self.count, self.seed, self.max_tries = pool, count, seed, max_tries
        self.queue: list[Arch] | None = None
        self.served = 0
        self.scores: list[float] = []

    def _feasible(self, arch: Arch) -> bool:
        return all(constraint(arch)[0] for constraint in self.constraints)

    def _rank(self) -> list[Arch]:
        rng = np.random.default_rng([self.seed, 0x3A4])  # its own stream: the search's is left as it was
        seen: set[Arch] = set()
        tries = 0
        while len(seen) < self.pool and tries < self.pool * self.max_tries:
            tries += 1
            arch = self.base(rng)
            if arch not in seen and self._feasible(arch):
                seen.add(arch)
        scored = []
        for arch in sorted(seen, key=str):  # a fixed order, so ties break the same way every time
            value = self.proxy(arch)
            scored.append((float(value[0] if isinstance(value, tuple) else value), arch))
        scored.sort(key=lambda item: -item[0])
        self.scores = [s for s, _ in scored[:self.count]]
        return [a for _, a in scored[:self.count]]

    def __call__(self, rng: np.random.Generator) -> Arch:
        if self.queue is None:
            self.queue = self._rank()
        if self.served < len(self.queue):
            self.served += 1
            return self.queue[self.served - 1]
        return self.base(rng)

    def state_dict(self) -> dict[str, Any]:
        return {"queue": None if self.queue is None else [a.to_str() for a in self.queue], "served": self.served,
                "scores": self.scores}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        queue = state.get("queue")
        self.queue = None if queue is None else [self.space.validate(Arch.from_str(text)) for text in queue]
        self.served = int(state.get("served", 0))
        self.scores = [float(s) for s in state.get("scores", [])]
