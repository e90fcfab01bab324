"""The check itself: FLOPs, params and latency against the baseline, as a report (text, JSON, JUnit)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgenas.check.measure import (
    Baseline,
    RatioMeasurement,
    Timer,
    _Bundle,
    _cost,
    _load_bundle,
    _measure_until,
    _quiet,
    _say_measuring,
    _sha256,
    _target,
)
from edgenas.check.reference import ReferenceSpec
from edgenas.check.rule import (
    BASELINE_KEY,
    CHECK_FORMAT,
    EXIT_INCONCLUSIVE,
    EXIT_PASS,
    EXIT_REGRESSION,
    CheckConfig,
    Decision,
    Verdict,
    _pct,
    baseline_spread,
    decide,
    rule_text,
)
from edgenas.config import to_mapping
from edgenas.errors import ConfigError, EdgenasError
from edgenas.export import MANIFEST_FILE, MODEL_FILE
from edgenas.hardware.profile import Profile


# ----- the check ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CostCheck:
    """An exact comparison of a count (FLOPs or params) with the baseline."""

    name: str
    label: str
    baseline: int
    now: int

    @property
    def verdict(self) -> Verdict:
        return "PASS" if self.now == self.baseline else "REGRESSION"

    def message(self) -> str:
        if self.now == self.baseline:
            return f"{self.label} unchanged: {self.now:,}"
        return (f"{self.label} changed: baseline {self.baseline:,}, now {self.now:,} "
                f"({_pct(self.now / self.baseline) if self.baseline else 'new'})")


@dataclass(frozen=True)
class FileCheck:
    """A file's checksum against the manifest: ok, changed, missing or unlisted (reported only)."""

    name: str
    status: Literal["ok", "changed", "missing", "unlisted"]
    expected: str | None
    actual: str | None


