"""Latency lookup table: per-(layer, choice) latencies measured on the target, summed per architecture.

Why a table: timing one candidate end to end costs seconds (export, session, warm-up, repeats); the
table costs one build per (profile, space) and then answers in microseconds, which is what lets a
search reject over-budget candidates before spending any compute on them.

How a table is measured (:func:`build_table`), and why:

* Every (layer, choice) block is its own small model at the layer's real input shape
  (``space.layer_input_shapes``), the stem at the network input and the head at
  ``space.head_input_shape``. Skip choices cost 0 (their entry exists, with count 0).
* **In context** (``method="context"``, the default): each block is timed behind a *context prefix*,
  a depthwise 1x1 convolution at the block's input shape, and the prefix alone is timed too; the
  block's entry is the difference. The prefix makes the block see what it sees inside a network: its
  input arrives as the output of a convolution. With ONNX Runtime that matters twice over. A block
  run alone pays a session run and, on CPU, a layout change of its input (``ReorderInput`` to the
  blocked NCHWc layout) and of its output (``ReorderOutput``); inside the network there is one
  session run and no reorders between blocks. And a block run alone cannot fuse its residual
  ``Add`` into its last convolution (the shortcut is still in plain NCHW), which the network does.
  Behind the prefix the residual is fused, and the session overhead, the input reorder and the
  prefix itself cancel in the difference, while the output reorders telescope along the chain
  (each block adds the reorder of its output and removes that of its input). ``method="isolated"``
  times the bare blocks and leaves all of this to the calibration; it is kept for comparison.
* **In the network** (``method="network"``): every entry is timed inside a whole subnet. A *base*
  subnet (the all-minimum by MACs: every skippable layer skipped, the cheapest block elsewhere) is
  measured, and so is, for every (layer, choice), the base with only that layer changed; the entry
  is the difference, the base's choice costs 0 and the base's own latency is the fixed part (stored
  as ``stem``; ``head`` is 0). This sees whatever a runtime does across block boundaries, which no
  block-level timing can. It matters for int8: ONNX Runtime's QDQ graphs of a block on its own
  (behind a prefix or not) kept quantize/dequantize work that the whole int8 network fuses away, so
  the in-context entries of the large blocks of the late stages came out 4-6x what changing that
  layer costs in a network (measured on ``cpu-ort-int8``, see docs/BENCHMARKS.md); for fp32 the two
  methods agree. Its cost: about one small subnet per entry instead of one block.
* All blocks, prefixes, stem, head and the calibration subnets are timed in one interleaved
  :meth:`~edgenas.hardware.measure.LatencyMeasurer.measure_many` call, so drift of the machine hits
  the parts and the end-to-end measurements alike, with copies of a *speed reference* (the
  all-minimum subnet) among them: every timing is divided by the reference's next to it and kept in
  units of the reference's build-time median, and validation and search convert their own
  measurements the same way (:mod:`edgenas.hardware.table.reference`). A host that slows down or
  speeds up, for a trial or for an hour, moves the reference as much as the model, and cancels.
* Prediction = stem + sum of the chosen blocks + head ("raw"), corrected by a calibration
  ``scale * raw + offset`` fitted on end-to-end measurements of uniformly sampled subnets plus the
  all-minimum and all-maximum (by MACs) ones, so the fit spans the whole range a search visits
  (:mod:`edgenas.hardware.calibration`).
* :func:`validate_table` measures *fresh* subnets (another seed, calibration ones excluded) end to
  end and stores median/max relative error, the fraction within 10%, and Kendall's tau in the
  table file, so every user of the table sees how far its numbers can be trusted.

The file is JSON (:data:`FORMAT`), self-describing (``format_doc``), and records the space config
hash, the profile's latency hash and the environment it was measured in; loading it against another
space or profile is an error that says how to rebuild, and using it on another machine is a warning
(:func:`environment_warnings`).
"""

from __future__ import annotations

from edgenas.hardware.table.budgets import check_quantile, loose_budget_warnings, quantile_budget
from edgenas.hardware.table.build import build_table, default_method, time_predict
from edgenas.hardware.table.core import (
    BASE_COPIES,
    FORMAT,
    FORMAT_DOC,
    METHODS,
    REFERENCE_EVERY,
    EntryStats,
    LatencyTable,
    SpeedReference,
    TableError,
    TableValidation,
    rebuild_hint,
)
from edgenas.hardware.table.environment import cpu_model, environment_of, environment_warnings
from edgenas.hardware.table.reference import ReferencedTiming, measure_referenced
from edgenas.hardware.table.validate import plot_validation, validate_table

__all__ = [
    "BASE_COPIES",
    "FORMAT",
    "FORMAT_DOC",
    "METHODS",
    "REFERENCE_EVERY",
    "EntryStats",
    "LatencyTable",
    "ReferencedTiming",
    "SpeedReference",
    "TableError",
    "TableValidation",
    "build_table",
    "check_quantile",
    "cpu_model",
    "default_method",
    "environment_of",
    "environment_warnings",
    "loose_budget_warnings",
    "measure_referenced",
    "plot_validation",
    "quantile_budget",
    "rebuild_hint",
    "time_predict",
    "validate_table",
]
