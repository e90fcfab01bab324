"""Measuring a table: every (layer, choice) entry, stem and head, then the calibration (see the package docstring)."""

from __future__ import annotations

import dataclasses
import json
import time
import timeit
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from edgenas.errors import ConfigError, EdgenasError
from edgenas.hardware.calibration import fit_calibration
from edgenas.hardware.profile import Profile
from edgenas.hardware.table.core import (
    BASE_COPIES,
    METHODS,
    REFERENCE_EVERY,
    EntryStats,
    LatencyTable,
    Method,
    SpeedReference,
)
from edgenas.hardware.table.environment import environment_of
from edgenas.space import Arch, SearchSpace, space_to_dict


# ----- building ---------------------------------------------------------------------------------------------------
class _Timer:
    """One table build's measurement: plain, or in units of the speed reference timed beside the
    models; remembers the reference it set."""

    def __init__(self, space: SearchSpace, profile: Profile, num_classes: int, meter: Any, referenced: bool) -> None:
        self.meter = meter
        self.reference: SpeedReference | None = None
        self._ref_arch = reference_arch(space, profile) if referenced else None
        self._ref_model = (space.build_subnet(self._ref_arch, num_classes, profile.input_shape[0])
                           if self._ref_arch is not None else None)
        self._ref_shape = tuple(profile.input_shape)

    def measure(self, models: list[nn.Module], shapes: list[tuple[int, int, int]], say: Callable[[str], None]
                ) -> list[Any]:
        if self._ref_model is None or self._ref_arch is None:
            return list(self.meter.measure_many(models, shapes))
        from edgenas.hardware.table.reference import measure_referenced

        timing = measure_referenced(self.meter, models, shapes, self._ref_model, self._ref_shape)  # type: ignore[arg-type]
        self.reference = SpeedReference(arch=str(self._ref_arch), median_ms=timing.unit_ms, every=REFERENCE_EVERY,
                                        noise_rel=timing.noise_rel)
        say(f"speed reference {self._ref_arch}: median {timing.unit_ms:.4f} ms, trial-to-trial spread "
            f"{timing.noise_rel:.1%}; every figure is in its units")
        return timing.stats


def reference_arch(space: SearchSpace, profile: Profile) -> Arch:
    """The speed reference of tables of this space: its all-minimum subnet by MACs."""
    return space.extreme_arch(space.macs_table(tuple(profile.input_shape[1:])))  # type: ignore[arg-type]