@dataclass(frozen=True)
class CheckReport:
    """Everything one check found; ``exit_code`` is what the CLI exits with.

    0 pass (or improved), 1 a regression (latency confidently slower than the tolerance, or FLOPs or
    params changed), 3 inconclusive (nothing failed, but the latency CI still straddled 1 + tolerance
    when the trial or time cap was reached: neither a pass nor a regression; rerun, on a quieter
    machine or with a larger --max-trials). A definite failure wins over an inconclusive latency.
    """

    bundle: str
    profile: str
    profile_hash: str
    config: CheckConfig
    baseline: Baseline
    measurement: RatioMeasurement
    decision: Decision
    costs: tuple[CostCheck, ...]
    files: tuple[FileCheck, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)
    seconds: float = 0.0

    @property
    def rule(self) -> str:
        return rule_text(self.config, self.measurement.trials)

    @property
    def failures(self) -> list[str]:
        out = []
        if self.decision.failed:
            out.append(f"latency regression: {self.decision.summary()}")
        out += [c.message() for c in self.costs if c.verdict == "REGRESSION"]
        return out

    @property
    def inconclusive(self) -> bool:
        return not self.decision.decided

    @property
    def exit_code(self) -> int:
        if self.failures:
            return EXIT_REGRESSION
        return EXIT_INCONCLUSIVE if self.inconclusive else EXIT_PASS

    @property
    def verdict(self) -> Verdict:
        if self.failures:
            return "REGRESSION"
        return self.decision.verdict

    def rows(self) -> list[tuple[str, str, str, str, str, str]]:
        """metric, baseline, now, change, CI, verdict."""
        d, m, b = self.decision, self.measurement, self.baseline
        rows = [("latency ratio (bundle/ref)", f"{b.ratio_median:.4f}", f"{m.ratio_median:.4f}", _pct(d.change),
                 f"{_pct(d.ci_low)} .. {_pct(d.ci_high)}", d.verdict),
                ("bundle latency (ms, info)", f"{b.bundle_median_ms:.4f}", f"{m.bundle_median_ms:.4f}",
                 _pct(m.bundle_median_ms / b.bundle_median_ms), "", "INFO")]
        for c in self.costs:
            rows.append((c.label, f"{c.baseline:,}", f"{c.now:,}",
                         _pct(c.now / c.baseline) if c.baseline else "", "exact", c.verdict))
        changed = [f for f in self.files if f.status != "ok"]
        rows.append(("files sha256", f"{len(self.files)} listed", "all match" if not changed else
                     ", ".join(f"{f.name} {f.status}" for f in changed), "", "", "INFO"))
        return rows

    def render(self, use_rich: bool = False) -> str:
        """The table plus the rule, notes and failures; rich (colours) for a terminal, plain text for logs."""
        head = ("metric", "baseline", "now", "change", f"{self.config.confidence:.0%} CI", "verdict")
        rows = self.rows()
        lines = [f"edgenas check {self.bundle} on {self.profile} ({self.profile_hash}): {self.verdict}"]
        lines += [_rich_table(head, rows) if use_rich else _plain_table(head, rows), f"rule: {self.rule}"]
        m = self.measurement
        lines.append(f"{m.trials} trial ratios now ({m.rounds} round{'s' if m.rounds > 1 else ''}): median "
                     f"{m.ratio_median:.4f}, range {min(m.ratios):.4f} .. {max(m.ratios):.4f}; reference "
                     f"{self.baseline.reference.describe()}; {m.seconds:.1f} s measuring")
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"FAIL: {f}" for f in self.failures]
        if self.inconclusive and not self.failures:
            lines.append(f"INCONCLUSIVE (exit {EXIT_INCONCLUSIVE}): {self.decision.summary()}; the CI straddles "
                         f"+{self.config.tolerance:.1%} after {m.trials} trials. Neither a pass nor a regression: "
                         "rerun the check, on a quieter machine or with a larger --max-trials")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        d, m, b = self.decision, self.measurement, self.baseline
        return {
            "format": CHECK_FORMAT, "bundle": self.bundle, "profile": self.profile, "profile_hash": self.profile_hash,
            "verdict": self.verdict, "exit_code": self.exit_code, "inconclusive": self.inconclusive,
            "rule": self.rule,
            "config": to_mapping(self.config),
            "latency": {"verdict": d.verdict, "baseline_ratio": b.ratio_median, "ratio_median": m.ratio_median,
                        "change": d.change, "ci": [d.ci_low, d.ci_high], "ratios": list(m.ratios),
                        "trials": m.trials, "rounds": m.rounds, "bundle_median_ms": m.bundle_median_ms,
                        "reference_median_ms": m.reference_median_ms, "baseline_bundle_median_ms": b.bundle_median_ms,
                        "baseline_reference_median_ms": b.reference_median_ms,
                        "reference": b.reference.summary_json(),
                        "seconds": m.seconds},
            **{c.name: {"verdict": c.verdict, "baseline": c.baseline, "now": c.now, "message": c.message()}
               for c in self.costs},
            "files": [dataclasses.asdict(f) for f in self.files],
            "failures": self.failures, "notes": list(self.notes), "seconds": self.seconds,
        }

    def to_junit(self) -> str:
        """JUnit XML: one testsuite, testcases latency, flops and params; a ``failure`` element per
        regression, an ``error`` element (type LatencyInconclusive) on the latency testcase when its
        verdict is INCONCLUSIVE: the test could not reach a verdict, which CI systems show as red, not
        as passed or skipped."""
        suite = ET.Element("testsuite", name="edgenas.check", tests=str(1 + len(self.costs)),
                           failures=str(int(self.decision.failed) + sum(c.verdict == "REGRESSION" for c in self.costs)),
                           errors=str(int(self.inconclusive)), skipped="0", time=f"{self.seconds:.3f}",
                           timestamp=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        props = ET.SubElement(suite, "properties")
        for key, value in (("bundle", self.bundle), ("profile", self.profile), ("profile_hash", self.profile_hash),
                           ("tolerance", f"{self.config.tolerance:g}"), ("rule", self.rule)):
            ET.SubElement(props, "property", name=key, value=value)
        classname = f"edgenas.check.{Path(self.bundle).name}"
        case = ET.SubElement(suite, "testcase", classname=classname, name="latency",
                             time=f"{self.measurement.seconds:.3f}")
        detail = f"per-trial ratios {list(self.measurement.ratios)}; baseline ratio {self.baseline.ratio_median}"
        if self.decision.failed:
            ET.SubElement(case, "failure", type="LatencyRegression", message=self.decision.summary()).text = detail
        elif self.inconclusive:
            ET.SubElement(case, "error", type="LatencyInconclusive", message=self.decision.summary()).text = detail
        else:
            ET.SubElement(case, "system-out").text = self.decision.summary()
        for c in self.costs:
            case = ET.SubElement(suite, "testcase", classname=classname, name=c.name, time="0")
            if c.verdict == "REGRESSION":
                ET.SubElement(case, "failure", type="CostChanged", message=c.message()).text = c.message()
        ET.SubElement(suite, "system-out").text = self.render()
        ET.indent(suite)
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def _plain_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns for CI logs: the first left-aligned, the numbers right-aligned."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))).rstrip()
                     for r in [head, *rows])


