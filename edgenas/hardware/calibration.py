"""Calibration of an additive latency model, and the figures that say how far it can be trusted.

A lookup table predicts a network's latency as the sum of its parts measured one at a time. That
sum is close to, but not exactly, what the whole network costs: the parts were timed as separate
runs (each with its own dispatch overhead and cold caches), and a runtime may fuse or schedule
operators differently inside the whole graph. :func:`fit_calibration` corrects the sum with one
scale and one offset, ``measured ≈ scale * raw + offset``, fitted on end-to-end measurements of a
few sampled subnets, and :func:`error_figures` reports how well the corrected numbers match fresh
end-to-end measurements. Everything here is plain arithmetic on lists of milliseconds, so it is
tested on synthetic data with known answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgenas.errors import ConfigError

__all__ = ["Calibration", "ErrorFigures", "error_figures", "fit_calibration", "kendall_tau"]

# Relative residuals beyond this many robust standard deviations (1.4826 * MAD) are outliers.
_OUTLIER_SIGMAS = 3.5
# ... but never call a point an outlier when it is within this relative error of the fit.
_OUTLIER_FLOOR = 0.02
_MAX_ROUNDS = 5


@dataclass
class Calibration:
    """``predicted = scale * raw + offset_ms``, fitted on ``n`` end-to-end measurements.

    ``archs``, ``raw_ms`` and ``measured_ms`` are the fitting data, kept so the fit can be checked or
    redone (e.g. with another correction of the raw sums); ``outliers`` are the indices the robust
    fit left out. The identity calibration (``n == 0``) is what an uncalibrated table uses.
    """

    scale: float = 1.0
    offset_ms: float = 0.0
    n: int = 0
    archs: list[str] = field(default_factory=list)
    raw_ms: list[float] = field(default_factory=list)
    measured_ms: list[float] = field(default_factory=list)
    outliers: list[int] = field(default_factory=list)
    method: str = "identity"

    def apply(self, raw_ms: float) -> float:
        return self.scale * raw_ms + self.offset_ms

    def to_json(self) -> dict[str, Any]:
        return {"scale": self.scale, "offset_ms": self.offset_ms, "n": self.n, "method": self.method,
                "outliers": list(self.outliers), "archs": list(self.archs), "raw_ms": list(self.raw_ms),
                "measured_ms": list(self.measured_ms)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        try:
            return cls(scale=float(data["scale"]), offset_ms=float(data["offset_ms"]), n=int(data["n"]),
                       archs=[str(a) for a in data.get("archs", [])],
                       raw_ms=[float(x) for x in data.get("raw_ms", [])],
                       measured_ms=[float(x) for x in data.get("measured_ms", [])],
                       outliers=[int(i) for i in data.get("outliers", [])],
                       method=str(data.get("method", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed calibration: {exc}") from None


def _weighted_line(raw: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    """Least squares on relative residuals: minimises ``sum(((s*r + o - m) / m)**2)``.

    Relative, because the table is judged by relative error: an ordinary fit would let the few
    slowest subnets dominate and leave the fast ones (the ones a tight budget cares about) off.
    """
    w = 1.0 / measured
    design = np.stack([raw * w, w], axis=1)
    if np.ptp(raw) <= 1e-12 * max(1.0, float(np.abs(raw).max())):
        # All raw sums equal: the slope is undetermined; keep scale 1 and fit the offset alone.
        return 1.0, float(np.sum((measured - raw) * w * w) / np.sum(w * w))
    (scale, offset), *_ = np.linalg.lstsq(design, measured * w, rcond=None)
    return float(scale), float(offset)


def fit_calibration(raw_ms: Sequence[float], measured_ms: Sequence[float],
                    archs: Sequence[str] = ()) -> Calibration:
    """Fit ``measured ≈ scale * raw + offset`` robustly.

    Method: least squares on relative residuals (see :func:`_weighted_line`), then iterative
    trimming: points whose relative residual is more than 3.5 robust standard deviations
    (1.4826 x median absolute deviation) from the median, and more than 2% off, are dropped and the
    line refitted, up to five rounds and never below half the points. On a shared machine one
    subnet timed while another job ran is common; trimming keeps it from tilting the line, while a
    clean data set is fitted exactly as plain least squares would. With one point only the offset
    is fitted (scale 1). When the line's slope comes out non-positive (raw sums that span less than
    the timing noise: tiny networks or a busy host), the calibration is the median ratio
    measured/raw with no offset, and its ``method`` says why.
    """
    raw = np.asarray(raw_ms, dtype=np.float64)
    meas = np.asarray(measured_ms, dtype=np.float64)
    if raw.shape != meas.shape or raw.ndim != 1:
        raise ValueError(f"raw and measured must be equally long lists, got {raw.shape} and {meas.shape}")
    if raw.size == 0:
        return Calibration(archs=list(archs))
    if not (np.all(np.isfinite(raw)) and np.all(np.isfinite(meas))) or np.any(meas <= 0):
        raise ValueError("calibration needs finite raw sums and positive measured latencies")
    keep = np.ones(raw.size, dtype=bool)
    if raw.size == 1:
        scale, offset = 1.0, float(meas[0] - raw[0])
    else:
        scale, offset = _weighted_line(raw, meas)
        for _ in range(_MAX_ROUNDS):
            rel = (scale * raw + offset - meas) / meas
            centre = np.median(rel[keep])
            sigma = 1.4826 * np.median(np.abs(rel[keep] - centre))
            bad = (np.abs(rel - centre) > max(_OUTLIER_SIGMAS * sigma, _OUTLIER_FLOOR))
            new_keep = ~bad
            if new_keep.sum() < max(2, (raw.size + 1) // 2) or np.array_equal(new_keep, keep):
                break
            keep = new_keep
            scale, offset = _weighted_line(raw[keep], meas[keep])
    if not (math.isfinite(scale) and scale > 0):
        # The raw sums span too little against the timing noise to fit a slope (tiny networks, a busy
        # host): keep only the ratio, which needs no slope, rather than fail or invert the ranking.
        if np.any(raw <= 0):
            raise ValueError(f"calibration fit gave a non-positive scale ({scale:.4g}) and the raw sums are not "
                             "all positive: the measurements are too noisy to use")
        ratio = float(np.median(meas / raw))
        return Calibration(scale=ratio, offset_ms=0.0, n=int(raw.size), archs=list(archs), raw_ms=raw.tolist(),
                           measured_ms=meas.tolist(), outliers=[],
                           method=f"ratio (median measured/raw): the fitted line's slope was {scale:.3g}, so the "
                                  "raw sums span too little against the timing noise to fit one")
    return Calibration(scale=scale, offset_ms=offset, n=int(raw.size), archs=list(archs),
                       raw_ms=raw.tolist(), measured_ms=meas.tolist(),
                       outliers=[int(i) for i in np.flatnonzero(~keep)],
                       method="relative least squares with 3.5-sigma MAD trimming")


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b between two rankings (ties handled); 1 = same order, 0 = unrelated.

    This is the figure that matters to a search: it only ranks candidates, so a predictor with the
    right order is useful even where its absolute numbers are off.
    """
    if len(x) != len(y):
        raise ValueError("kendall_tau needs two equally long sequences")
    if len(x) < 2:
        return float("nan")
    from scipy.stats import kendalltau

    tau = kendalltau(np.asarray(x, dtype=float), np.asarray(y, dtype=float)).statistic
    return float(tau)