class _ContextPrefix(nn.Conv2d):
    """Depthwise 1x1 convolution (identity weights): the cheapest op that hands a block its input the
    way the previous block does inside a network (e.g. already in ONNX Runtime's NCHWc layout)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, 1, groups=channels, bias=False)
        nn.init.ones_(self.weight)


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    """As it reads back from JSON (tuples become lists), so a loaded table equals the built one."""
    return dict(json.loads(json.dumps(data)))


def _calibration_archs(space: SearchSpace, input_hw: tuple[int, int], count: int, seed: int) -> list[Arch]:
    """All-minimum and all-maximum (by MACs) plus ``count`` uniform samples, without duplicates."""
    if count <= 0:
        return []
    macs = space.macs_table(input_hw)
    rng = np.random.default_rng([seed, 0xCA1])
    archs = [space.extreme_arch(macs), space.extreme_arch(macs, largest=True)]
    seen = set(archs)
    attempts = 0
    while len(archs) < count + 2 and attempts < 100 * (count + 2):
        attempts += 1
        arch = space.sample(rng)
        if arch not in seen:
            seen.add(arch)
            archs.append(arch)
    return archs


def time_predict(table: LatencyTable, space: SearchSpace, samples: int = 256, number: int = 20) -> float:
    """Mean microseconds per :meth:`LatencyTable.predict` over random architectures."""
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(samples)]
    predict = table.predict
    timer = timeit.Timer(lambda: [predict(a) for a in archs])
    best = min(timer.repeat(repeat=5, number=number))
    return best / (number * samples) * 1e6


def measurer_for(profile: Profile, measurer: Any | None) -> Any:
    if measurer is not None:
        return measurer
    from edgenas.hardware.measure import create_measurer

    return create_measurer(profile)


def default_method(profile: Profile) -> Method:
    """``network`` for int8 profiles, whose block-level timings miss what the whole quantized network
    fuses (see the module docstring); ``context`` otherwise, which costs less and is as accurate there."""
    return "network" if profile.precision == "int8" else "context"


def build_table(space: SearchSpace, profile: Profile, num_classes: int = 10, calib_samples: int = 30,
                seed: int = 0, method: Method = "context", on_progress: Callable[[str], None] | None = None,
                measurer: Any | None = None, reference: bool = True) -> LatencyTable:
    """Measure every (layer, choice) block, stem and head on ``profile``'s target and calibrate.

    ``calib_samples`` uniform subnets plus the all-min and all-max ones are measured end to end in
    the same interleaved run as the blocks; ``calib_samples=0`` leaves the identity calibration.
    With ``reference`` (the default) every timing is in units of the speed reference timed beside
    it (:mod:`edgenas.hardware.table.reference`); without, in plain milliseconds.
    ``measurer`` is for tests (a fake); by default :func:`~edgenas.hardware.measure.create_measurer`.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown latency table method '{method}' (known: {', '.join(METHODS)})")
    if calib_samples < 0:
        raise ConfigError(f"calibration samples must be >= 0, not {calib_samples}")
    say = on_progress or (lambda message: None)
    start = time.perf_counter()
    meter = measurer_for(profile, measurer)
    timer = _Timer(space, profile, num_classes, meter, reference)
    if method == "network":
        return _build_network_table(space, profile, num_classes, calib_samples, seed, timer, say, start)
    in_channels, h, w = profile.input_shape
    hw = (h, w)
    shapes = space.layer_input_shapes(hw)
    head_shape = space.head_input_shape(hw)

    models: list[nn.Module] = []
    inputs: list[tuple[int, int, int]] = []

    def add(model: nn.Module, shape: tuple[int, int, int]) -> int:
        models.append(model)
        inputs.append(shape)
        return len(models) - 1

    stem_i = add(space.build_stem(in_channels), (in_channels, h, w))
    in_context = method == "context"
    head_model = space.build_head(num_classes)
    head_i = add(nn.Sequential(_ContextPrefix(head_shape[0]), head_model) if in_context else head_model, head_shape)
    prefix_of: dict[tuple[int, int, int], int] = {}
    if in_context:
        for shape in [*shapes, head_shape]:
            if shape not in prefix_of:
                prefix_of[shape] = add(_ContextPrefix(shape[0]), shape)
    block_of: dict[tuple[int, int], int] = {}
    for i, (layer, shape) in enumerate(zip(space.layers, shapes)):
        for c, label in enumerate(layer.choices):
            if label == "skip":
                continue
            block = space.build_choice(i, c)
            block_of[(i, c)] = add(nn.Sequential(_ContextPrefix(shape[0]), block) if in_context else block, shape)
    calib = _calibration_archs(space, hw, calib_samples, seed)
    calib_i = [add(space.build_subnet(a, num_classes, in_channels), (in_channels, h, w)) for a in calib]

    m = profile.measure
    say(f"measuring {len(block_of)} blocks, stem, head, {len(prefix_of)} context prefixes and {len(calib)} "
        f"calibration subnets on {profile.name} at {h}x{w} ({len(models)} models, interleaved, "
        f"{m.trials} trials x ({m.warmup} warm-up + {m.repeats} timed runs))")
    stats = timer.measure(models, inputs, say)

    def net(index: int, shape: tuple[int, int, int]) -> EntryStats:
        if not in_context:
            return EntryStats.of(stats[index])
        return EntryStats.difference(stats[index], stats[prefix_of[shape]])

    entries = [[net(block_of[(i, c)], shapes[i]) if (i, c) in block_of else EntryStats()
                for c in range(len(layer.choices))] for i, layer in enumerate(space.layers)]
    context = [EntryStats.of(stats[prefix_of[s]]) if in_context else None for s in shapes]
    table = _new_table(space, profile, num_classes, method, EntryStats.of(stats[stem_i]), net(head_i, head_shape),
                       entries, context, EntryStats.of(stats[prefix_of[head_shape]]) if in_context else None,
                       timer.reference)
    return _finish(table, space, calib, [stats[k] for k in calib_i], say, start)


