"""Fine-tuning: it improves the inherited subnet, resumes exactly, stops early, distils, and fails in one line."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgenas.cli import cli
from edgenas.data import DataConfig
from edgenas.errors import CheckpointError, ConfigError
from edgenas.extract import SUBNET_FORMAT, data_facts, extract_subnet, load_subnet, save_subnet
from edgenas.finetune import (
    FinetuneConfig,
    distillation_loss,
    epochs_since_best,
    finetune,
    finetune_lr,
)
from edgenas.supernet import Supernet, save_checkpoint
from edgenas.train import TrainConfig, lr_at

CPU = torch.device("cpu")
DIGITS_TEST = 359  # sklearn digits: 1797 images, 20% held out for test


def _cfg(**kw):
    base = dict(epochs=2, batch_size=32, lr=0.05, train_limit=640, seed=1, channels_last=True)
    return FinetuneConfig(**{**base, **kw})


def _states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def subnet_ckpt(tmp_path_factory, digits):
    """An extracted (untrained-supernet) subnet checkpoint for digits, as `edgenas extract` writes it."""
    from edgenas.space import create_space

    space = create_space("mbv3", "small", width_mult=0.25, head_channels=64)
    torch.manual_seed(0)
    supernet = Supernet(space, digits.num_classes, digits.in_channels)
    subnet = extract_subnet(supernet, space.sample(np.random.default_rng(0)), digits, recal=2, batch_size=64,
                            device=CPU)
    path = tmp_path_factory.mktemp("ckpt") / "subnet.pt"
    save_subnet(path, subnet.cpu(), {"data": data_facts(digits, DataConfig(name="digits", seed=0)),
                                     "source": {"run_dir": "runs/x"}})
    return path


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, subnet_ckpt, digits):
    subnet, meta, _ = load_subnet(subnet_ckpt)
    out = tmp_path_factory.mktemp("full")
    seen = []
    result = finetune(subnet, digits, _cfg(), out, device=CPU, meta=meta, on_epoch=seen.append)
    return result, out, seen


def test_config_validation():
    for bad, text in [(dict(epochs=0), "epochs must be >= 1"), (dict(lr=0.0), "lr must be positive"),
                      (dict(label_smoothing=1.0), "label_smoothing"), (dict(kd_alpha=1.5), "kd_alpha"),
                      (dict(kd_temperature=0.0), "kd_temperature"), (dict(patience=0), "patience"),
                      (dict(train_limit=0), "train_limit"), (dict(threads=0), "threads")]:
        with pytest.raises(ConfigError, match=text):
            FinetuneConfig(**bad)


def test_lr_is_the_cosine_of_supernet_training():
    for warmup in (0, 5):
        cfg = TrainConfig(lr=0.2, warmup_steps=warmup, schedule="cosine")
        for step in (0, 3, 5, 40, 99, 100):
            assert finetune_lr(step, 100, 0.2, warmup) == pytest.approx(lr_at(step, 100, cfg))


def test_distillation_loss_terms():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 10, generator=gen), torch.randn(8, 10, generator=gen)
    y = torch.randint(0, 10, (8,), generator=gen)
    total, kd = distillation_loss(s, t, y, alpha=0.0, temperature=4.0, label_smoothing=0.1)
    torch.testing.assert_close(total, torch.nn.functional.cross_entropy(s, y, label_smoothing=0.1))
    same, kd_same = distillation_loss(s, s, y, alpha=1.0, temperature=2.0)
    assert kd_same.abs() < 1e-6 and same.abs() < 1e-6
    # alpha=1: T^2 * KL(p_teacher || p_student)
    pt, ps = torch.softmax(t / 4, 1), torch.softmax(s / 4, 1)
    expected = 16 * (pt * (pt.log() - ps.log())).sum(1).mean()
    torch.testing.assert_close(distillation_loss(s, t, y, alpha=1.0, temperature=4.0)[0], expected)
    assert kd > 0


def test_epochs_since_best():
    assert epochs_since_best([]) == 0
    assert epochs_since_best([0.5, 0.6, 0.6, 0.55]) == 2  # a tie is not an improvement
    assert epochs_since_best([0.5, 0.7]) == 0


def test_finetuning_improves_and_writes_everything(full_run, subnet_ckpt, digits):
    result, out, seen = full_run
    inherited, meta, _ = load_subnet(subnet_ckpt)
    assert [s.epoch for s in seen] == [0, 1] and result.epochs_run == 2 and not result.stopped_early
    assert result.test_count == result.before_test_count == DIGITS_TEST
    assert result.test_accuracy > result.before_test_accuracy + 0.2  # untrained supernet: near chance before
    assert result.test_accuracy > 0.5 and result.val_accuracy == max(s.val_accuracy for s in seen)
    assert not _states_equal(result.subnet, inherited)
    for name in ("best.pt", "last.pt", "subnet.pt", "best.json", "last.json", "subnet.json", "finetune.json"):
        assert (out / name).is_file(), name
    final, final_meta, state = load_subnet(out / "subnet.pt")
    assert state is None and final_meta["format"] == SUBNET_FORMAT and final_meta["arch"] == inherited.arch.to_str()
    assert final_meta["data"] == meta["data"] and final_meta["source"] == meta["source"]
    ft = final_meta["finetune"]
    assert ft["test"] == {"accuracy": result.test_accuracy, "count": DIGITS_TEST}
    assert ft["before"]["count"] == DIGITS_TEST and ft["from_scratch"] is False and ft["distill"] is False
    assert ft["best_epoch"] == result.best_epoch and ft["config"]["lr"] == 0.05
    assert final(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert _states_equal(final, result.subnet)
    best, _, _ = load_subnet(out / "best.pt")
    assert _states_equal(best, final)
    _, _, last_state = load_subnet(out / "last.pt")
    assert last_state["epoch"] == 1 and len(last_state["history"]) == 2 and "optimizer" in last_state
    report = json.loads((out / "finetune.json").read_text())
    assert report["test"]["count"] == DIGITS_TEST and len(report["history"]) == 2
    wanted = {"train_loss", "train_accuracy", "val_accuracy", "lr", "seconds", "images_per_s"}
    assert wanted <= set(report["history"][0])
    assert report["history"][0]["images"] == 640


def test_resume_after_one_epoch_equals_uninterrupted(full_run, subnet_ckpt, digits, tmp_path):
    result, _, _ = full_run
    subnet, meta, _ = load_subnet(subnet_ckpt)

    class Stop(Exception):
        pass

    def stop(stats):
        raise Stop

    with pytest.raises(Stop):
        finetune(subnet, digits, _cfg(), tmp_path, device=CPU, meta=meta, on_epoch=stop)
    assert not (tmp_path / "subnet.pt").exists()
    with pytest.raises(CheckpointError, match="pass --resume"):
        finetune(subnet, digits, _cfg(), tmp_path, device=CPU, meta=meta)
    with pytest.raises(CheckpointError, match=r"other settings \(lr, patience\)"):
        finetune(subnet, digits, _cfg(lr=0.01, patience=2), tmp_path, device=CPU, meta=meta, resume=True)
    resumed = finetune(subnet, digits, _cfg(), tmp_path, device=CPU, meta=meta, resume=True)
    a, b = result.subnet.state_dict(), resumed.subnet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h.train_loss for h in resumed.history] == [h.train_loss for h in result.history]
    assert resumed.test_accuracy == result.test_accuracy


def test_early_stopping_is_deterministic(monkeypatch, subnet_ckpt, digits, tmp_path):
    import edgenas.finetune as ft

    monkeypatch.setattr(ft, "evaluate", lambda forward, batches, model: {"accuracy": 0.5, "loss": 1.0, "count": 1})
    subnet, meta, _ = load_subnet(subnet_ckpt)
    epochs = []
    result = finetune(subnet, digits, _cfg(epochs=5, patience=1, train_limit=64), tmp_path, device=CPU, meta=meta,
                      on_epoch=epochs.append)
    assert result.stopped_early and result.epochs_run == 2 and result.best_epoch == 0
    assert [e.improved for e in epochs] == [True, False]
    best, _, _ = load_subnet(tmp_path / "best.pt")
    assert _states_equal(best, result.subnet)  # the best (first) epoch's weights, not the last
    last_net, _, last = load_subnet(tmp_path / "last.pt")
    assert not _states_equal(best, last_net)  # the second epoch did train
    assert all(torch.equal(last["best_state"][k], v) for k, v in best.state_dict().items())
    assert last["stopped_early"] is True and last["epoch"] == 1


def test_no_early_stop_while_validation_is_at_chance(monkeypatch, subnet_ckpt, digits, tmp_path):
    import edgenas.finetune as ft

    # from scratch on a small set the validation accuracy can sit at chance for a few epochs (BN statistics
    # lag the weights): patience must not end the run there
    monkeypatch.setattr(ft, "evaluate", lambda forward, batches, model: {"accuracy": 0.1, "loss": 2.3, "count": 1})
    subnet, meta, _ = load_subnet(subnet_ckpt)
    result = finetune(subnet, digits, _cfg(epochs=3, patience=1, train_limit=64), tmp_path, device=CPU, meta=meta)
    assert not result.stopped_early and result.epochs_run == 3


def test_from_scratch_and_distillation(subnet_ckpt, digits, tmp_path):
    subnet, meta, _ = load_subnet(subnet_ckpt)
    before = copy.deepcopy(subnet)
    cfg = _cfg(epochs=1, from_scratch=True, distill=True, kd_alpha=0.7, train_limit=64, lr=0.01)
    initial = []
    real_build = subnet.space.build_subnet

    def build(*args, **kw):  # record the student's starting weights
        net = real_build(*args, **kw)
        initial.append(copy.deepcopy(net))
        return net

    subnet.space.build_subnet = build  # type: ignore[method-assign]
    try:
        result = finetune(subnet, digits, cfg, tmp_path, device=CPU, meta=meta)
    finally:
        del subnet.space.build_subnet
    assert len(initial) == 1 and not _states_equal(initial[0], before)  # re-initialised, not inherited
    torch.manual_seed(cfg.seed)
    assert _states_equal(initial[0], real_build(subnet.arch, 10, 1))  # seeded: the same fresh weights every time
    assert _states_equal(subnet, before)  # the loaded subnet (the teacher) is unchanged
    h = result.history[0]
    assert np.isfinite(h.train_loss) and h.kd_loss is not None and np.isfinite(h.kd_loss) and h.kd_loss > 0
    assert result.from_scratch and result.distill
    _, final_meta, _ = load_subnet(tmp_path / "subnet.pt")
    assert final_meta["finetune"]["from_scratch"] is True and final_meta["finetune"]["distill"] is True


def test_teacher_without_distill_is_refused(subnet_ckpt, digits, tmp_path):
    subnet, _, _ = load_subnet(subnet_ckpt)
    with pytest.raises(ConfigError, match="distillation is off"):
        finetune(subnet, digits, _cfg(), tmp_path, teacher=subnet, device=CPU)


def _one_line_error(result, text):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], result.output


def test_cli_runs_and_reports(subnet_ckpt, tmp_path):
    runner = CliRunner()
    out = tmp_path / "ft"
    args = ["finetune", str(subnet_ckpt), "--out", str(out), "--epochs", "1", "--batch-size", "32",
            "--train-limit", "64", "--threads", "1", "--device", "cpu"]
    res = runner.invoke(cli, [*args, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["test"]["count"] == DIGITS_TEST and doc["before"]["count"] == DIGITS_TEST
    assert doc["epochs_run"] == 1 and doc["config"]["train_limit"] == 64 and len(doc["history"]) == 1
    # an existing run is never overwritten, and resume needs the same settings
    _one_line_error(runner.invoke(cli, args), "pass --resume")
    _one_line_error(runner.invoke(cli, [*args, "--resume", "--lr", "0.1"]), "other settings (lr)")
    # resuming a finished run only re-reports it
    res = runner.invoke(cli, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    assert f"on {DIGITS_TEST} digits test images" in res.stdout and "before fine-tuning" in res.stdout


def test_cli_prints_epoch_lines(subnet_ckpt, tmp_path):
    res = CliRunner().invoke(cli, ["finetune", str(subnet_ckpt), "--out", str(tmp_path / "o"), "--epochs", "1",
                                   "--batch-size", "32", "--train-limit", "64", "--distill", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "epoch 1/1 | loss" in res.stderr and "val acc" in res.stderr and "ETA" in res.stderr
    assert "distilled from the inherited subnet" in res.stdout


def test_cli_bad_inputs(subnet_ckpt, tmp_path, tiny_mbv3):
    runner = CliRunner()
    out = ["--out", str(tmp_path / "o")]
    _one_line_error(runner.invoke(cli, ["finetune", str(tmp_path / "missing.pt"), *out]), "checkpoint not found")
    save_checkpoint(tmp_path / "super.pt", Supernet(tiny_mbv3, 10, 1), {})
    _one_line_error(runner.invoke(cli, ["finetune", str(tmp_path / "super.pt"), *out]), "run `edgenas extract`")
    for bad, text in [(["--lr", "-1"], "lr must be positive"), (["--epochs", "0"], "epochs must be >= 1"),
                      (["--kd-alpha", "2"], "kd_alpha"), (["--label-smoothing", "1"], "label_smoothing"),
                      (["--patience", "0"], "patience")]:
        _one_line_error(runner.invoke(cli, ["finetune", str(subnet_ckpt), *out, *bad]), text)
    res = runner.invoke(cli, ["finetune", str(subnet_ckpt), *out, "--resume"])
    _one_line_error(res, "nothing to resume")
    res = runner.invoke(cli, ["finetune", str(subnet_ckpt), *out, "--batch-size", "5000"])
    _one_line_error(res, "larger than the training split")
    assert not (tmp_path / "o" / "last.pt").exists()
