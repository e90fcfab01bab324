from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from edgenas.errors import CheckpointError, ConfigError
from edgenas.supernet import evaluate, load_checkpoint, recalibrated
from edgenas.torch_utils import param_groups, recal_batches
from edgenas.train import TrainConfig, lr_at, train_supernet


def _cfg(**kw):
    base = dict(epochs=2, batch_size=32, lr=0.05, steps_per_epoch=3, val_archs=1, bn_recal_batches=2,
                device="cpu", seed=3)
    return TrainConfig(**{**base, **kw})


def test_config_validation():
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="schedule must be cosine or linear"):
        TrainConfig(schedule="step")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="label_smoothing"):
        TrainConfig(label_smoothing=1.5)


def test_lr_schedules():
    cfg = TrainConfig(lr=0.4, warmup_steps=4)
    assert lr_at(0, 100, cfg) == pytest.approx(0.1)
    assert lr_at(3, 100, cfg) == pytest.approx(0.4)
    assert lr_at(4, 100, cfg) == pytest.approx(0.4)
    assert lr_at(52, 100, cfg) == pytest.approx(0.2)  # cosine half-way
    assert lr_at(100, 100, cfg) == pytest.approx(0.0, abs=1e-12)
    lin = TrainConfig(lr=0.4, schedule="linear")
    assert lr_at(25, 100, lin) == pytest.approx(0.3)


def test_weight_decay_skips_bn_and_bias(tiny_mbv3):
    from edgenas.supernet import Supernet

    groups = param_groups(Supernet(tiny_mbv3, 10, 1), 1e-4)
    assert all(p.ndim > 1 for p in groups[0]["params"]) and groups[0]["weight_decay"] == 1e-4
    assert all(p.ndim == 1 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0


def test_same_seed_gives_same_weights(tmp_path, tiny_mbv3, digits):
    a = train_supernet(tiny_mbv3, digits, _cfg(epochs=1), tmp_path / "a")
    b = train_supernet(tiny_mbv3, digits, _cfg(epochs=1), tmp_path / "b")
    c = train_supernet(tiny_mbv3, digits, _cfg(epochs=1, seed=4), tmp_path / "c")
    sa, sb, sc = (r.supernet.state_dict() for r in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, tiny_mbv3, digits):
    full = train_supernet(tiny_mbv3, digits, _cfg(), tmp_path / "full")

    class Stop(Exception):
        pass

    def stop_after_first(stats):
        raise Stop

    with pytest.raises(Stop):
        train_supernet(tiny_mbv3, digits, _cfg(), tmp_path / "cut", on_epoch=stop_after_first)
    _, meta, _ = load_checkpoint(tmp_path / "cut" / "supernet.pt")
    assert meta["epoch"] == 0
    resumed = train_supernet(tiny_mbv3, digits, _cfg(), tmp_path / "cut", resume=True)
    s_full, s_res = full.supernet.state_dict(), resumed.supernet.state_dict()
    assert all(torch.equal(s_full[k], s_res[k]) for k in s_full)
    assert [h.train_loss for h in full.history] == [h.train_loss for h in resumed.history]
    history = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1]


def test_existing_checkpoint_is_never_overwritten(tmp_path, tiny_mbv3, digits):
    train_supernet(tiny_mbv3, digits, _cfg(epochs=1), tmp_path / "run")
    stamp = (tmp_path / "run" / "supernet.pt").stat().st_mtime_ns
    with pytest.raises(CheckpointError, match="exists; pass --resume"):
        train_supernet(tiny_mbv3, digits, _cfg(epochs=1), tmp_path / "run")
    assert (tmp_path / "run" / "supernet.pt").stat().st_mtime_ns == stamp
    with pytest.raises(CheckpointError, match=r"other settings \(lr\)"):
        train_supernet(tiny_mbv3, digits, _cfg(epochs=2, lr=0.2), tmp_path / "run", resume=True)


def test_batch_larger_than_data_is_a_clear_error(tmp_path, tiny_mbv3, digits):
    with pytest.raises(ConfigError, match="batch size 5000 is larger than the training split"):
        train_supernet(tiny_mbv3, digits, _cfg(batch_size=5000), tmp_path / "x")


@pytest.mark.slow
def test_trained_supernet_subnet_beats_chance_on_test_split(tmp_path, digits):
    from edgenas.data import iterate_batches
    from edgenas.space import create_space

    # 2-3 choices per layer so every block sees enough of the 1.3k training images in a few epochs
    space = create_space("mbv3", "small", width_mult=0.25, head_channels=64, kernels=(3, 5), expansions=(3,))
    cfg = TrainConfig(epochs=8, batch_size=32, lr=0.1, val_archs=0, device="cpu", seed=0, label_smoothing=0.0)
    result = train_supernet(space, digits, cfg, tmp_path / "run")
    supernet = result.supernet
    assert result.history[-1].train_loss < 0.7 * result.history[0].train_loss
    batches = recal_batches(digits, 10, 64, 0, torch.device("cpu"), True)
    accs = []
    for arch in [space.sample(np.random.default_rng(s)) for s in range(3)]:
        with recalibrated(supernet, arch, batches):
            res = evaluate(lambda x, a=arch: supernet(x.contiguous(memory_format=torch.channels_last), a),
                           iterate_batches(digits.test, 128, shuffle=False), supernet)
        accs.append(res["accuracy"])
        assert res["count"] == len(digits.test)
    assert min(accs) > 0.4, accs  # chance is 0.1; an untrained supernet scores about that


