"""Can the supernet's scores be trusted? Noise of one score, separability of a top-k, and a rank check.

Two different questions, answered where a user decides:

- **Noise.** A candidate's score is its accuracy on ``n`` validation images, a binomial estimate
  with standard error ``sqrt(p (1 - p) / n)``. When the final top-k differ by less than the noise of
  a difference of two scores (:func:`proxy_health`), the search's pick among them is a coin toss:
  more validation images, or a better-trained supernet, is what helps.
- **Rank.** Even noiseless scores are worthless if the supernet ranks architectures unlike
  training them alone does. :func:`rank_check` trains a few architectures alone with a short recipe
  and correlates that with their inherited accuracy (Kendall tau and Spearman rho, with bootstrap
  intervals over the architectures). Every trained architecture is cached in its own JSON file, so
  an interrupted check loses at most the network being trained.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgenas.data import DatasetSplits
from edgenas.errors import ConfigError, EdgenasError
from edgenas.io import atomic_write_json, read_json
from edgenas.space import Arch, SearchSpace

__all__ = [
    "ProxyHealth",
    "RankCheck",
    "RankEntry",
    "accuracy_stderr",
    "bootstrap_rank_correlation",
    "proxy_health",
    "rank_check",
    "spread_archs",
]

#: Two scores differ "clearly" when their gap exceeds this many standard errors of a difference.
Z = 1.96


def accuracy_stderr(accuracy: float, images: int) -> float:
    """Binomial standard error of an accuracy measured on ``images`` images."""
    if images <= 0 or not math.isfinite(accuracy):
        return float("nan")
    p = min(max(accuracy, 0.0), 1.0)
    return math.sqrt(max(p * (1 - p), 0.25 / images) / images)  # never 0, even at p = 0 or 1


@dataclass(frozen=True)
class ProxyHealth:
    """How far the final top-k's scores can be told apart on the images they were scored on."""

    images: int
    stderr: float
    topk_scores: tuple[float, ...]
    tied_with_best: int
    separable: bool
    images_needed: int | None
    advice: str | None

    def summary(self) -> str:
        spread = (self.topk_scores[0] - self.topk_scores[-1]) if self.topk_scores else float("nan")
        text = (f"score standard error ±{self.stderr:.2%} ({self.images:,} validation images); "
                f"top-{len(self.topk_scores)} spread {spread:.2%}; {self.tied_with_best} of them tied with the best")
        return text if self.advice is None else f"{text}. {self.advice}"

    def short(self) -> str:
        """One table cell: the noise of a score and how many of the top-k it cannot tell from the best."""
        return (f"±{self.stderr:.2%} per score; {self.tied_with_best} of the top-{len(self.topk_scores)} tied with "
                "the best" + ("" if self.separable else " (not separable)"))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProxyHealth:
        return cls(int(data["images"]), float(data["stderr"]), tuple(data["topk_scores"]),
                   int(data["tied_with_best"]), bool(data["separable"]), data.get("images_needed"), data.get("advice"))

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, "stderr": self.stderr, "topk_scores": list(self.topk_scores),
                "tied_with_best": self.tied_with_best, "separable": self.separable,
                "images_needed": self.images_needed, "advice": self.advice, "z": Z}


def proxy_health(topk_scores: Sequence[float], images: int, available: int | None = None) -> ProxyHealth:
    """Separability of a top-k (scores best first) scored on ``images`` validation images.

    A candidate is *tied with the best* when the gap is below ``Z * sqrt(2) * stderr`` (the noise of a
    difference of two independent scores). The top-k is *separable* when only the best is tied with
    itself. ``available`` is the size of the whole validation split, to say whether ``--val-limit``
    can still grow.
    """
    scores = tuple(float(s) for s in topk_scores if math.isfinite(s))
    if not scores or images <= 0:
        return ProxyHealth(images, float("nan"), scores, 0, False, None, "no scores to judge")
    best = scores[0]
    se = accuracy_stderr(best, images)
    margin = Z * math.sqrt(2) * se
    tied = sum(1 for s in scores if best - s < margin)
    separable = tied == 1
    needed, advice = None, None
    if not separable:
        gap = best - scores[1]
        if gap > 0:
            needed = math.ceil(2 * (Z ** 2) * best * (1 - best) / gap ** 2)
        more = (f"score on more validation images (--val-limit; {needed:,} would separate the best two)"
                if needed is not None else "score on more validation images (--val-limit)")
        if available is not None and images >= available:
            more = "the whole validation split is in use: a larger validation split"
        advice = (f"The top-{len(scores)} are not separable: {tied} are within the noise of the best, so the "
                  f"search's pick among them is luck. To separate them, {more}, or train the supernet longer "
                  "(more epochs, the sandwich recipe) so the scores spread out")
    return ProxyHealth(images, se, scores, tied, separable, needed, advice)


# ----- rank check -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RankEntry:
    arch: str
    macs: int
    inherited: float
    standalone: float


