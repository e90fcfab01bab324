"""Reliability of ``edgenas check``: false alarms on an unchanged bundle, detection of a ~25% slower one.

The CI check (:mod:`edgenas.check`) compares the bundle/reference latency ratio with the baseline by a
bootstrap rule (REGRESSION iff the 95% CI of median(r)/baseline lies above 1 + tolerance). This script
asks whether that rule is usable on the machine at hand. Run it from the repository root::

    .venv/bin/python benchmarks/check_reliability.py export/<name> --profile cpu-ort --runs 20

What it does, on a copy of the bundle in a temporary directory (the bundle itself is never touched):

1. records the baseline once (``edgenas check --update``);
2. runs the check ``--runs`` times on the unchanged bundle: every REGRESSION there is a false alarm;
3. builds a SLOWER variant: the same ONNX graph plus a side branch (the reference workload's
   Conv+Relu stack on the input, pooled, projected to the logits and added with a weight of 1e-6,
   so the output is unchanged to float precision but nothing can be optimised away). The branch's
   width is calibrated by interleaved measurement of original vs variant until the measured slowdown
   is within 25-35% (at least the 25% the check must catch), and that measured slowdown is reported;
4. runs the check ``--runs`` times on the variant against the ORIGINAL baseline. The FLOPs rule
   flags it trivially (the branch adds MACs), so the latency verdict is counted separately: the
   question is whether the latency rule alone catches a 25% slowdown.

``--quick`` makes it 3 runs each: a smoke test of the script, not figures to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from _report import machine_info, provenance, publish

from edgenas.check import (
    Baseline,
    CheckConfig,
    ReferenceSpec,
    check_bundle,
    check_protocol,
    parse_tolerance,
    rule_text,
    update_baseline,
)
from edgenas.errors import EdgenasError
from edgenas.hardware.measure import OrtMeasurer
from edgenas.hardware.profile import Profile, load_profile

SECTION_KEY = "check_reliability"
SECTION_TITLE = "CI latency check: false alarms and detection"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "BENCHMARKS.md"
SLOWDOWN_BAND = (0.25, 0.35)
BRANCH_WEIGHT = 1e-6
CALIBRATION_STEPS = 8
SLOWDOWN_TRIALS = 40


@dataclass(frozen=True)
class Run:
    """One check: its verdicts and the latency figures."""

    latency: str
    flops: str
    exit_code: int
    change: float
    ci_low: float
    ci_high: float
    seconds: float


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def default_bundle() -> Path:
    """The first bundle (a directory with manifest.json) under ./export."""
    root = Path("export")
    found = sorted(p.parent for p in root.glob("*/manifest.json")) if root.is_dir() else []
    if not found:
        raise SystemExit("no bundle under export/; run `edgenas export ...` first or pass a bundle directory")
    return found[0]


# ----- the slower variant -------------------------------------------------------------------------------------
def slower_variant(model: bytes, branch: ReferenceSpec, weight: float = BRANCH_WEIGHT) -> bytes:
    """``model`` plus ``branch`` computed from the same input and added to the first output times ``weight``."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load_model_from_string(model)
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    source = next(i.name for i in graph.input if i.name not in initializers)
    out = graph.output[0].name
    main = f"{out}__main"
    for node in graph.node:  # rename the original output's producer, then add the branch into it
        node.output[:] = [main if o == out else o for o in node.output]
    nodes, inits = branch.graph_parts(source, "slow__logits", prefix="slow__")
    scale = numpy_helper.from_array(np.array(weight, dtype=np.float32), "slow__scale")
    nodes += [helper.make_node("Mul", ["slow__logits", "slow__scale"], ["slow__scaled"], name="slow__mul"),
              helper.make_node("Add", [main, "slow__scaled"], [out], name="slow__add")]
    graph.node.extend(nodes)
    graph.initializer.extend([*inits, scale])
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _classes(model: bytes) -> int:
    import onnx

    dims = onnx.load_model_from_string(model).graph.output[0].type.tensor_type.shape.dim
    return int(dims[-1].dim_value) or 10


def measure_slowdown(profile: Profile, shape: tuple[int, int, int], original: bytes, variant: bytes,
                     trials: int) -> tuple[float, list[float]]:
    """Median over interleaved trials of variant/original latency (the check's protocol), and the ratios."""
    p = replace(profile, measure=check_protocol(profile.measure, CheckConfig(trials=trials)))
    a, b = OrtMeasurer(p).measure_onnx_many([original, variant], [shape, shape])
    ratios = [y / x for x, y in zip(a.trial_medians_ms, b.trial_medians_ms)]
    return float(np.median(ratios)), ratios


