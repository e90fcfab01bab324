"""The check's configuration and its decision rule: a bootstrap interval of the latency-ratio change."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from edgenas.errors import ConfigError
from edgenas.hardware.profile import MeasureSettings

CHECK_FORMAT = "edgenas-check/1"
BASELINE_KEY = "baseline"
REFERENCE_NAME = "ref-mbconv/1"
TWIN_NAME = "ref-twin/1"
Verdict = Literal["PASS", "REGRESSION", "IMPROVED", "INCONCLUSIVE"]
ReferenceKind = Literal["twin", "mbconv"]
REFERENCE_KINDS: tuple[str, ...] = ("twin", "mbconv")
# Exit codes of a check: 0 pass (or improved), 1 regression, 2 bad input or crash, 3 inconclusive.
EXIT_PASS, EXIT_REGRESSION, EXIT_ERROR, EXIT_INCONCLUSIVE = 0, 1, 2, 3
# While inconclusive, a check may measure up to this many times its first round's trials.
_ADAPTIVE_FACTOR = 8
# Width search of the reference: accept a calibration ratio in this band (well inside 0.3x-3x).
_ACCEPT_BAND = (0.5, 2.0)
_TARGET_BAND = (1 / 3, 3.0)
_WIDTH_RANGE = (2, 512)
_CALIBRATION_STEPS = 5
_CALIBRATION_MEASURE = MeasureSettings(warmup=3, repeats=10, trials=5)


# ----- configuration ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckConfig:
    """How strict the check is and how it measures.

    Each trial times ``repeats`` runs of each model after ``warmup`` untimed ones (at most the
    profile's warm-up). The first round has ``trials`` trials; ``trials=None`` spends the profile's
    timed-run budget (``measure.trials x measure.repeats / repeats``, at least 5): the same work as
    one profile measurement, cut into short interleaved trials, because short trials pair the two
    models' timings more tightly (see the module docstring). While the verdict is INCONCLUSIVE,
    further rounds double the trials measured so far, up to ``max_trials`` in all (``None``: 8x the
    first round) and no new round after ``max_seconds``. ``reference`` is the workload ``--update``
    records: ``twin`` (the bundle's own graph with seeded weights) or ``mbconv`` (the fixed
    ``ref-mbconv/1`` network sized to the bundle).
    """

    tolerance: float = 0.10
    trials: int | None = None
    max_trials: int | None = None
    max_seconds: float = 60.0
    repeats: int = 10
    warmup: int = 3
    confidence: float = 0.95
    resamples: int = 2000
    seed: int = 0
    reference: ReferenceKind = "twin"

    def __post_init__(self) -> None:
        if not (isinstance(self.tolerance, (int, float)) and 0.0 < self.tolerance < 1.0):
            raise ConfigError(f"tolerance must be between 0 and 1 (e.g. 10% or 0.1), not {self.tolerance!r}")
        if self.trials is not None and self.trials < 1:
            raise ConfigError(f"--trials must be >= 1, not {self.trials}")
        if self.max_trials is not None and self.max_trials < (self.trials or 1):
            raise ConfigError(f"--max-trials must be >= --trials ({self.trials or 1}), not {self.max_trials}")
        if not (math.isfinite(self.max_seconds) and self.max_seconds >= 0):
            raise ConfigError(f"--max-seconds must be a non-negative number, not {self.max_seconds!r}")
        if self.repeats < 1 or self.warmup < 0:
            raise ConfigError(f"repeats must be >= 1 and warmup >= 0, not {self.repeats} and {self.warmup}")
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"confidence must be between 0 and 1, not {self.confidence!r}")
        if self.resamples < 1:
            raise ConfigError(f"resamples must be >= 1, not {self.resamples}")
        if self.reference not in REFERENCE_KINDS:
            raise ConfigError(f"--reference must be one of {', '.join(REFERENCE_KINDS)}, not {self.reference!r}")

    def trial_cap(self, first: int) -> int:
        """The most trials one check measures when its first round has ``first``."""
        return max(first, self.max_trials if self.max_trials is not None else _ADAPTIVE_FACTOR * first)


def parse_tolerance(text: str | float) -> float:
    """``"10%"`` or ``"0.1"`` (or a float) to a fraction in (0, 1); anything else is a one-line error."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ConfigError(f"--tolerance must be a percentage like 10% or a fraction like 0.1, not {text!r}") from None
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        hint = f" (did you mean {raw}%?)" if not raw.endswith("%") and 1.0 <= value < 100.0 else ""
        raise ConfigError(f"--tolerance must be between 0 and 1 exclusive (0%..100%), not {text!r}{hint}")
    return value


def rule_text(config: CheckConfig | None = None, trials: int | None = None) -> str:
    """The decision rule in one paragraph, with this check's numbers (``trials``: as measured)."""
    c = config or CheckConfig()
    t = trials if trials is not None else c.trials
    count = "T" if t is None else f"T = {t}"
    first = "the profile's timed runs / repeats" if c.trials is None else str(c.trials)
    cap = f"{_ADAPTIVE_FACTOR}x that" if c.max_trials is None else str(c.max_trials)
    tol = f"{c.tolerance:.4g}"
    return (f"{count} interleaved trials of {c.repeats} runs each (first round: {first}; while the verdict is "
            f"INCONCLUSIVE, rounds doubling the trials up to {cap} in all, none started after {c.max_seconds:g} s); "
            f"per-trial ratio r_t = bundle median / reference median; d = median(r) / baseline ratio; "
            f"{c.confidence:.0%} bootstrap CI of d ({c.resamples} resamples of both the trials and the baseline's "
            f"stored trials, seed {c.seed}); REGRESSION iff CI low > 1 + {tol} (exit 1); PASS iff CI high <= 1 + {tol} "
            f"(IMPROVED if CI high < 1 - {tol}; exit 0); else INCONCLUSIVE (exit 3: the CI straddles 1 + {tol}). "
            "FLOPs and params must equal the baseline exactly.")


def _pct(x: float) -> str:
    """A ratio as a signed percentage change: 1.25 -> +25.0%."""
    return f"{(x - 1.0) * 100:+.1f}%"


# ----- the decision ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    """The latency verdict: relative change ``change`` = median(r) / baseline ratio and its CI."""

    verdict: Verdict
    change: float
    ci_low: float
    ci_high: float
    ratio_median: float
    baseline_ratio: float
    tolerance: float
    confidence: float
    resamples: int
    seed: int
    n: int

    @property
    def failed(self) -> bool:
        return self.verdict == "REGRESSION"

    @property
    def decided(self) -> bool:
        """False while the CI straddles 1 + tolerance: more trials may still decide."""
        return self.verdict != "INCONCLUSIVE"

    def summary(self) -> str:
        return (f"{self.verdict}: latency ratio {_pct(self.change)} vs baseline ({self.confidence:.0%} CI "
                f"{_pct(self.ci_low)} .. {_pct(self.ci_high)}, tolerance ±{self.tolerance:.1%}, {self.n} trials)")


def _positive_ratios(values: Sequence[float], what: str) -> np.ndarray:
    r = np.asarray(values, dtype=np.float64)
    if r.ndim != 1 or r.size == 0 or not np.all(np.isfinite(r)) or np.any(r <= 0):
        raise ValueError(f"{what} must be a non-empty sequence of positive finite numbers")
    return r


def _bootstrap_medians(values: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """Medians of ``resamples`` resamples (with replacement) of ``values``."""
    return np.median(values[rng.integers(0, values.size, size=(resamples, values.size))], axis=1)


def decide(ratios: Sequence[float], baseline_ratio: float, tolerance: float, confidence: float = 0.95,
           resamples: int = 2000, seed: int = 0, baseline_ratios: Sequence[float] | None = None) -> Decision:
    """Apply the rule of this module to per-trial ratios; pure and deterministic for a given seed.

    The bootstrap resamples the T ratios with replacement ``resamples`` times and takes the
    percentile interval of their medians over the baseline's. With ``baseline_ratios`` (the
    baseline's own per-trial ratios, as ``--update`` stores them) each resample also redraws those,
    so a noisy baseline widens the CI instead of passing its noise off as a change; without them
    ``baseline_ratio`` is taken as exact. A single ratio gives a zero-width CI, so one trial decides
    on its value alone; use several.
    """
    r = _positive_ratios(ratios, "ratios")
    if not (math.isfinite(baseline_ratio) and baseline_ratio > 0):
        raise ValueError(f"baseline ratio must be positive and finite, not {baseline_ratio!r}")
    CheckConfig(tolerance=tolerance, confidence=confidence, resamples=resamples, seed=seed)  # validates
    change = float(np.median(r)) / baseline_ratio
    rng = np.random.default_rng(seed)
    boot = _bootstrap_medians(r, rng, resamples)
    if baseline_ratios is not None:
        boot = boot / _bootstrap_medians(_positive_ratios(baseline_ratios, "baseline ratios"), rng, resamples)
    else:
        boot = boot / baseline_ratio
    alpha = 1.0 - confidence
    low, high = (float(v) for v in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
    verdict: Verdict = "INCONCLUSIVE"
    if low > 1.0 + tolerance:
        verdict = "REGRESSION"
    elif high < 1.0 - tolerance:
        verdict = "IMPROVED"
    elif high <= 1.0 + tolerance:
        verdict = "PASS"
    return Decision(verdict, change, low, high, float(np.median(r)), float(baseline_ratio), float(tolerance),
                    float(confidence), int(resamples), int(seed), int(r.size))


def baseline_spread(ratios: Sequence[float], config: CheckConfig | None = None) -> float | None:
    """Half the width of the bootstrap CI of the baseline's median ratio, relative to that median:
    how well the baseline itself is known (None without at least two stored ratios)."""
    if len(ratios) < 2:
        return None
    c = config or CheckConfig()
    b = _positive_ratios(ratios, "baseline ratios")
    boot = _bootstrap_medians(b, np.random.default_rng(c.seed), c.resamples)
    alpha = 1.0 - c.confidence
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float((high - low) / 2 / np.median(b))