def _rich_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The same table drawn by rich with coloured verdicts, as text for the terminal."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is a dependency, but the plain table is good enough without it
        return _plain_table(head, rows)
    colours = {"PASS": "green", "IMPROVED": "cyan", "REGRESSION": "bold red", "INCONCLUSIVE": "yellow",
               "INFO": "dim"}
    table = Table(*head)
    for row in rows:
        table.add_row(*row[:-1], f"[{colours.get(row[-1], '')}]{row[-1]}[/]")
    buf = io.StringIO()
    Console(file=buf, force_terminal=True, width=140).print(table)
    return buf.getvalue().rstrip()


def _file_checks(bundle: _Bundle) -> tuple[FileCheck, ...]:
    listed = bundle.manifest.get("files") or {}
    out = []
    for name, info in sorted(listed.items()) if isinstance(listed, dict) else []:
        expected = info.get("sha256") if isinstance(info, dict) else None
        p = bundle.path / name
        actual = _sha256(p.read_bytes()) if p.is_file() else None
        status = "missing" if actual is None else ("ok" if actual == expected else "changed")
        out.append(FileCheck(name, status, expected, actual))  # type: ignore[arg-type]
    if MODEL_FILE not in listed:
        out.append(FileCheck(MODEL_FILE, "unlisted", None, _sha256(bundle.fp32)))
    return tuple(out)


def _profile_arg(profile: Profile) -> str:
    """How to name the profile in a command hint: its registry name, or its file when the name finds another."""
    from edgenas.hardware.profile import list_profiles

    found = list_profiles().get(profile.name)
    if profile.source is None or (found is not None and found.resolve() == Path(profile.source).resolve()):
        return profile.name
    return profile.source


def _read_baseline(bundle: _Bundle, profile: Profile) -> Baseline:
    update = f"edgenas check {bundle.path} --profile {_profile_arg(profile)} --update"
    raw = bundle.manifest.get(BASELINE_KEY)
    if raw is None:
        raise EdgenasError(f"{bundle.path / MANIFEST_FILE} has no latency baseline; record one first: {update}")
    try:
        return Baseline.from_json(raw, where=f"{bundle.path / MANIFEST_FILE}: {BASELINE_KEY}")
    except ConfigError as exc:
        raise ConfigError(f"{exc}; rewrite it with: {update}") from None