@dataclass
class RankCheck:
    entries: list[RankEntry]
    kendall: tuple[float, float, float]
    spearman: tuple[float, float, float]
    recipe: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def verdict(self, threshold: float = 0.6) -> str:
        tau, low, _ = self.kendall
        if low >= threshold:
            return f"trust: Kendall tau {tau:.2f} (95% CI low {low:.2f}) is at least {threshold:g}"
        if tau >= threshold:
            return (f"probably: Kendall tau {tau:.2f} reaches {threshold:g} but its interval reaches down to "
                    f"{low:.2f}; check more architectures (--rank-check N)")
        return (f"do not trust: Kendall tau {tau:.2f} < {threshold:g}; train the supernet longer or with the "
                "sandwich recipe, or check the stand-alone spread (architectures may all train alike here)")

    def to_json(self) -> dict[str, Any]:
        return {"entries": [e.__dict__ for e in self.entries],
                "kendall_tau": dict(zip(("value", "ci_low", "ci_high"), self.kendall)),
                "spearman_rho": dict(zip(("value", "ci_low", "ci_high"), self.spearman)),
                "recipe": self.recipe, "notes": self.notes, "verdict": self.verdict()}


def bootstrap_rank_correlation(x: Sequence[float], y: Sequence[float], *, resamples: int = 2000,
                               seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Kendall tau and Spearman rho of ``x`` vs ``y`` with 95% percentile intervals from resampling the
    pairs (architectures) with replacement."""
    from scipy import stats

    a, b = np.asarray(x, float), np.asarray(y, float)
    if len(a) != len(b) or len(a) < 3:
        raise ConfigError("a rank correlation needs at least 3 pairs")
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[float, float, float]] = {}
    for name, fn in (("kendall", stats.kendalltau), ("spearman", stats.spearmanr)):
        value = float(fn(a, b)[0])
        draws = []
        for _ in range(resamples):
            idx = rng.integers(0, len(a), len(a))
            if np.ptp(a[idx]) == 0 or np.ptp(b[idx]) == 0:
                continue
            draws.append(float(fn(a[idx], b[idx])[0]))
        low, high = (np.percentile(draws, [2.5, 97.5]) if draws else (math.nan, math.nan))
        out[name] = (value, float(low), float(high))
    return out


def spread_archs(space: SearchSpace, count: int, input_hw: tuple[int, int], seed: int = 0) -> list[Arch]:
    """``count`` distinct architectures spread evenly over the space's MAC range (one per MAC bin),
    so a rank check covers small and large networks alike, not just the middle uniform sampling hits."""
    table = space.macs_table(input_hw)
    lo, hi = sum(min(r) for r in table), sum(max(r) for r in table)
    rng = np.random.default_rng([seed, 4242])
    width = (hi - lo) / count
    archs: list[Arch] = []
    for k in range(count):
        for _ in range(20):
            arch = space.sample_in_range(rng, table, lo + k * width, lo + (k + 1) * width)
            if arch not in archs:
                archs.append(arch)
                break
    return archs


def rank_check(
    supernet: Any,
    data: DatasetSplits,
    archs: Sequence[Arch],
    out_dir: str | Path,
    *,
    train: Callable[[Arch, Path], float],
    recipe: dict[str, Any],
    recal: int = 10,
    device: torch.device | None = None,
    on_arch: Callable[[int, int, RankEntry], None] | None = None,
) -> RankCheck:
    """Inherited validation accuracy vs stand-alone test accuracy (``train(arch, dir)``) for ``archs``.

    Each stand-alone result is cached as ``out_dir/<arch_id>.json`` together with ``recipe``; a cached
    result with another recipe is retrained, so changing the recipe never mixes figures.
    """
    from edgenas.evaluate import score_archs

    out = Path(out_dir)
    try:  # before any work: an unwritable cache would lose every trained network
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise EdgenasError(f"cannot write the rank-check cache {out}: {exc.strerror or exc}") from None
    inherited = score_archs(supernet, list(archs), data, split="val", recal=recal, device=device)
    entries = []
    input_hw = tuple(data.input_size)
    for i, (arch, score) in enumerate(zip(archs, inherited)):
        cache = out / f"{arch.arch_id}.json"
        doc = read_json(cache) if cache.is_file() else None
        if not isinstance(doc, dict) or doc.get("recipe") != recipe or doc.get("arch") != arch.to_str():
            accuracy = train(arch, out / arch.arch_id)
            doc = {"arch": arch.to_str(), "recipe": recipe, "standalone": accuracy}
            atomic_write_json(cache, doc)
        entry = RankEntry(arch.to_str(), supernet.space.macs(arch, input_hw, data.in_channels, data.num_classes),
                          score.accuracy, float(doc["standalone"]))
        entries.append(entry)
        if on_arch is not None:
            on_arch(i + 1, len(archs), entry)
    corr = bootstrap_rank_correlation([e.inherited for e in entries], [e.standalone for e in entries])
    check = RankCheck(entries, corr["kendall"], corr["spearman"], recipe)
    spread = np.ptp([e.standalone for e in entries])
    if spread < 0.01:
        check.notes.append(f"the stand-alone accuracies span only {spread:.2%}: architectures train alike in this "
                           "setting, so no proxy can rank them (a harder task, narrower widths or less data help)")
    atomic_write_json(out / "rank_check.json", check.to_json())
    return check
