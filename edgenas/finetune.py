"""Fine-tune an extracted subnet (or any classifier) on its own, optionally distilling from the inherited weights.

Inherited supernet weights are a good start but were shared with many other paths; training the
chosen network alone for a few epochs usually adds accuracy. The run is an ordinary supervised
schedule (SGD with Nesterov momentum, linear warm-up then cosine decay, label smoothing, no weight
decay on BN and biases), validated after each epoch on the validation split with the BN statistics
that training produced, keeping the best-validation weights and stopping after ``patience`` epochs
without improvement, but never while the best validation accuracy is still at chance (within three
standard errors of 1/classes): from scratch on a small set, the BN statistics lag the weights for
the first epochs and validation sits at chance while the loss falls; stopping there (as two of
three seeds did on digits with patience 3) reports a network that was never trained. The test split
is only read once, at the end, to report the accuracy of the best weights and of the inherited
subnet before fine-tuning, so users see what fine-tuning added.

Knowledge distillation uses the subnet *as loaded* (the supernet's weights for the chosen path) as
a frozen teacher. With ``from_scratch`` the student starts from a fresh seeded initialisation
instead, which tells whether the inherited weights help at all.

Any other ``nn.Module`` classifier (a hand-designed baseline, say) goes through the very same loop,
so a comparison between a found network and a baseline differs only in the network: its checkpoints
are plain state dicts (``edgenas-module/1``) that resume loads back into the model passed in.

Resume is exact the same way supernet training is: data order and dropout are re-seeded from
``(seed, epoch)`` at the start of every epoch and the learning rate is a pure function of the step,
so continuing from ``last.pt`` (weights, optimiser, best state, history) gives bit-for-bit the
weights of an uninterrupted run.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgenas.config import to_mapping
from edgenas.data import DatasetSplits, iterate_batches
from edgenas.errors import CheckpointError, ConfigError, EdgenasError
from edgenas.extract import SUBNET_FORMAT, load_subnet, save_subnet
from edgenas.io import atomic_write_json, read_model_checkpoint, save_model_checkpoint
from edgenas.space import Subnet
from edgenas.supernet import evaluate
from edgenas.torch_utils import param_groups, resolve_device, seeded, to_device, torch_threads

__all__ = [
    "FINETUNE_FORMAT",
    "MODULE_FORMAT",
    "FinetuneConfig",
    "FinetuneEpoch",
    "FinetuneResult",
    "distillation_loss",
    "epochs_since_best",
    "finetune",
    "finetune_lr",
    "load_module_state",
    "save_module",
]

FINETUNE_FORMAT = "edgenas-finetune/1"
MODULE_FORMAT = "edgenas-module/1"
LAST_NAME, BEST_NAME, FINAL_NAME, REPORT_NAME = "last.pt", "best.pt", "subnet.pt", "finetune.json"
_SUBNET_KEYS = ("format", "space", "arch", "arch_id", "num_classes", "in_channels")  # save_subnet writes these


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune; everything but ``threads`` (and ``epochs``, to extend a run) must match on resume."""

    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-5
    warmup_steps: int = 0
    label_smoothing: float = 0.1
    grad_clip: float | None = None
    amp: bool = True
    channels_last: bool = True
    distill: bool = False
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    patience: int = 3
    from_scratch: bool = False
    train_limit: int | None = None
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, not {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, not {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be positive, not {self.lr}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), not {self.momentum}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, not {self.weight_decay}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, not {self.warmup_steps}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), not {self.label_smoothing}"),
            (self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be positive, not {self.grad_clip}"),
            (0 <= self.kd_alpha <= 1, f"kd_alpha must be in [0, 1], not {self.kd_alpha}"),
            (self.kd_temperature > 0, f"kd_temperature must be positive, not {self.kd_temperature}"),
            (self.patience >= 1, f"patience must be >= 1, not {self.patience}"),
            (self.train_limit is None or self.train_limit >= 1, f"train_limit must be >= 1, not {self.train_limit}"),
            (self.threads is None or self.threads >= 1, f"threads must be >= 1, not {self.threads}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"finetune config: {message}")


@dataclass
class FinetuneEpoch:
    """One epoch's figures; ``lr`` is the rate of its last step, ``seconds`` covers training and validation."""

    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    val_accuracy: float
    val_loss: float
    images: int
    train_seconds: float
    seconds: float
    images_per_s: float
    improved: bool
    kd_loss: float | None = None


@dataclass
class FinetuneResult:
    """The best-validation subnet and what fine-tuning did; ``report`` is what ``finetune.json`` holds."""

    subnet: nn.Module
    checkpoint: Path
    history: list[FinetuneEpoch]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    val_accuracy: float
    test_accuracy: float
    test_count: int
    before_test_accuracy: float
    before_test_count: int
    before_val_accuracy: float
    from_scratch: bool
    distill: bool
    seconds: float
    report: dict[str, Any]


def finetune_lr(step: int, total: int, lr: float, warmup_steps: int) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to zero at ``total``.

    The same curve as :func:`edgenas.train.lr_at` with ``schedule="cosine"``, without needing a
    :class:`~edgenas.train.TrainConfig`.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
    return lr * 0.5 * (1 + math.cos(math.pi * progress))


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, *, alpha: float,
                      temperature: float, label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1 - alpha) * CE_smoothed + alpha * T^2 * KL(p_teacher || p_student)`` at temperature ``T``.

    Returns ``(total, kd)``. The KL is Hinton's direction (``F.kl_div(log p_student, p_teacher)``), and
    the ``T^2`` factor keeps the soft-target gradients on the scale of the hard-label ones.
    """
    ce = F.cross_entropy(student, target, label_smoothing=label_smoothing)
    t = temperature
    kd = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), reduction="batchmean",
                  log_target=True) * (t * t)
    return (1 - alpha) * ce + alpha * kd, kd


def epochs_since_best(val_accuracies: list[float]) -> int:
    """Epochs after the first best validation accuracy (strict improvement needed; ties do not count)."""
    best, best_at = -math.inf, 0
    for i, acc in enumerate(val_accuracies):
        if acc > best:
            best, best_at = acc, i
    return len(val_accuracies) - 1 - best_at if val_accuracies else 0


def finetune(
    subnet: nn.Module,
    data: DatasetSplits,
    config: FinetuneConfig,
    out_dir: str | Path,
    *,
    teacher: nn.Module | None = None,
    resume: bool = False,
    device: torch.device | None = None,
    on_epoch: Callable[[FinetuneEpoch], None] | None = None,
    meta: dict[str, Any] | None = None,
    name: str | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of ``subnet`` on ``data`` and write ``last.pt``, ``best.pt``, ``subnet.pt`` and
    ``finetune.json`` to ``out_dir``.

    ``subnet`` itself is never changed: it is the starting point (unless ``config.from_scratch``),
    the "before" reference and, with ``config.distill``, the teacher (unless ``teacher`` is given).
    A :class:`~edgenas.space.Subnet` is saved as an ``edgenas-subnet/1`` checkpoint that later stages
    (export) take; any other classifier as an ``edgenas-module/1`` state dict, reported under ``name``
    (default: its class name). ``meta`` is the loaded checkpoint's metadata (data facts, source),
    carried into the outputs. An existing ``last.pt`` is only continued with ``resume``.
    """
    if teacher is not None and not config.distill:
        raise ConfigError("a teacher was given but distillation is off (set distill=True)")
    if config.from_scratch and not isinstance(subnet, Subnet):
        raise ConfigError("from_scratch rebuilds a searched subnet from its architecture; for another model, "
                          "pass a freshly initialised one instead")
    label = subnet.arch.to_str() if isinstance(subnet, Subnet) else (name or type(subnet).__name__)
    # epochs seed torch's generators (dropout, a fresh initialisation): inside a fork, so a caller's RNG
    # state and thread count come back unchanged
    with torch_threads(config.threads), seeded(None, device):
        return _finetune(subnet, data, config, Path(out_dir), teacher, resume, device, on_epoch, meta, label)


def save_module(path: str | Path, model: nn.Module, meta: dict[str, Any],
                train_state: dict[str, Any] | None = None) -> Path:
    """Write a non-subnet classifier's state dict (tensors and plain containers only) atomically."""
    return save_model_checkpoint(path, model, {"format": MODULE_FORMAT, **meta}, train_state)


def load_module_state(path: str | Path, model: nn.Module) -> tuple[nn.Module, dict[str, Any], dict[str, Any] | None]:
    """Load an ``edgenas-module/1`` checkpoint into a copy of ``model`` (which supplies the architecture)."""
    path = Path(path)
    state, meta, train_state = read_model_checkpoint(path)
    if meta.get("format") != MODULE_FORMAT:
        raise CheckpointError(f"{path} has format {meta.get('format')!r}, expected {MODULE_FORMAT!r}")
    copy_ = copy.deepcopy(model)
    try:
        copy_.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{path} does not fit this model: {first}") from None
    return copy_, meta, train_state


def _save(path: Path, model: nn.Module, meta: dict[str, Any], train_state: dict[str, Any] | None = None) -> Path:
    if isinstance(model, Subnet):
        return save_subnet(path, model, meta, train_state)
    return save_module(path, model, meta, train_state)


def _load(path: Path, like: nn.Module) -> tuple[nn.Module, dict[str, Any], dict[str, Any] | None]:
    if isinstance(like, Subnet):
        return load_subnet(path)
    return load_module_state(path, like)


def _check_fits(model: nn.Module, data: DatasetSplits, label: str) -> None:
    """One line when the model's input channels or class count do not match the data."""
    if isinstance(model, Subnet):
        if data.num_classes != model.num_classes or data.in_channels != model.in_channels:
            raise EdgenasError(f"the subnet ({model.num_classes} classes, {model.in_channels}-channel input) does "
                               f"not fit {data.name} ({data.num_classes} classes, {data.in_channels} channels)")
        return
    x = torch.stack([data.val[i][0] for i in range(min(2, len(data.val)))])  # type: ignore[arg-type]
    probe = copy.deepcopy(model).cpu().eval()
    try:
        with torch.no_grad():
            out = probe(x)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise EdgenasError(f"{label} does not accept {data.name}'s {tuple(x.shape[1:])} images: {first}") from None
    if out.ndim != 2 or out.shape[1] != data.num_classes:
        raise EdgenasError(f"{label} gives outputs of shape {tuple(out.shape[1:])} but {data.name} has "
                           f"{data.num_classes} classes")


def _comparable(config: FinetuneConfig) -> dict[str, Any]:
    d = to_mapping(config)
    d.pop("threads")  # how fast it runs does not change what is trained
    return d


def _fingerprint(model: nn.Module) -> str:
    """Hash of every tensor in the state dict: resume refuses a different starting subnet or teacher."""
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _limited(data: DatasetSplits, limit: int | None) -> DatasetSplits:
    """The first ``limit`` training images, like ``DataConfig.train_limit`` (same order, val untouched)."""
    if limit is None or limit >= len(data.train):  # type: ignore[arg-type]
        return data
    index = torch.arange(limit)
    sub = data.train.subset(index) if hasattr(data.train, "subset") else torch.utils.data.Subset(
        data.train, index.tolist())
    return dataclasses.replace(data, train=sub)


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class _Runner:
    """Device placement, autocast and the forward passes shared by training and evaluation."""

    def __init__(self, config: FinetuneConfig, device: torch.device) -> None:
        self.config, self.device = config, device
        self.use_amp = config.amp and device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16

    def place(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        if self.config.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp)

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return to_device(x, self.device, self.config.channels_last)

    def score(self, model: nn.Module, ds: Any) -> dict[str, float]:
        """Accuracy/loss in eval mode (BN running statistics), no gradients; the mode is restored."""

        def forward(x: torch.Tensor) -> torch.Tensor:
            with self.autocast():
                return model(self.input(x))

        batches = ((x, y.to(self.device)) for x, y in iterate_batches(ds, self.config.batch_size * 2, shuffle=False))
        with torch.no_grad():
            return evaluate(forward, batches, model)


def _epoch_batches(data: DatasetSplits, config: FinetuneConfig, epoch: int) -> Iterator[tuple[torch.Tensor,
                                                                                              torch.Tensor]]:
    """This epoch's data order and dropout RNG, re-seeded from ``(seed, epoch)`` so resume is exact."""
    torch.manual_seed(config.seed * 1_000_003 + epoch * 101)
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    return iterate_batches(data.train, config.batch_size, shuffle=True, generator=gen, drop_last=True)


def _finetune(
    subnet: nn.Module, data: DatasetSplits, config: FinetuneConfig, out_dir: Path, teacher_in: nn.Module | None,
    resume: bool, device: torch.device | None, on_epoch: Callable[[FinetuneEpoch], None] | None,
    meta: dict[str, Any] | None, label: str,
) -> FinetuneResult:
    t_start = time.perf_counter()
    _check_fits(subnet, data, label)
    data = _limited(data, config.train_limit)
    n_train = len(data.train)  # type: ignore[arg-type]
    steps = n_train // config.batch_size
    if steps == 0:
        raise ConfigError(f"batch size {config.batch_size} is larger than the training split ({n_train} images)")
    device = device or resolve_device("auto")
    run = _Runner(config, device)
    base_meta = {k: v for k, v in (meta or {}).items() if k not in _SUBNET_KEYS and k != "finetune"}

    inherited = run.place(copy.deepcopy(subnet)).eval()  # the caller's subnet is never moved or changed
    teacher = None
    if config.distill:
        teacher = run.place(copy.deepcopy(teacher_in)).eval() if teacher_in is not None else inherited
        for p in teacher.parameters():
            p.requires_grad_(False)
    identity = {"config": _comparable(config), "source": _fingerprint(subnet),
                "teacher": _fingerprint(teacher_in) if teacher_in is not None else None,
                "data": {"name": data.name, "train": n_train, "val": len(data.val),  # type: ignore[arg-type]
                         "input_size": list(data.input_size)}}

    last_path = out_dir / LAST_NAME
    state: dict[str, Any] | None = None
    if last_path.exists() and not resume:
        raise CheckpointError(f"{last_path} exists; pass --resume to continue it or choose another output directory")
    if resume:
        if not last_path.exists():
            raise CheckpointError(f"nothing to resume: {last_path} does not exist (run without --resume)")
        student, _, state = _load(last_path, subnet)
        if not isinstance(state, dict) or "identity" not in state:
            raise CheckpointError(f"{last_path} has no fine-tuning state to resume")
        _check_same(last_path, state["identity"], identity)
    elif config.from_scratch:
        assert isinstance(subnet, Subnet)  # finetune() refuses from_scratch for other models
        if subnet.space is None:
            raise EdgenasError("from_scratch needs the subnet's space; build it with space.build_subnet")
        torch.manual_seed(config.seed)
        student = subnet.space.build_subnet(subnet.arch, subnet.num_classes, subnet.in_channels)
    else:
        student = copy.deepcopy(subnet)
    run.place(student)

    optimizer = torch.optim.SGD(param_groups(student, config.weight_decay), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov and config.momentum > 0)
    history: list[FinetuneEpoch] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch, best_val, stopped, start = -1, -math.inf, False, 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        history = [FinetuneEpoch(**h) for h in state["history"]]
        best_state, best_epoch, best_val = state["best_state"], int(state["best_epoch"]), float(state["best_val"])
        stopped, start = bool(state["stopped_early"]), int(state["epoch"]) + 1
    prior_seconds = sum(h.seconds for h in history)  # earlier sessions of a resumed run
    scaler = torch.amp.GradScaler("cuda", enabled=run.use_amp and run.amp_dtype == torch.float16)
    total_steps = steps * config.epochs

    chance = 1.0 / data.num_classes
    above_chance = chance + 3 * math.sqrt(chance * (1 - chance) / max(1, len(data.val)))  # type: ignore[arg-type]
    for epoch in range(start, config.epochs):
        if stopped:
            break
        t0 = time.perf_counter()
        student.train()
        loss_sum, kd_sum, correct, seen, lr = 0.0, 0.0, 0, 0, config.lr
        for step, (x, y) in enumerate(_epoch_batches(data, config, epoch)):
            if step >= steps:
                break
            lr = finetune_lr(epoch * steps + step, total_steps, config.lr, config.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = run.input(x), y.to(device)
            with run.autocast():
                logits = student(x)
                if teacher is not None:
                    with torch.no_grad():
                        soft = teacher(x).float()
                    loss, kd = distillation_loss(logits.float(), soft, y, alpha=config.kd_alpha,
                                                 temperature=config.kd_temperature,
                                                 label_smoothing=config.label_smoothing)
                    kd_sum += kd.item() * len(y)
                else:
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
            if not math.isfinite(loss.item()):
                raise EdgenasError(f"the training loss became {loss.item()} at epoch {epoch + 1} step {step + 1}; "
                                   f"lower --lr (now {config.lr}) or set a gradient clip")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(student.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        train_seconds = time.perf_counter() - t0
        val = run.score(student, data.val)
        improved = best_epoch < 0 or val["accuracy"] > best_val
        if improved:
            best_state, best_epoch, best_val = _state_copy(student), epoch, float(val["accuracy"])
        stats = FinetuneEpoch(epoch, lr, loss_sum / max(seen, 1), correct / max(seen, 1), float(val["accuracy"]),
                              float(val["loss"]), seen, train_seconds, time.perf_counter() - t0,
                              seen / max(train_seconds, 1e-9), improved, kd_sum / max(seen, 1) if teacher else None)
        history.append(stats)
        stopped = (epoch - best_epoch >= config.patience and epoch + 1 < config.epochs
                   and best_val > above_chance)
        running = {"epoch": epoch, "best_epoch": best_epoch, "best_val": best_val, "stopped_early": stopped}
        if improved:
            _save(out_dir / BEST_NAME, student, {**base_meta, "finetune": {**running, "status": "best"}})
        assert best_state is not None
        _save(last_path, student, {**base_meta, "finetune": {**running, "status": "running"}},
                    train_state={"optimizer": optimizer.state_dict(), **running, "best_state": best_state,
                                 "history": [dataclasses.asdict(h) for h in history], "identity": identity})
        if on_epoch is not None:
            on_epoch(stats)

    if best_state is None:
        raise CheckpointError(f"{last_path} holds no finished epoch")
    student.load_state_dict(best_state)
    student.eval()
    test, before_test = run.score(student, data.test), run.score(inherited, data.test)
    before_val = run.score(inherited, data.val)
    seconds = prior_seconds + time.perf_counter() - t_start
    block = {
        "config": to_mapping(config),
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "stopped_early": stopped,
        "val_accuracy": best_val,
        "test": {"accuracy": float(test["accuracy"]), "count": int(test["count"])},
        "before": {"accuracy": float(before_test["accuracy"]), "count": int(before_test["count"]),
                   "val_accuracy": float(before_val["accuracy"])},
        "from_scratch": config.from_scratch,
        "distill": config.distill,
        "seconds": seconds,
        "device": str(device),
        "source": identity["source"],
    }
    final = _save(out_dir / FINAL_NAME, student, {**base_meta, "finetune": block})
    searched = isinstance(subnet, Subnet)
    report = {"format": FINETUNE_FORMAT, "subnet": str(final), "model": label,
              "arch": subnet.arch.to_str() if searched else None,
              "arch_id": subnet.arch.arch_id if searched else None, "data": data.name,
              "subnet_format": SUBNET_FORMAT if searched else MODULE_FORMAT, **block,
              "history": [dataclasses.asdict(h) for h in history]}
    atomic_write_json(out_dir / REPORT_NAME, report)
    return FinetuneResult(student, final, history, best_epoch, len(history), stopped, best_val,
                          block["test"]["accuracy"], block["test"]["count"], block["before"]["accuracy"],
                          block["before"]["count"], block["before"]["val_accuracy"], config.from_scratch,
                          config.distill, seconds, report)


def _check_same(path: Path, saved: dict[str, Any], now: dict[str, Any]) -> None:
    """One line naming every setting that differs between the checkpoint and this call."""
    changed = sorted(k for k in set(saved["config"]) | set(now["config"])
                     if k != "epochs" and saved["config"].get(k) != now["config"].get(k))
    changed += [what for what, key in (("the starting subnet", "source"), ("the teacher", "teacher"),
                                       ("the data", "data")) if saved.get(key) != now.get(key)]
    if changed:
        raise CheckpointError(f"{path} was fine-tuned with other settings ({', '.join(changed)}); "
                              "resume needs the same ones")