@dataclass(frozen=True)
class ErrorFigures:
    """How well predictions match measurements: the figures a latency table is judged by."""

    n: int
    median_rel_error: float
    max_rel_error: float
    within_10pct: float
    kendall_tau: float
    mean_signed_rel_error: float


def error_figures(predicted_ms: Sequence[float], measured_ms: Sequence[float]) -> ErrorFigures:
    """Relative errors ``|predicted - measured| / measured``; ``within_10pct`` is the fraction <= 10%.

    The mean signed error is kept as well: a table that is consistently 4% slow has a bias (e.g. the
    machine got busier after the build), which is a different problem from scattered noise.
    """
    pred = np.asarray(predicted_ms, dtype=np.float64)
    meas = np.asarray(measured_ms, dtype=np.float64)
    if pred.shape != meas.shape or pred.size == 0:
        raise ValueError("error figures need equally long, non-empty predicted and measured lists")
    signed = (pred - meas) / meas
    rel = np.abs(signed)
    return ErrorFigures(n=int(pred.size), median_rel_error=float(np.median(rel)), max_rel_error=float(rel.max()),
                        within_10pct=float(np.mean(rel <= 0.10 + 1e-12)),
                        kendall_tau=kendall_tau(pred.tolist(), meas.tolist()),
                        mean_signed_rel_error=float(signed.mean()))