def _new_table(space: SearchSpace, profile: Profile, num_classes: int, method: str, stem: EntryStats,
               head: EntryStats, entries: list[list[EntryStats]], context: list[EntryStats | None],
               head_context: EntryStats | None = None, reference: SpeedReference | None = None) -> LatencyTable:
    """A table of measured parts, identified by the space, the profile and where it was measured."""
    return LatencyTable(
        space=_plain(space_to_dict(space)),
        profile=_plain({**profile.to_json(), "latency_hash": profile.latency_hash()}),
        environment=environment_of(profile), input_shape=profile.input_shape, num_classes=num_classes,
        statistic=profile.measure.statistic, method=method, stem=stem, head=head, entries=entries,
        labels=[list(layer.choices) for layer in space.layers], context=context, head_context=head_context,
        reference=reference,
    )


def _finish(table: LatencyTable, space: SearchSpace, calib: list[Arch], calib_stats: list[Any],
            say: Callable[[str], None], start: float) -> LatencyTable:
    """Fit the calibration on the end-to-end subnets and time a prediction."""
    if calib:
        measured = [st.value(table.statistic) for st in calib_stats]
        raw = [table.predict_raw(a) for a in calib]
        try:
            table.calibration = fit_calibration(raw, measured, [str(a) for a in calib])
        except ValueError as exc:
            raise EdgenasError(f"latency table calibration failed: {exc}") from None
        cal = table.calibration
        say(f"calibration on {cal.n} subnets: measured = {cal.scale:.4f} x raw {cal.offset_ms:+.4f} ms"
            + (f" ({len(cal.outliers)} outliers left out)" if cal.outliers else "")
            + (f"; {cal.method}" if cal.method.startswith("ratio") else ""))
    table.query_us = time_predict(table, space)
    table.build_seconds = time.perf_counter() - start
    say(f"built in {table.build_seconds:.1f} s; one prediction takes {table.query_us:.2f} us")
    return table


def _build_network_table(space: SearchSpace, profile: Profile, num_classes: int, calib_samples: int, seed: int,
                         timer: _Timer, say: Callable[[str], None], start: float) -> LatencyTable:
    """``method="network"`` (see the module docstring): entries are subnet-minus-base differences.

    The base is measured ``BASE_COPIES`` times (separate models, pooled samples): its latency is
    subtracted from every entry, so an error in it would enter a prediction once per changed layer.
    A skip choice gets a (negative) entry too where the base does not skip that layer.
    """
    from edgenas.hardware.measure import LatencyStats

    in_channels, h, w = profile.input_shape
    base = space.extreme_arch(space.macs_table((h, w)))
    variants: dict[tuple[int, int], Arch] = {}
    for i, layer in enumerate(space.layers):
        for c in range(len(layer.choices)):
            if c != base.choices[i]:
                variants[(i, c)] = dataclasses.replace(base, choices=(*base.choices[:i], c, *base.choices[i + 1:]))
    calib = _calibration_archs(space, (h, w), calib_samples, seed)
    archs = [*[base] * BASE_COPIES, *variants.values(), *calib]
    m = profile.measure
    say(f"measuring the base subnet ({BASE_COPIES} copies), {len(variants)} one-layer variants of it and "
        f"{len(calib)} calibration subnets on {profile.name} at {h}x{w} ({len(archs)} models, interleaved, "
        f"{m.trials} trials x ({m.warmup} warm-up + {m.repeats} timed runs))")
    models = [space.build_subnet(a, num_classes, in_channels) for a in archs]
    stats = timer.measure(models, [(in_channels, h, w)] * len(models), say)
    copies = stats[:BASE_COPIES]
    base_stats = LatencyStats.from_samples([t for st in copies for t in st.samples_ms],
                                           [t for st in copies for t in st.trial_medians_ms])
    by_variant = dict(zip(variants, stats[BASE_COPIES:BASE_COPIES + len(variants)]))
    entries = [[EntryStats.difference(by_variant[(i, c)], base_stats) if (i, c) in by_variant else EntryStats()
                for c in range(len(layer.choices))] for i, layer in enumerate(space.layers)]
    table = _new_table(space, profile, num_classes, "network", EntryStats.of(base_stats), EntryStats(), entries,
                       [None] * len(space.layers), reference=timer.reference)
    return _finish(table, space, calib, list(stats[BASE_COPIES + len(variants):]), say, start)