def calibrate_variant(profile: Profile, shape: tuple[int, int, int], original: bytes, macs: int,
                      ) -> tuple[bytes, ReferenceSpec, float, list[float]]:
    """Grow or shrink the side branch until the measured slowdown is within 25-35% (closest otherwise)."""
    classes = _classes(original)
    extra = 0.25 * macs
    best: tuple[float, bytes, ReferenceSpec, float, list[float]] | None = None
    tried: set[tuple[int, int]] = set()
    for _ in range(CALIBRATION_STEPS):
        spec = ReferenceSpec.for_macs(shape, extra, classes=classes)
        if (spec.width, spec.depth) in tried:
            spec = replace(spec, depth=spec.depth + 1)
        tried.add((spec.width, spec.depth))
        variant = slower_variant(original, spec)
        slowdown, ratios = measure_slowdown(profile, shape, original, variant, SLOWDOWN_TRIALS)
        _say(f"side branch width {spec.width} depth {spec.depth}: measured slowdown {slowdown - 1:+.1%}")
        distance = abs(slowdown - 1.30)
        if best is None or distance < best[0]:
            best = (distance, variant, spec, slowdown, ratios)
        if SLOWDOWN_BAND[0] <= slowdown - 1 <= SLOWDOWN_BAND[1]:
            break
        extra = spec.macs() * (0.25 / (slowdown - 1) if slowdown - 1 > 0.02 else 2.0)
    assert best is not None
    return best[1], best[2], best[3], best[4]


# ----- the runs ---------------------------------------------------------------------------------------------------
def run_checks(bundle: Path, profile: Profile, config: CheckConfig, runs: int, label: str) -> list[Run]:
    out = []
    for i in range(runs):
        start = time.perf_counter()
        report = check_bundle(bundle, profile, config)
        seconds = time.perf_counter() - start
        d = report.decision
        flops = next(c.verdict for c in report.costs if c.name == "flops")
        out.append(Run(d.verdict, flops, report.exit_code, d.change, d.ci_low, d.ci_high, seconds))
        _say(f"{label} check {i + 1}/{runs}: latency {d.verdict} d={d.change:.3f} "
             f"CI {d.ci_low:.3f}..{d.ci_high:.3f}, FLOPs {flops}, {seconds:.2f} s")
    return out


def _counts(runs: list[Run], attr: str) -> str:
    values = [getattr(r, attr) for r in runs]
    return " / ".join(f"{values.count(v)} {v}" for v in ("PASS", "REGRESSION", "IMPROVED") if values.count(v))


