"""CI latency-regression check of an exported bundle (``edgenas check BUNDLE --profile P``).

Absolute milliseconds on shared CI runners drift by more than the regressions worth catching (other
jobs, turbo states, a different runner each time), so the check never compares milliseconds across
runs. It times the bundle's model and a FIXED REFERENCE WORKLOAD interleaved in the same run and
compares their latency *ratio* with the ratio recorded in the bundle's baseline: whatever slows the
machine down slows both alike and cancels.

The reference workload is fixed when the baseline is recorded and stored in it, so every later
check rebuilds exactly the same model. ``--update`` records the bundle's TWIN
(:class:`TwinReference`, ``ref-twin/1``): the model graph it measures, as it is at ``--update``,
with its large weights replaced by seeded random ones. Older baselines (and ``--reference mbconv``)
use ``ref-mbconv/1`` (:class:`ReferenceSpec`): a small network of inverted-residual blocks built
with ``onnx.helper`` from seeded weights, its width picked so that its latency is of the order of
the bundle's. Why the twin: a reference with another op mix than the bundle's reacts differently to
load and to the CPU, and the difference lands in the ratio. In ``benchmarks/check_reliability.py``
(docs/BENCHMARKS.md; a shared 2-core host, five scenarios: quiet, an on/off noisy neighbour, two
always-busy processes, and baselines recorded under those loads but checked quiet; 20 checks each,
both references checked in turn), a MobileNetV3 bundle's unchanged d ranged 0.78-1.62 against
``ref-mbconv/1`` (28/100 false alarms at 10%, 89/100 detections of a +24.5% slowdown) and 0.91-1.06
against its twin (0/100 false alarms, 100/100 detections). Between two hosts of one CPU type the
mbconv ratio had moved by 9-18%; a twin runs the same kernels as the bundle, so a CPU that favours
some kernels speeds up both alike (reasoning: one CPU type here). The price: an onnxruntime upgrade
that slows the bundle's kernels slows its twin alike, so the check sees changes of the bundle (its
graph, its export, its weights), not of the runtime, whose version change it notes.

Protocol: rounds of interleaved trials, each timing 10 runs of the bundle and 10 of the reference
(after 3 untimed ones), alternating which goes first. The first round has T trials: by default the
profile's timed-run budget (``measure.trials x measure.repeats`` / 10: 30 for cpu-ort); ``--trials``
sets it. Short trials because contention from other jobs comes in bursts: a trial of 100 runs lets a
burst hit one model's block and not the other's, while short trials pair their timings up. While the
verdict is INCONCLUSIVE, further rounds double the trials measured so far, up to ``--max-trials``
(default 8 T) and starting no round after ``--max-seconds`` (default 60): a quiet run decides after
the first round, a noisy one measures longer instead of guessing. Each round opens fresh sessions.
``--update`` measures the same way until the baseline's median ratio is known to ±tolerance/4.

Statistical rule (the same text is in the CLI help and every report): the per-trial ratios are
``r_t = bundle_median_t / reference_median_t``; the relative change is ``d = median(r) /
baseline_ratio``; a 95% bootstrap CI of ``median(r) / baseline_ratio`` is taken from 2000 seeded
resamples of the T ratios and of the baseline's stored ratios. Three verdicts:

- REGRESSION (exit 1) iff the CI's lower bound > 1 + tolerance (confidently slower than the tolerance);
- PASS (exit 0) iff its upper bound <= 1 + tolerance (confidently within it); IMPROVED, a pass,
  iff its upper bound < 1 - tolerance;
- INCONCLUSIVE (exit 3) otherwise: the CI straddles 1 + tolerance after the last round. Before the
  three-way rule a wide CI passed, so a check on a busy host lost its power silently; now it says
  that it could not decide, and CI decides what to do (``.ci/run`` reruns it once, then fails).

The baseline's noise is in the CI too, so a baseline recorded on a busy machine cannot turn its own
noise into a regression later (measured: a baseline whose 30 ratios spread 0.86-2.38 on one host,
then a tight ratio 10.5% above its median on a quiet host of the same CPU family, which the
one-sample rule called a regression). The check reports a noisy baseline and asks for it to be
re-recorded. A baseline is validated when read, before anything is measured (positive finite
ratios, ``ratio_median`` their median, ``trials`` their count, ...): a bad one is an input error.

FLOPs (multiply-adds of Conv/Gemm/MatMul, 1 MAC = 1 FLOP as everywhere in edgenas) and parameters
are recomputed from ``model.onnx`` and must equal the baseline exactly: they do not drift, so any
difference is a changed architecture and fails the check. File checksums are compared with the
manifest's ``files`` and the baseline and only reported: retrained weights change the file without
changing its speed.

Exit codes: 0 pass (or improved), 1 regression, 2 usage or input error (one ``error:`` line) or a
crash of the check itself (never 1: 1 means the bundle regressed), 3 inconclusive.
"""

from __future__ import annotations

from edgenas.check.measure import (
    Baseline,
    RatioMeasurement,
    Timer,
    check_protocol,
    format_baseline,
    measure_ratio,
    ort_timer,
    update_baseline,
)
from edgenas.check.reference import Reference, ReferenceSpec, TwinReference, reference_from_json
from edgenas.check.report import CheckReport, CostCheck, FileCheck, check_bundle
from edgenas.check.rule import (
    BASELINE_KEY,
    CHECK_FORMAT,
    EXIT_ERROR,
    EXIT_INCONCLUSIVE,
    EXIT_PASS,
    EXIT_REGRESSION,
    REFERENCE_KINDS,
    REFERENCE_NAME,
    TWIN_NAME,
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
    "EXIT_ERROR",
    "EXIT_INCONCLUSIVE",
    "EXIT_PASS",
    "EXIT_REGRESSION",
    "REFERENCE_KINDS",
    "REFERENCE_NAME",
    "TWIN_NAME",
    "Baseline",
    "CheckConfig",
    "CheckReport",
    "CostCheck",
    "Decision",
    "FileCheck",
    "RatioMeasurement",
    "Reference",
    "ReferenceSpec",
    "Timer",
    "TwinReference",
    "baseline_spread",
    "check_bundle",
    "check_protocol",
    "decide",
    "format_baseline",
    "measure_ratio",
    "ort_timer",
    "parse_tolerance",
    "reference_from_json",
    "rule_text",
    "update_baseline",
]