def test_sandwich_trains_largest_and_smallest_first(tiny_mbv3):
    from edgenas.train import step_archs

    macs = tiny_mbv3.macs_table((28, 28))
    extremes = (tiny_mbv3.extreme_arch(macs, largest=True), tiny_mbv3.extreme_arch(macs))
    rng = np.random.default_rng(0)
    archs = step_archs(tiny_mbv3, rng, TrainConfig(recipe="sandwich", sandwich_random=3), (28, 28), extremes)
    assert archs[:2] == list(extremes) and len(archs) == 5
    assert all(tiny_mbv3.macs(a, (28, 28), 1, 10) <= tiny_mbv3.macs(archs[0], (28, 28), 1, 10) for a in archs)
    assert all(tiny_mbv3.macs(a, (28, 28), 1, 10) >= tiny_mbv3.macs(archs[1], (28, 28), 1, 10) for a in archs)
    assert len(step_archs(tiny_mbv3, rng, TrainConfig(), (28, 28), extremes)) == 1


def test_in_place_distillation_loss_pulls_students_to_the_teacher_only():
    from edgenas.train import path_losses, soft_cross_entropy

    teacher = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    student = torch.tensor([[0.0, 1.0, 0.0]], requires_grad=True)
    p = torch.softmax(teacher.detach(), 1)
    expected = -(p * torch.log_softmax(student, 1)).sum().item()
    assert soft_cross_entropy(student, teacher).item() == pytest.approx(expected)
    # minimal (= the teacher's entropy) when the student predicts what the teacher does
    entropy = -(p * p.log()).sum().item()
    assert soft_cross_entropy(teacher.detach().clone(), teacher).item() == pytest.approx(entropy, rel=1e-6)
    y = torch.tensor([0])
    loss = path_losses([teacher, student], y, torch.nn.CrossEntropyLoss(), TrainConfig(recipe="sandwich"))
    loss.backward()
    ce_only = torch.autograd.grad(torch.nn.functional.cross_entropy(teacher, y), teacher)[0]
    torch.testing.assert_close(teacher.grad, ce_only)  # the KD term sends nothing into the teacher
    assert student.grad.abs().sum() > 0


def test_sandwich_with_distillation_learns_and_resumes_bit_identically(tmp_path, tiny_mbv3, digits):
    cfg = _cfg(recipe="sandwich", sandwich_random=1, weights="shared")
    full = train_supernet(tiny_mbv3, digits, cfg, tmp_path / "full")
    assert full.supernet.weights == "shared"

    class Stop(Exception):
        pass

    def stop(stats):
        raise Stop

    with pytest.raises(Stop):
        train_supernet(tiny_mbv3, digits, cfg, tmp_path / "cut", on_epoch=stop)
    resumed = train_supernet(tiny_mbv3, digits, cfg, tmp_path / "cut", resume=True)
    a, b = full.supernet.state_dict(), resumed.supernet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CheckpointError, match=r"other settings.*recipe"):
        train_supernet(tiny_mbv3, digits, _cfg(weights="shared", epochs=3), tmp_path / "cut", resume=True)
    with pytest.raises(CheckpointError, match="the checkpoint has shared"):
        train_supernet(tiny_mbv3, digits, _cfg(recipe="sandwich", sandwich_random=1, weights="separate", epochs=3),
                       tmp_path / "cut", resume=True)


def test_weights_and_recipe_are_validated(tiny_spos, tmp_path, digits):
    with pytest.raises(ConfigError, match="recipe must be single or sandwich"):
        TrainConfig(recipe="triple")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="weights must be auto, separate or shared"):
        TrainConfig(weights="tied")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="separate weights only"):
        train_supernet(tiny_spos, digits, _cfg(weights="shared"), tmp_path / "x")


@pytest.mark.slow
def test_shared_sandwich_supernet_beats_separate_at_equal_steps(tmp_path, digits):
    """The point of weight sharing: with few steps, sampled subnets of a shared supernet are far better."""
    from edgenas.evaluate import score_archs
    from edgenas.space import create_space

    space = create_space("mbv3", "small", width_mult=0.25, head_channels=64)
    archs = [space.sample(np.random.default_rng(s)) for s in range(4)]
    means = {}
    for weights in ("separate", "shared"):
        cfg = TrainConfig(epochs=3, batch_size=32, lr=0.1, val_archs=0, device="cpu", seed=0, weights=weights)
        sn = train_supernet(space, digits, cfg, tmp_path / weights).supernet
        means[weights] = np.mean([s.accuracy for s in score_archs(sn, archs, digits, split="test", recal=5)])
    assert means["shared"] > means["separate"] + 0.1, means


def test_a_checkpoint_from_before_weight_layouts_resumes_as_separate(tmp_path, tiny_mbv3, digits):
    """Files written before `weights`/`recipe` existed: resumable with --weights separate, refused with shared."""
    cfg = _cfg(weights="separate")
    train_supernet(tiny_mbv3, digits, dataclasses.replace(cfg, epochs=1), tmp_path / "old")
    path = tmp_path / "old" / "supernet.pt"
    blob = torch.load(path, weights_only=True)
    for key in ("weights", "recipe", "sandwich_random", "distill", "kd_temperature"):
        blob["meta"]["train"].pop(key)
    blob["meta"].pop("weights")
    torch.save(blob, path)
    resumed = train_supernet(tiny_mbv3, digits, cfg, tmp_path / "old", resume=True)
    assert resumed.supernet.weights == "separate" and len(resumed.history) == 2
    with pytest.raises(CheckpointError, match="the checkpoint has separate"):
        train_supernet(tiny_mbv3, digits, _cfg(epochs=3), tmp_path / "old", resume=True)
