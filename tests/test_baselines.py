"""Hand-designed baselines: adapted to the data, scaled to a budget by measurement, trained with the
fine-tuning recipe (so they compare with searched subnets), resumable, and failing in one line."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from edgenas.baselines import (
    BASELINES,
    adapt_stem,
    build_baseline,
    choose_width,
    get_family,
    measure_widths,
    scale_to_budget,
    train_baseline,
)
from edgenas.cli import cli
from edgenas.errors import CheckpointError, ConfigError, EdgenasError
from edgenas.finetune import MODULE_FORMAT, FinetuneConfig, finetune, load_module_state
from edgenas.hardware.flops import count_flops

CPU = torch.device("cpu")

PROFILE_YAML = """\
name: tiny-baseline
device: cpu
runtime: onnxruntime
provider: CPUExecutionProvider
threads: 1
input_shape: [1, 8, 8]
measure: {warmup: 1, repeats: 3, trials: 1, statistic: median}
budgets: {latency_ms: 100.0}
"""


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def _recipe(**kw) -> FinetuneConfig:
    return FinetuneConfig(**{**dict(epochs=1, batch_size=32, lr=0.05, train_limit=320, seed=0), **kw})


def _macs(models: list[nn.Module]) -> list[float]:
    """A deterministic stand-in latency: MACs at 28x28 in millions (the choice logic is what is tested)."""
    return [count_flops(m.eval(), (1, 1, 28, 28)).flops / 1e6 for m in models]


@pytest.mark.parametrize("family", sorted(BASELINES))
def test_every_family_takes_one_channel_small_images_and_keeps_full_resolution_stem(family):
    fam = get_family(family)
    model = build_baseline(fam, fam.widths[0], num_classes=10, in_channels=1, input_size=(28, 28)).eval()
    conv = _first_conv(model)
    assert conv.in_channels == 1 and conv.stride == (1, 1)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    big = build_baseline(fam, fam.widths[0], num_classes=5, in_channels=3, input_size=(224, 224))
    assert _first_conv(big).stride == (2, 2) and _first_conv(big).in_channels == 3


def test_builds_are_seeded_and_leave_the_global_rng_alone():
    a = build_baseline("mobilenetv3-small", 0.25, num_classes=10, in_channels=1, input_size=(28, 28), seed=3)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    b = build_baseline("mobilenetv3-small", 0.25, num_classes=10, in_channels=1, input_size=(28, 28), seed=3)
    assert torch.equal(torch.rand(1), before)  # the build did not consume the caller's random stream
    c = build_baseline("mobilenetv3-small", 0.25, num_classes=10, in_channels=1, input_size=(28, 28), seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_wider_members_cost_more_and_the_torchvision_width_is_continuous():
    macs = _macs([build_baseline("mobilenetv3-small", w, num_classes=10, in_channels=1, input_size=(28, 28))
                  for w in (0.25, 0.5, 1.0)])
    assert macs[0] < macs[1] < macs[2]
    # The stock MobileNetV3-Small with a stride-1 stem at 28 px: ~5.2 MMACs (4x the 14 px of stride 2).
    assert 4.5 < macs[2] < 6.0


def test_adapt_stem_replaces_only_what_differs():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.ReLU())
    same = model[0]
    adapt_stem(model, 3, stride=1)
    assert model[0] is same and same.stride == (1, 1)
    adapt_stem(model, 1)
    assert model[0] is not same and model[0].in_channels == 1 and model[0].stride == (1, 1)
    with pytest.raises(EdgenasError, match="no Conv2d"):
        adapt_stem(nn.Sequential(nn.Linear(2, 2)), 1)


def test_unknown_family_and_bad_widths_fail_in_one_line():
    with pytest.raises(EdgenasError, match=r"unknown baseline 'resnet'; known: lcnet, mobilenetv3-small"):
        get_family("resnet")
    with pytest.raises(EdgenasError, match=r"no member of width 0.6.*0.35, 0.5"):
        build_baseline("lcnet", 0.6, num_classes=10, in_channels=1, input_size=(28, 28))
    with pytest.raises(EdgenasError, match="positive"):
        build_baseline("mobilenetv3-small", -1, num_classes=10, in_channels=1, input_size=(28, 28))


def test_choose_width_takes_the_widest_measured_within_budget_even_when_latency_is_not_monotone():
    tried = [(0.35, 0.30), (0.5, 0.42), (0.75, 0.39), (1.0, 0.80)]  # 0.75 measured faster than 0.5
    pick = choose_width("lcnet", tried, 0.45)
    assert (pick.width, pick.latency_ms, pick.label) == (0.75, 0.39, "lcnet@0.75")
    assert choose_width("lcnet", tried, 0.8).width == 1.0
    with pytest.raises(EdgenasError, match=r"no lcnet width fits 0.2 ms: the fastest, lcnet@0.35, measures 0.300 ms"):
        choose_width("lcnet", tried, 0.2)
    with pytest.raises(EdgenasError, match="positive"):
        choose_width("lcnet", tried, 0.0)


def test_scale_to_budget_measures_every_width_in_one_call():
    calls = []

    def measure(models):
        calls.append(len(models))
        return _macs(models)

    fam = get_family("mobilenetv3-small")
    tried = measure_widths(fam, measure, num_classes=10, in_channels=1, input_size=(28, 28))
    assert calls == [len(fam.widths)] and [w for w, _ in tried] == sorted(fam.widths)
    stock = dict(tried)[1.0]
    pick = scale_to_budget(fam, stock * 1.01, measure, num_classes=10, in_channels=1, input_size=(28, 28))
    assert pick.width == 1.0 and pick.latency_ms == pytest.approx(stock)
    with pytest.raises(ValueError, match="returned 1 latencies"):
        measure_widths(fam, lambda models: [1.0], num_classes=10, in_channels=1, input_size=(28, 28))


def test_any_classifier_finetunes_with_the_same_loop_and_resumes_exactly(tmp_path, digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    recipe = dict(train_limit=None, channels_last=False)
    full = finetune(model, digits, _recipe(epochs=3, **recipe), tmp_path / "full", device=CPU, name="mlp")
    report = json.loads((tmp_path / "full" / "finetune.json").read_text())
    assert report["model"] == "mlp" and report["arch"] is None and report["subnet_format"] == MODULE_FORMAT
    assert full.test_accuracy > 0.8 and full.test_count == 359  # a 2-layer MLP learns digits in 3 epochs
    class Stop(Exception):
        pass

    def stop(stats):
        raise Stop

    with pytest.raises(Stop):  # interrupted after its first epoch
        finetune(model, digits, _recipe(epochs=3, **recipe), tmp_path / "part", device=CPU, on_epoch=stop)
    resumed = finetune(model, digits, _recipe(epochs=3, **recipe), tmp_path / "part", device=CPU, resume=True)
    a, b = full.subnet.state_dict(), resumed.subnet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    loaded, meta, _ = load_module_state(tmp_path / "full" / "subnet.pt", model)
    assert meta["format"] == MODULE_FORMAT and all(torch.equal(loaded.state_dict()[k], a[k]) for k in a)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_module_state(tmp_path / "full" / "subnet.pt", nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))


def test_a_classifier_that_does_not_fit_the_data_fails_before_training(tmp_path, digits):
    wrong_classes = nn.Sequential(nn.Flatten(), nn.Linear(64, 7))
    with pytest.raises(EdgenasError, match=r"mlp gives outputs of shape \(7,\) but digits has 10 classes"):
        finetune(wrong_classes, digits, _recipe(), tmp_path / "a", device=CPU, name="mlp")
    wrong_input = nn.Sequential(nn.Flatten(), nn.Linear(100, 10))
    with pytest.raises(EdgenasError, match=r"does not accept digits's \(1, 8, 8\) images"):
        finetune(wrong_input, digits, _recipe(), tmp_path / "b", device=CPU)
    with pytest.raises(ConfigError, match="freshly initialised"):
        finetune(wrong_classes, digits, _recipe(from_scratch=True), tmp_path / "c", device=CPU)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_train_baseline_records_its_choice_and_resumes_the_same_width(tmp_path, digits):
    out = tmp_path / "lcnet"
    run = train_baseline("lcnet", digits, _recipe(), out, budget_ms=3.0, measure=_macs, device=CPU)
    choice = json.loads((out / "baseline.json").read_text())
    assert choice == run.choice and choice["family"] == "lcnet" and choice["input"] == [1, 8, 8]
    widths = dict((w, ms) for w, ms in choice["tried"])
    assert choice["width"] == max(w for w, ms in widths.items() if ms <= 3.0)
    assert json.loads((out / "finetune.json").read_text())["model"] == choice["label"]
    # Resume never re-measures: a measurer that would pick another width is not even called.
    again = train_baseline("lcnet", digits, _recipe(epochs=2), out, resume=True, device=CPU,
                           measure=lambda models: pytest.fail("resume measured again"))
    assert again.choice["width"] == choice["width"] and again.result.epochs_run == 2
    with pytest.raises(CheckpointError, match="resume it with the same family and width"):
        train_baseline("lcnet", digits, _recipe(epochs=3), out, resume=True, width=1.5, device=CPU)
    with pytest.raises(CheckpointError, match="pass --resume"):
        train_baseline("lcnet", digits, _recipe(), out, width=0.35, device=CPU)
    assert json.loads((out / "baseline.json").read_text()) == choice  # nothing was overwritten
    with pytest.raises(EdgenasError, match="exactly one of a width or a latency budget"):
        train_baseline("lcnet", digits, _recipe(), tmp_path / "x", device=CPU)


def test_baseline_cli_scales_on_a_real_profile_and_trains(tmp_path):
    (tmp_path / "tiny-baseline.yaml").write_text(PROFILE_YAML)
    args = ["baseline", "--family", "mobilenetv3-small", "--data", "digits",
            "--profile", str(tmp_path / "tiny-baseline.yaml"), "--epochs", "1", "--train-limit", "320",
            "--batch-size", "32", "--device", "cpu"]
    res = CliRunner().invoke(cli, [*args, "--latency-ms", "1000", "--out", str(tmp_path / "ok")])
    assert res.exit_code == 0, res.output
    assert "mobilenetv3-small@1.5: measured" in res.output and "test accuracy" in res.output
    choice = json.loads((tmp_path / "ok" / "baseline.json").read_text())
    assert len(choice["tried"]) == len(get_family("mobilenetv3-small").widths)
    assert all(ms > 0 for _, ms in choice["tried"])  # real timings from onnxruntime
    res = CliRunner().invoke(cli, [*args, "--latency-ms", "0.0001", "--out", str(tmp_path / "none")])
    assert res.exit_code != 0
    assert "no mobilenetv3-small width fits 0.0001 ms: the fastest" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "none").exists()


def test_batch_norm_momentum_is_the_recipes_not_the_familys():
    model = build_baseline("mobilenetv3-small", 0.5, num_classes=10, in_channels=1, input_size=(28, 28))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.1 for m in bns)  # torchvision builds them with 0.01
