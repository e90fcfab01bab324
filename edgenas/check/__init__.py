"""CI latency-regression check of an exported bundle (``edgenas check BUNDLE --profile P``).

Absolute milliseconds on shared CI runners drift by more than the regressions worth catching (other
jobs, turbo states, a different runner each time), so the check never compares milliseconds across
runs. It times the bundle's model and a FIXED REFERENCE WORKLOAD interleaved in the same run and
compares their latency *ratio* with the ratio recorded in the bundle's baseline: whatever slows the
machine down slows both alike and cancels.

The reference workload (:class:`ReferenceSpec`, ``ref-mbconv/1``) is a small network of
inverted-residual blocks (Conv+Relu stem, 1x1 / depthwise 3x3 / 1x1 convolutions), GlobalAveragePool
and Gemm, built with ``onnx.helper`` from seeded weights (not with torch, so it does not change when
torch's exporter does), on the bundle's input shape. ``--update`` picks its width so that its
latency is of the order of the bundle's (0.3x-3x) and stores the spec in the baseline, so every
later check rebuilds exactly the same reference.

Protocol: T interleaved trials, each timing 10 runs of the bundle and 10 of the reference (after
3 untimed ones), alternating which goes first. By default T spends the profile's timed-run budget
(``measure.trials x measure.repeats`` / 10: 30 for cpu-ort); ``--trials`` sets it. Short trials
because contention from other jobs comes in bursts: a trial of 100 runs lets a burst hit one model's
block and not the other's, while short trials pair their timings up. In four comparisons of 12
checks each on a shared 2-core machine (an mbv3 bundle, load average about 3), the relative std of
the check's ratio was 3.5-11.3% with 3 trials of 100 runs and 1.7-3.6% with 30 trials of 10.

Statistical rule (the same text is in the CLI help and every report): the per-trial ratios are
``r_t = bundle_median_t / reference_median_t``; the relative change is ``d = median(r) /
baseline_ratio``; a 95% bootstrap CI of ``median(r) / baseline_ratio`` is taken from 2000 seeded
resamples of the T ratios. The verdict is REGRESSION iff the CI's lower bound > 1 + tolerance
(confidently slower than the tolerance), IMPROVED iff its upper bound < 1 - tolerance
(informational, passes), else PASS. A check passes unless it is confidently slower: a noisy run
widens the CI and passes rather than failing a build by chance; more trials narrow the CI (with 3
trials the CI spans the three ratios, so all three must exceed the tolerance). The baseline's
noise is in the CI too: ``--update`` stores the baseline's per-trial ratios and every resample
redraws them along with the current ones, so a baseline recorded on a busy machine cannot turn its
own noise into a regression later (measured: a baseline whose 30 ratios spread 0.86-2.38 was
recorded on one host; a quiet host of the same CPU family then measured a tight ratio 10.5% above
its median, which the one-sample rule called a regression). The check reports a noisy baseline and
asks for it to be re-recorded on a quiet machine, or with more ``--trials``.

Ratios carry over between CPUs only approximately: between two hosts of this workplace's CPU type,
the same bundle's ratio moved by 9-18% (20 checks on the first host measured 1.38-1.50, the second
1.64), of the order of the default tolerance. Record the
baseline on the runner class that checks it.

FLOPs (multiply-adds of Conv/Gemm/MatMul, 1 MAC = 1 FLOP as everywhere in edgenas) and parameters
are recomputed from ``model.onnx`` and must equal the baseline exactly: they do not drift, so any
difference is a changed architecture and fails the check. File checksums are compared with the
manifest's ``files`` and the baseline and only reported: retrained weights change the file without
changing its speed.

Exit codes: 0 pass (or improved), 1 regression, 2 usage or input error (one line).
"""

from __future__ import annotations

from edgenas.check.measure import (
    Baseline,
    RatioMeasurement,
    check_protocol,
    format_baseline,
    measure_ratio,
    update_baseline,
)
from edgenas.check.reference import ReferenceSpec
from edgenas.check.report import CheckReport, CostCheck, FileCheck, check_bundle
from edgenas.check.rule import (
    BASELINE_KEY,
    CHECK_FORMAT,
    REFERENCE_NAME,
    CheckConfig,
    Decision,
    baseline_spread,
    decide,
    parse_tolerance,
    rule_text,
)

__all__ = [
    "BASELINE_KEY",
    "CHECK_FORMAT",
    "REFERENCE_NAME",
    "Baseline",
    "CheckConfig",
    "CheckReport",
    "CostCheck",
    "Decision",
    "FileCheck",
    "RatioMeasurement",
    "ReferenceSpec",
    "baseline_spread",
    "check_bundle",
    "check_protocol",
    "decide",
    "format_baseline",
    "measure_ratio",
    "parse_tolerance",
    "rule_text",
    "update_baseline",
]