def format_report(args: argparse.Namespace, bundle: Path, baseline: Baseline, update_s: float,
                  unchanged: list[Run], slow: list[Run], branch: ReferenceSpec, slowdown: float,
                  slowdown_ratios: list[float], load_before: tuple[float, ...] | None) -> str:
    info = machine_info()
    tol = args.tolerance
    trials = baseline.trials
    lines = provenance(info)
    if load_before is not None:
        lines.append(f"- load average (1/5/15 min) at the start: {' / '.join(f'{x:.2f}' for x in load_before)}")
    ref = baseline.reference
    lines += [
        "",
        f"Bundle `{bundle}` (input {'x'.join(map(str, ref.input_shape))}, {baseline.onnx_macs:,} MACs, "
        f"{baseline.onnx_params:,} params) on profile `{baseline.profile}` ({baseline.profile_hash}), {trials} trials "
        f"per check, tolerance {tol:.0%}. Baseline recorded once ({update_s:.1f} s including the reference "
        f"calibration): bundle {baseline.bundle_median_ms:.4f} ms, reference `{ref.name}` width {ref.width} "
        f"{baseline.reference_median_ms:.4f} ms, ratio {baseline.ratio_median:.4f}.",
        "",
        f"Slower variant: the same graph plus a side branch (`{ref.name}` layers, width {branch.width}, depth "
        f"{branch.depth}, added to the logits x {BRANCH_WEIGHT:g}); **measured slowdown {slowdown - 1:+.1%}** "
        f"(median of {len(slowdown_ratios)} interleaved trials, range {min(slowdown_ratios) - 1:+.1%} .. "
        f"{max(slowdown_ratios) - 1:+.1%}).",
        "",
        "| bundle | checks | latency verdicts | FLOPs verdicts | d median | d min | d max | s per check |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for label, runs in (("unchanged", unchanged), (f"slower ({slowdown - 1:+.0%} measured)", slow)):
        d = [r.change for r in runs]
        secs = [r.seconds for r in runs]
        lines.append(f"| {label} | {len(runs)} | {_counts(runs, 'latency')} | {_counts(runs, 'flops')} | "
                     f"{np.median(d):.3f} | {min(d):.3f} | {max(d):.3f} | {np.median(secs):.2f} |")
    false_alarms = sum(r.latency == "REGRESSION" for r in unchanged)
    caught = sum(r.latency == "REGRESSION" for r in slow)
    lines += [
        "",
        f"d = median(per-trial ratio) / baseline ratio. Latency rule alone: **{false_alarms}/{len(unchanged)} false "
        f"alarms** on the unchanged bundle, **{caught}/{len(slow)} detections** of the slower variant. "
        "The exit code also fails on the FLOPs change, which the variant always has; the latency column shows what "
        "the ratio rule would catch for a slowdown that does not change FLOPs (a runtime or export change).",
        "",
        f"Rule: {rule_text(CheckConfig(tolerance=tol), trials)}",
    ]
    if args.note:
        lines += ["", args.note]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("bundle", nargs="?", help="bundle directory (default: the first under export/)")
    p.add_argument("--profile", default="cpu-ort", help="onnxruntime hardware profile")
    p.add_argument("--runs", type=int, help="checks on each of the unchanged and the slower bundle (default 20)")
    p.add_argument("--tolerance", default="10%", help="the check's tolerance (10%% or 0.1)")
    p.add_argument("--trials", type=int, help="override the profile's trials per check")
    p.add_argument("--quick", action="store_true", help="smoke test: 3 runs each")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="markdown file whose section is rewritten ('-': print)")
    p.add_argument("--json", dest="json_out", help="also write the raw per-check figures to this JSON file")
    p.add_argument("--note", default="", help="free text appended to the section")
    args = p.parse_args(argv)
    if args.runs is None:
        args.runs = 3 if args.quick else 20
    if args.runs < 1:
        p.error("--runs must be >= 1")
    try:
        args.tolerance = parse_tolerance(args.tolerance)
    except EdgenasError as exc:
        p.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)  # ONNX Runtime uses the profile's threads; keep onnx/torch work off the other core
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    source = Path(args.bundle) if args.bundle else default_bundle()
    profile = load_profile(args.profile)
    config = CheckConfig(tolerance=args.tolerance, trials=args.trials)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgenas-check-bench-") as tmp:
        original = Path(shutil.copytree(source, Path(tmp) / source.name))
        _say(f"recording the baseline of a copy of {source} on {profile.name}")
        t0 = time.perf_counter()
        baseline = update_baseline(original, profile, config, on_progress=_say)
        update_s = time.perf_counter() - t0
        unchanged = run_checks(original, profile, config, args.runs, "unchanged")

        slow_dir = Path(shutil.copytree(original, Path(tmp) / f"{source.name}-slower"))
        measured = slow_dir / baseline.model_file
        shape = tuple(baseline.reference.input_shape)
        variant, branch, slowdown, ratios = calibrate_variant(profile.with_input_shape(shape), shape,  # type: ignore[arg-type]
                                                              measured.read_bytes(), baseline.onnx_macs)
        if not SLOWDOWN_BAND[0] <= slowdown - 1 <= SLOWDOWN_BAND[1]:
            _say(f"warning: measured slowdown {slowdown - 1:+.1%} is outside 25-35% after {CALIBRATION_STEPS} steps")
        measured.write_bytes(variant)
        slow = run_checks(slow_dir, profile, config, args.runs, "slower")
    body = format_report(args, source, baseline, update_s, unchanged, slow, branch, slowdown, ratios, load_before)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({
            "baseline": baseline.to_json(), "slowdown": slowdown, "slowdown_ratios": ratios,
            "branch": branch.to_json(), "unchanged": [asdict(r) for r in unchanged],
            "slower": [asdict(r) for r in slow]}, indent=2))
    publish(args.out, SECTION_KEY, SECTION_TITLE, body)
    _say(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
