"""Stage 7: the latency regression check of a bundle against the baseline in its manifest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgenas.check import CheckConfig
from edgenas.errors import ConfigError
from edgenas.pipeline.progress import Progress, silent

__all__ = ["CheckJob", "CheckOutcome", "check"]


@dataclass(frozen=True)
class CheckJob:
    """``update``: (re)record the baseline instead of checking; ``junit``: also write JUnit XML."""

    bundle: str
    profile: str
    config: CheckConfig = field(default_factory=CheckConfig)
    update: bool = False
    junit: str | None = None


@dataclass
class CheckOutcome:
    report: Any | None  # edgenas.check.CheckReport, when checked
    baseline: Any | None  # edgenas.check.Baseline, when updated

    @property
    def exit_code(self) -> int:
        """0 pass (or a baseline written), 1 regression, 3 inconclusive; input errors raise instead (exit 2)."""
        return 0 if self.report is None else int(self.report.exit_code)


def check(job: CheckJob, progress: Progress | None = None) -> CheckOutcome:
    """Time the bundle and the reference interleaved and compare the ratio with the baseline (or record it)."""
    from edgenas.check import check_bundle, update_baseline
    from edgenas.hardware.profile import load_profile
    from edgenas.io import atomic_write_text, check_writable

    if job.update and job.junit is not None:
        raise ConfigError("--junit reports a check; it does not apply to --update")
    report = silent(progress)
    if job.junit is not None:
        check_writable(job.junit, "--junit", directory=False)  # before measuring, not after
    profile = load_profile(job.profile)
    if job.update:
        return CheckOutcome(report=None, baseline=update_baseline(job.bundle, profile, job.config,
                                                                  on_progress=report.message))
    result = check_bundle(job.bundle, profile, job.config, on_progress=report.message)
    if job.junit is not None:
        atomic_write_text(Path(job.junit), result.to_junit())
    return CheckOutcome(report=result, baseline=None)
