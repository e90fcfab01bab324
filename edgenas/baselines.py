"""Hand-designed baselines, adapted to the data and scaled to a latency budget by measuring them.

A searched network is only worth shipping if it beats what a practitioner would otherwise take off
the shelf at the same latency. This module builds those networks: torchvision's MobileNetV3-Small
(any width multiplier) and timm's PP-LCNet and MobileNetV4-Conv-Small families (their published
widths), always randomly initialised (no download), with the input channels and class count of the
data. For small images (side below 64 px) the stem's stride-2 becomes 1, the usual adaptation of
ImageNet networks to 28-32 px inputs and the same choice the ``mbv3`` space's ``small`` preset
makes; without it a 28 px image would be 1x1 by the last stage. Batch-norm momentum is reset to
PyTorch's 0.1, the value searched subnets train with: torchvision's MobileNetV3 uses 0.01, tuned for
ImageNet runs of hundreds of epochs, which after a few epochs leaves the running statistics near
their initial values (measured: 61% training accuracy but 10% in eval mode after one Fashion-MNIST
epoch). The recipe, not the family, should decide such a setting.

:func:`scale_to_budget` picks the widest member of a family whose latency, as measured by a
function the caller supplies (normally the profile's measurer, all widths interleaved in one run),
fits the budget. Measurement, not a FLOPs proxy, decides, for the same reason the search verifies
its finalists end to end.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgenas.data import DatasetSplits
from edgenas.errors import CheckpointError, EdgenasError
from edgenas.finetune import FinetuneConfig, FinetuneEpoch, FinetuneResult, finetune
from edgenas.hardware.profile import Profile
from edgenas.io import atomic_write_json, read_json
from edgenas.registry import Registry

__all__ = [
    "BASELINES",
    "BASELINE_FORMAT",
    "BaselineFamily",
    "BaselineRun",
    "ScaledBaseline",
    "adapt_stem",
    "build_baseline",
    "choose_width",
    "get_family",
    "measure_widths",
    "profile_measure",
    "scale_to_budget",
    "train_baseline",
]

SMALL_INPUT_PX = 64  # below this side length the stem keeps full resolution
BN_MOMENTUM = 0.1  # torch's default, as in the searched subnets (see the module docstring)


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    for parent in model.modules():
        for attr, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                return parent, attr, child
    raise EdgenasError(f"{type(model).__name__} has no Conv2d to adapt")


def adapt_stem(model: nn.Module, in_channels: int, stride: int | None = None) -> nn.Module:
    """Give the model's first convolution ``in_channels`` inputs and, if given, ``stride``.

    A new convolution (Kaiming-normal, fan-out, as both torchvision and timm initialise theirs) is
    made only when the channel count changes; the stride is set in place. Returns ``model``.
    """
    parent, attr, conv = _first_conv(model)
    if conv.in_channels != in_channels:
        if conv.groups != 1:
            raise EdgenasError(f"{type(model).__name__}'s first convolution is grouped; cannot change its inputs")
        new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        conv.dilation, 1, conv.bias is not None)
        nn.init.kaiming_normal_(new.weight, mode="fan_out")
        if new.bias is not None:
            nn.init.zeros_(new.bias)
        setattr(parent, attr, new)
        conv = new
    if stride is not None:
        conv.stride = (stride, stride)
    return model


def _tv_mobilenet_v3_small(width: float, num_classes: int) -> nn.Module:
    from torchvision.models import mobilenet_v3_small

    return mobilenet_v3_small(weights=None, num_classes=num_classes, width_mult=width)


def _timm(names: dict[float, str]) -> Callable[[float, int], nn.Module]:
    def build(width: float, num_classes: int) -> nn.Module:
        import timm

        if width not in names:
            raise EdgenasError(f"timm has no member of width {width:g} here; widths: "
                               f"{', '.join(f'{w:g}' for w in sorted(names))}")
        return timm.create_model(names[width], pretrained=False, num_classes=num_classes)

    return build


@dataclass(frozen=True)
class BaselineFamily:
    """A hand-designed network at several widths; ``build(width, num_classes)`` takes 3-channel input."""

    name: str
    source: str
    widths: tuple[float, ...]
    build: Callable[[float, int], nn.Module]
    description: str

    def label(self, width: float) -> str:
        return f"{self.name}@{width:g}"


BASELINES: Registry[BaselineFamily] = Registry("baseline", EdgenasError)
"""Family name -> :class:`BaselineFamily`; ``edgenas baseline --family`` takes these names."""
for _family in (
    BaselineFamily("lcnet", "timm", (0.35, 0.5, 0.75, 1.0, 1.5),
                   _timm({0.35: "lcnet_035", 0.5: "lcnet_050", 0.75: "lcnet_075", 1.0: "lcnet_100",
                          1.5: "lcnet_150"}),
                   "timm PP-LCNet (Cui et al. 2021), designed for CPU latency"),
    BaselineFamily("mobilenetv3-small", "torchvision", (0.25, 0.35, 0.5, 0.6, 0.75, 0.9, 1.0, 1.25, 1.5),
                   _tv_mobilenet_v3_small, "torchvision MobileNetV3-Small (Howard et al. 2019), width_mult"),
    BaselineFamily("mobilenetv4-small", "timm", (0.35, 0.5, 1.0),
                   _timm({0.35: "mobilenetv4_conv_small_035", 0.5: "mobilenetv4_conv_small_050",
                          1.0: "mobilenetv4_conv_small"}),
                   "timm MobileNetV4-Conv-Small (Qin et al. 2024)"),
):
    BASELINES.register(_family.name, _family)


def get_family(name: str) -> BaselineFamily:
    return BASELINES.get(name)


def build_baseline(family: str | BaselineFamily, width: float, *, num_classes: int, in_channels: int,
                   input_size: Sequence[int], seed: int = 0) -> nn.Module:
    """A freshly initialised (seeded) member of ``family`` adapted to the data's channels and image size."""
    fam = get_family(family) if isinstance(family, str) else family
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise EdgenasError(f"width must be a positive number, not {width!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = fam.build(float(width), num_classes)
        small = min(input_size) < SMALL_INPUT_PX
        adapt_stem(model, in_channels, stride=1 if small else None)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = BN_MOMENTUM
    return model


@dataclass(frozen=True)
class ScaledBaseline:
    """The chosen member and every width tried with its measured latency (ms), narrowest first."""

    family: str
    width: float
    latency_ms: float
    tried: tuple[tuple[float, float], ...]

    @property
    def label(self) -> str:
        return f"{self.family}@{self.width:g}"


def measure_widths(family: str | BaselineFamily, measure: Callable[[list[nn.Module]], list[float]], *,
                   num_classes: int, in_channels: int, input_size: Sequence[int],
                   widths: Sequence[float] | None = None) -> tuple[tuple[float, float], ...]:
    """``(width, latency ms)`` for every width of ``family``, narrowest first, measured in one call.

    ``measure`` gets all the models at once (so they can be timed interleaved) and returns one
    latency in ms per model.
    """
    fam = get_family(family) if isinstance(family, str) else family
    grid = sorted(widths if widths is not None else fam.widths)
    models = [build_baseline(fam, w, num_classes=num_classes, in_channels=in_channels, input_size=input_size)
              for w in grid]
    latencies = [float(v) for v in measure(models)]
    if len(latencies) != len(grid):
        raise ValueError(f"measure returned {len(latencies)} latencies for {len(grid)} models")
    return tuple(zip(grid, latencies))


def choose_width(family: str | BaselineFamily, tried: Sequence[tuple[float, float]], budget_ms: float
                 ) -> ScaledBaseline:
    """The widest measured width within ``budget_ms``; none fitting is an error naming the fastest.

    The choice uses the measurements only (no assumption that latency grows with width).
    """
    fam = get_family(family) if isinstance(family, str) else family
    if not (budget_ms > 0 and math.isfinite(budget_ms)):
        raise EdgenasError(f"the latency budget must be a positive number of ms, not {budget_ms}")
    if not tried:
        raise EdgenasError(f"no {fam.name} width was measured")
    fitting = [(w, ms) for w, ms in tried if ms <= budget_ms]
    if not fitting:
        w, ms = min(tried, key=lambda t: t[1])
        raise EdgenasError(f"no {fam.name} width fits {budget_ms:g} ms: the fastest, {fam.label(w)}, "
                           f"measures {ms:.3f} ms")
    w, ms = max(fitting)
    return ScaledBaseline(fam.name, w, ms, tuple(sorted(tried)))


def profile_measure(profile: Profile) -> Callable[[list[nn.Module]], list[float]]:
    """The ``measure`` that :func:`scale_to_budget` takes, on a profile: its measurer times all the
    models interleaved and each gets the profile's statistic, in ms."""
    from edgenas.hardware.measure import create_measurer

    measurer = create_measurer(profile)

    def measure(models: list[nn.Module]) -> list[float]:
        stats = measurer.measure_many(models, [None] * len(models))
        return [s.value(profile.measure.statistic) for s in stats]

    return measure


def scale_to_budget(family: str | BaselineFamily, budget_ms: float,
                    measure: Callable[[list[nn.Module]], list[float]], *, num_classes: int, in_channels: int,
                    input_size: Sequence[int], widths: Sequence[float] | None = None) -> ScaledBaseline:
    """The widest member of ``family`` whose measured latency is within ``budget_ms``."""
    tried = measure_widths(family, measure, num_classes=num_classes, in_channels=in_channels,
                           input_size=input_size, widths=widths)
    return choose_width(family, tried, budget_ms)


CHOICE_NAME = "baseline.json"
BASELINE_FORMAT = "edgenas-baseline/1"


@dataclass(frozen=True)
class BaselineRun:
    """A trained baseline: what was chosen (``choice``, as in ``baseline.json``) and how it trained."""

    choice: dict[str, Any]
    result: FinetuneResult


def train_baseline(family: str, data: DatasetSplits, config: FinetuneConfig, out_dir: str | Path, *,
                   width: float | None = None, budget_ms: float | None = None,
                   measure: Callable[[list[nn.Module]], list[float]] | None = None, resume: bool = False,
                   device: torch.device | None = None, on_epoch: Callable[[FinetuneEpoch], None] | None = None,
                   meta: dict[str, Any] | None = None) -> BaselineRun:
    """Choose a width of ``family`` (given, or the widest that ``measure`` finds within ``budget_ms``),
    then train it from a seeded initialisation with exactly the fine-tuning loop of searched subnets.

    The choice is written to ``out_dir/baseline.json`` before training, so a resumed run trains the
    same width without measuring again (machines drift; the width must not).
    """
    fam = get_family(family)
    out = Path(out_dir)
    if resume:
        choice = _read_choice(out / CHOICE_NAME, fam.name, width)
    else:
        if (out / "last.pt").exists():
            raise CheckpointError(f"{out / 'last.pt'} exists; pass --resume to continue it or choose another "
                                  "output directory")
        choice = _choose(fam, data, width, budget_ms, measure)
        atomic_write_json(out / CHOICE_NAME, choice)
    model = build_baseline(fam, choice["width"], num_classes=data.num_classes, in_channels=data.in_channels,
                           input_size=data.input_size, seed=config.seed)
    result = finetune(model, data, config, out, resume=resume, device=device, on_epoch=on_epoch,
                      meta={**(meta or {}), "baseline": choice}, name=choice["label"])
    return BaselineRun(choice, result)


def _choose(fam: BaselineFamily, data: DatasetSplits, width: float | None, budget_ms: float | None,
            measure: Callable[[list[nn.Module]], list[float]] | None) -> dict[str, Any]:
    if (width is None) == (budget_ms is None):
        raise EdgenasError("give exactly one of a width or a latency budget for the baseline")
    base = {"format": BASELINE_FORMAT, "family": fam.name, "source": fam.source, "description": fam.description,
            "input": [data.in_channels, *data.input_size], "budget_ms": budget_ms}
    if width is not None:
        build_baseline(fam, width, num_classes=data.num_classes, in_channels=data.in_channels,
                       input_size=data.input_size)  # fails here, before anything is written, if unknown
        return {**base, "width": float(width), "label": fam.label(width), "latency_ms": None, "tried": []}
    if measure is None:
        raise EdgenasError("scaling a baseline to a latency budget needs a measurer (a profile)")
    assert budget_ms is not None
    scaled = scale_to_budget(fam, budget_ms, measure, num_classes=data.num_classes, in_channels=data.in_channels,
                             input_size=data.input_size)
    return {**base, "width": scaled.width, "label": scaled.label, "latency_ms": scaled.latency_ms,
            "tried": [list(t) for t in scaled.tried]}


def _read_choice(path: Path, family: str, width: float | None) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: {path} does not exist (run without --resume)")
    choice = read_json(path)
    if not isinstance(choice, dict) or choice.get("format") != BASELINE_FORMAT:
        raise CheckpointError(f"{path} is not an edgenas baseline choice")
    if choice.get("family") != family or (width is not None and float(width) != choice.get("width")):
        raise CheckpointError(f"{path} trains {choice.get('label')}; resume it with the same family and width")
    return choice