def check_bundle(bundle_dir: str | Path, profile: Profile, config: CheckConfig | None = None,
                 on_progress: Callable[[str], None] | None = None, timer: Timer | None = None) -> CheckReport:
    """Compare the bundle's FLOPs, params and latency ratio with its baseline (see the module's rule).

    Input problems (no bundle, corrupt model, no or malformed baseline, another profile) raise
    EdgenasError before anything is measured; a regression is a report with ``exit_code`` 1 and an
    undecided latency one with ``exit_code`` 3, not exceptions. ``timer`` replaces the real timing
    (:func:`edgenas.check.measure.ort_timer`), for tests of the protocol's logic.
    """
    from edgenas.hardware.measure import runtime_versions
    from edgenas.hardware.table import cpu_model

    start = time.perf_counter()
    config = config or CheckConfig()
    bundle = _load_bundle(bundle_dir, profile)
    baseline = _read_baseline(bundle, profile)
    target = _target(profile, bundle.input_shape, config)
    if target.latency_hash() != baseline.profile_hash:
        raise ConfigError(
            f"the baseline of {bundle.path} was recorded with profile '{baseline.profile}' (latency hash "
            f"{baseline.profile_hash}), but '{profile.name}' at {'x'.join(map(str, bundle.input_shape))} has hash "
            f"{target.latency_hash()}; check with the baseline's profile or rewrite the baseline with --update")
    if tuple(baseline.reference.input_shape) != bundle.input_shape:
        raise ConfigError(f"the baseline's reference workload is for input {list(baseline.reference.input_shape)}, "
                          f"the bundle's input is {list(bundle.input_shape)}; rewrite the baseline with --update")
    cost = _cost(bundle)
    costs = (CostCheck("flops", "FLOPs (MACs)", baseline.onnx_macs, cost["onnx_macs"]),
             CostCheck("params", "params", baseline.onnx_params, cost["onnx_params"]))
    files = _file_checks(bundle)
    notes: list[str] = []
    if profile.name != baseline.profile:
        notes.append(f"profile '{profile.name}' has the same latency hash as the baseline's '{baseline.profile}'")
    if bundle.model_file != baseline.model_file:
        notes.append(f"measured {bundle.model_file}, but the baseline measured {baseline.model_file}")
    if _sha256(bundle.model) != baseline.sha256:
        notes.append(f"{bundle.model_file} changed since the baseline (sha256 {baseline.sha256[:12]} -> "
                     f"{_sha256(bundle.model)[:12]}); expected after retraining or re-export")
    notes += [f"{f.name}: sha256 {f.status} vs the manifest's files" for f in files if f.status != "ok"]
    machine = cpu_model()
    if machine != baseline.machine:
        notes.append(f"baseline measured on '{baseline.machine}', now on '{machine}': ratios mostly carry over "
                     "between CPUs of one family, less so across families")
    versions = runtime_versions()
    if versions.get("onnxruntime") != baseline.runtime_versions.get("onnxruntime"):
        notes.append(f"onnxruntime {baseline.runtime_versions.get('onnxruntime')} at baseline, now "
                     f"{versions.get('onnxruntime')}")
    if isinstance(baseline.reference, ReferenceSpec):
        notes.append(f"this baseline times the bundle against {baseline.reference.name}, whose ratio to a bundle moves "
                     "by several percent with load and host; re-record it with --update to time the bundle against "
                     "its own baseline graph (ref-twin/1)")

    def decision_of(ratios: Sequence[float]) -> Decision:
        return decide(ratios, baseline.ratio_median, config.tolerance, config.confidence, config.resamples,
                      config.seed, baseline_ratios=baseline.ratios)

    say = on_progress or _quiet
    _say_measuring(bundle, target, baseline.reference, config, say)
    m = _measure_until(bundle, target, baseline.reference, config, lambda r: decision_of(r).decided, say, timer)
    decision = decision_of(m.ratios)
    spread = baseline_spread(baseline.ratios, config)
    if spread is not None and spread > config.tolerance / 2:
        notes.append(f"the baseline is noisy (its ratio is known to ±{spread:.1%} only), which widens every check's "
                     "CI: re-record it with --update on a quiet machine")
    if m.trials < 3:
        notes.append(f"only {m.trials} trial(s): the CI is as wide as the trials' spread; use --trials 5 or more")
    return CheckReport(str(bundle.path), profile.name, target.latency_hash(), config, baseline, m, decision, costs,
                       files, tuple(notes), time.perf_counter() - start)
