"""FLOPs counting: fvcore plus our handles equals a count derived by hand from the block structure.

The expected numbers below never look at fvcore: multiply-adds come from the spaces' closed-form
``space.macs`` and the element-wise part is spelled out per block from the layer widths, strides and
kernel sizes, following FLOPS_CONVENTION (BN, activations, SE gate and residual add: one FLOP per
output element; mean: one per input element).
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from edgenas.hardware.flops import FLOPS_CONVENTION, FlopsCount, count_flops
from edgenas.space import create_space
from edgenas.space.blocks import conv_out, make_divisible

NUM_CLASSES = 10


# ----- golden counts on hand-sized modules -------------------------------------------------------------------
class _Tiny(nn.Module):
    """Conv-BN-hardswish, an SE-style gate, a residual add, ReLU, global pool and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.hardswish(self.bn(self.conv(x)))
        gate = nn.functional.hardsigmoid(y.mean((2, 3), keepdim=True))
        y = torch.relu(y * gate + y)
        return self.fc(y.mean((2, 3)))


def test_golden_counts_on_a_tiny_module():
    f = count_flops(_Tiny(), (1, 3, 8, 8))
    e = 8 * 8 * 8  # elements of the 8x8x8 feature map
    expected = {
        "conv": 8 * 8 * 8 * 3 * 3 * 3,  # cout * H * W * cin * k * k = 13824
        "batch_norm": e, "hardswish": e, "mean": 2 * e, "hardsigmoid": 8, "mul": e, "add": e, "relu": e,
        "linear": 8 * 10,
    }
    assert f.by_operator == expected
    assert f.flops == sum(expected.values()) == 13824 + 7 * 512 + 8 + 80
    assert f.params == 3 * 8 * 9 + 2 * 8 + 8 * 10 + 10
    assert f.uncounted == []
    assert f.mflops == pytest.approx(f.flops / 1e6) and f.params_m == pytest.approx(f.params / 1e6)
    # the batch scales every count; the caller's model stays in training mode
    model = _Tiny().train()
    assert count_flops(model, (2, 3, 8, 8)).flops == 2 * f.flops
    assert model.training


def test_unhandled_ops_are_reported_not_hidden():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Softplus(), nn.MaxPool2d(2))
    f = count_flops(model, (1, 1, 9, 9))
    assert f.by_operator == {"conv": 4 * 7 * 7 * 9}
    assert "aten::softplus" in f.uncounted and "aten::max_pool2d" in f.uncounted
    assert isinstance(f, FlopsCount)


def test_convention_is_stated():
    assert FLOPS_CONVENTION.startswith("1 multiply-add = 1 FLOP")
    for term in ("batch norm", "activations", "residual", "mean"):
        assert term in FLOPS_CONVENTION


# ----- analytic count of the two spaces ------------------------------------------------------------------------
def _mbv3_layer(space, spec, label: str, h: int, w: int) -> Counter:
    if label == "skip":
        return Counter()
    k, e = map(int, re.fullmatch(r"k(\d+)e(\d+)", label).groups())
    stage = space.config.stages[spec.stage]
    act = "hardswish" if stage.hswish else "relu"
    mid = make_divisible(spec.in_channels * e)
    h2, w2 = conv_out(h, k, spec.stride), conv_out(w, k, spec.stride)
    c = Counter()
    c["batch_norm"] += mid * h * w + mid * h2 * w2 + spec.out_channels * h2 * w2  # expand, depthwise, project
    c[act] += mid * h * w + mid * h2 * w2  # expand and depthwise activations; project is linear
    if stage.se:
        squeezed = make_divisible(mid / 4)
        c["mean"] += mid * h2 * w2  # global pool reads every element
        c["relu"] += squeezed
        c["hardsigmoid"] += mid
        c["mul"] += mid * h2 * w2  # gate broadcast over the map
    if spec.stride == 1 and spec.in_channels == spec.out_channels:
        c["add"] += spec.out_channels * h2 * w2
    return c


def _spos_layer(space, spec, label: str, h: int, w: int) -> Counter:
    cin, cout, stride = spec.in_channels, spec.out_channels, spec.stride
    h2, w2 = conv_out(h, 3, stride), conv_out(w, 3, stride)  # any odd 'same' kernel gives the same size
    branch_in = cin // 2 if stride == 1 else cin
    branch_out = cout - (cin // 2 if stride == 1 else cin)
    mid = cout // 2
    c = Counter()

    def pw(channels: int, hw: int) -> None:  # 1x1 conv + BN + ReLU
        c["batch_norm"] += channels * hw
        c["relu"] += channels * hw

    def dw(channels: int, hw: int) -> None:  # depthwise conv + BN, no activation
        c["batch_norm"] += channels * hw

    if stride == 2:  # projection branch on the full input
        dw(cin, h2 * w2)
        pw(cin, h2 * w2)
    if label == "xception":
        dw(branch_in, h2 * w2)
        pw(mid, h2 * w2)
        dw(mid, h2 * w2)
        pw(mid, h2 * w2)
        dw(mid, h2 * w2)
        pw(branch_out, h2 * w2)
    else:
        pw(mid, h * w)
        dw(mid, h2 * w2)
        pw(branch_out, h2 * w2)
    return c  # the split, slicing and concatenation move data only


def _analytic(space, arch, hw: int, in_ch: int) -> Counter:
    act = "hardswish" if space.name == "mbv3" else "relu"
    layer_fn = _mbv3_layer if space.name == "mbv3" else _spos_layer
    c = Counter()
    sh, sw = space.stem_out_hw((hw, hw))
    c["batch_norm"] += space.stem_channels * sh * sw
    c[act] += space.stem_channels * sh * sw
    for spec, choice, (_, h, w) in zip(space.layers, arch.choices, space.layer_input_shapes((hw, hw))):
        c += layer_fn(space, spec, spec.choices[choice], h, w)
    features = space.build_head(NUM_CLASSES).classifier.in_features
    _, hh, hw_ = space.head_input_shape((hw, hw))
    c["batch_norm"] += features * hh * hw_
    c[act] += features * hh * hw_
    c["mean"] += features * hh * hw_
    return +c


def _archs(space, input_hw):
    table = space.macs_table(input_hw)
    rng = np.random.default_rng(7)
    return [space.sample(rng), space.sample(rng), space.extreme_arch(table, largest=True),
            space.extreme_arch(table)]


@pytest.mark.parametrize(
    ("name", "preset", "overrides", "hw", "in_ch"),
    [
        ("mbv3", "small", {}, 28, 1),
        ("spos", "small", {}, 32, 3),
        ("mbv3", "imagenet", {"width_mult": 0.5}, 224, 3),
    ],
    ids=["mbv3-small-28", "spos-small-32", "mbv3-imagenet-224-w0.5"],
)
def test_count_equals_analytic_count(name, preset, overrides, hw, in_ch):
    space = create_space(name, preset, **overrides)
    for arch in _archs(space, (hw, hw)):
        model = space.build_subnet(arch, NUM_CLASSES, in_ch)
        f = count_flops(model, (1, in_ch, hw, hw))
        assert f.uncounted == [], (arch, f.uncounted)
        macs = space.macs(arch, (hw, hw), in_ch, NUM_CLASSES)
        assert f.by_operator["conv"] + f.by_operator["linear"] == macs, arch
        elementwise = {k: v for k, v in f.by_operator.items() if k not in ("conv", "linear")}
        assert elementwise == dict(_analytic(space, arch, hw, in_ch)), arch
        assert f.flops == macs + sum(_analytic(space, arch, hw, in_ch).values())
        assert f.params == sum(p.numel() for p in model.parameters())
