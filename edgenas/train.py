"""Supernet training: one sampled path per step (SPOS), or the sandwich rule with in-place distillation.

Recipes. ``single``: one path per step, drawn uniformly (or FLOPs-bin-uniformly), as SPOS.
``sandwich`` (BigNAS): every step trains the largest path, the smallest path and ``sandwich_random``
uniformly drawn ones on the same batch and sums their losses before one optimiser step; the largest
path learns from the labels and, with ``distill``, the others learn from the largest path's soft
predictions (in-place distillation), which are detached so the teacher is not pulled towards its
students. "Largest" and "smallest" are by closed-form MACs, so the rule works for any space. All
paths of a step run in one forward call (:class:`_Paths`), which is what DistributedDataParallel
needs to reduce their gradients once.

Determinism and resume are designed together: the architecture sampler, the data order and the
dropout RNG are all re-seeded from ``(seed, epoch)`` at the start of every epoch, so resuming from
the checkpoint written at the end of epoch ``e`` continues exactly as an uninterrupted run would,
with no RNG state to carry. Under ``torchrun`` every rank draws the same architecture (same seed)
and a disjoint shard of the batch, and DistributedDataParallel averages the gradients.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from edgenas.data import DataConfig, DatasetSplits, iterate_batches
from edgenas.errors import CheckpointError, ConfigError
from edgenas.io import atomic_write_json
from edgenas.space import Arch, SearchSpace
from edgenas.supernet import Supernet, evaluate, load_checkpoint, recalibrated, save_checkpoint
from edgenas.torch_utils import (
    DistInfo,
    dist_info,
    param_groups,
    recal_batches,
    resolve_device,
    seeded,
    to_device,
    torch_threads,
)

__all__ = [
    "EpochStats",
    "TrainConfig",
    "TrainResult",
    "lr_at",
    "path_losses",
    "resolve_weights",
    "soft_cross_entropy",
    "step_archs",
    "train_supernet",
]

CHECKPOINT_NAME = "supernet.pt"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-5
    schedule: Literal["cosine", "linear"] = "cosine"
    warmup_steps: int = 0
    label_smoothing: float = 0.1
    grad_clip: float | None = None
    amp: bool = True
    channels_last: bool = True
    sampling: Literal["uniform", "flops"] = "uniform"
    weights: Literal["auto", "separate", "shared"] = "auto"
    recipe: Literal["single", "sandwich"] = "single"
    sandwich_random: int = 2
    distill: bool = True
    kd_temperature: float = 1.0
    steps_per_epoch: int | None = None
    val_archs: int = 3
    val_batches: int | None = None
    bn_recal_batches: int = 5
    seed: int = 0
    device: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be positive"),
            (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.schedule in ("cosine", "linear"), f"schedule must be cosine or linear, not {self.schedule!r}"),
            (self.sampling in ("uniform", "flops"), f"sampling must be uniform or flops, not {self.sampling!r}"),
            (self.weights in ("auto", "separate", "shared"),
             f"weights must be auto, separate or shared, not {self.weights!r}"),
            (self.recipe in ("single", "sandwich"), f"recipe must be single or sandwich, not {self.recipe!r}"),
            (self.sandwich_random >= 0, "sandwich_random must be >= 0"),
            (self.kd_temperature > 0, "kd_temperature must be positive"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (self.grad_clip is None or self.grad_clip > 0, "grad_clip must be positive"),
            (self.steps_per_epoch is None or self.steps_per_epoch >= 1, "steps_per_epoch must be >= 1"),
            (self.val_archs >= 0 and self.bn_recal_batches >= 0, "val_archs and bn_recal_batches must be >= 0"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.threads is None or self.threads >= 1, "threads must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"train config: {message}")


@dataclass
class EpochStats:
    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    images: int
    seconds: float
    images_per_s: float
    val_accuracy: list[float] = field(default_factory=list)
    val_archs: list[str] = field(default_factory=list)

    @property
    def val_mean(self) -> float:
        return float(np.mean(self.val_accuracy)) if self.val_accuracy else float("nan")


@dataclass
class TrainResult:
    checkpoint: Path
    history: list[EpochStats]
    supernet: Supernet


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Per-step learning rate: linear warm-up, then cosine or linear decay to zero at ``total``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * (1 - progress)


def _sample(space: SearchSpace, rng: np.random.Generator, cfg: TrainConfig, input_hw: tuple[int, int]) -> Arch:
    if cfg.sampling == "flops":
        return space.sample_flops_uniform(rng, input_hw)
    return space.sample(rng)


# what a checkpoint written before these settings existed was trained with (its weight layout is
# compared as resolved, from the checkpoint itself, so "auto" and the layout it means are the same)
_LEGACY = {"recipe": "single", "sandwich_random": 2, "distill": True, "kd_temperature": 1.0}


def _comparable(cfg: TrainConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d.pop("device")  # where and how fast it runs does not change what is trained
    d.pop("threads")
    return d


def resolve_weights(space: SearchSpace, cfg: TrainConfig) -> str:
    """The weight layout a training run uses: the config's, or the space's default for ``auto``."""
    weights = space.default_weights if cfg.weights == "auto" else cfg.weights
    if weights == "shared" and not space.supports_shared:
        raise ConfigError(f"space '{space.name}' has separate weights only; use weights 'separate' (or 'auto')")
    return weights


class _Paths(nn.Module):
    """Runs several paths of one supernet on one batch in a single forward call (one DDP reduction)."""

    def __init__(self, supernet: Supernet) -> None:
        super().__init__()
        self.supernet = supernet

    def forward(self, x: torch.Tensor, archs: list[Arch]) -> list[torch.Tensor]:
        return [self.supernet(x, arch) for arch in archs]


def soft_cross_entropy(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's softened distribution (in-place distillation);
    scaled by T^2 so its gradient does not shrink with the temperature."""
    target = torch.softmax(teacher.detach() / temperature, dim=1)
    return -(target * torch.log_softmax(student / temperature, dim=1)).sum(1).mean() * temperature**2


def step_archs(space: SearchSpace, rng: np.random.Generator, cfg: TrainConfig, input_hw: tuple[int, int],
               extremes: tuple[Arch, Arch]) -> list[Arch]:
    """The paths one training step trains: one sample, or largest + smallest + n samples (sandwich)."""
    if cfg.recipe == "single":
        return [_sample(space, rng, cfg, input_hw)]
    return [*extremes, *(_sample(space, rng, cfg, input_hw) for _ in range(cfg.sandwich_random))]


def path_losses(logits: list[torch.Tensor], y: torch.Tensor, criterion: nn.Module, cfg: TrainConfig) -> torch.Tensor:
    """Sum of the step's losses: labels for the first path; with sandwich + distill, the others learn
    from the first (largest) path's predictions."""
    loss = criterion(logits[0].float(), y)
    for out in logits[1:]:
        if cfg.recipe == "sandwich" and cfg.distill:
            loss = loss + soft_cross_entropy(out.float(), logits[0].float(), cfg.kd_temperature)
        else:
            loss = loss + criterion(out.float(), y)
    return loss


def train_supernet(
    space: SearchSpace,
    data: DatasetSplits,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    data_config: DataConfig | None = None,
    resume: bool = False,
    on_step: Callable[[int, int, int, float], None] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    """Train a supernet with the configured recipe and weight layout; checkpoint after every epoch.

    ``out_dir/supernet.pt`` (+ ``.json`` sidecar) is rewritten atomically each epoch and
    ``history.json`` keeps the per-epoch figures. An existing checkpoint is never overwritten
    unless ``resume`` is set, in which case training continues after its epoch.
    """
    dist = dist_info()
    device = resolve_device(cfg.device, dist.local_rank)
    owns_group = dist.world_size > 1 and not torch.distributed.is_initialized()
    if owns_group:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:  # the epochs seed torch's generators: inside a fork, so the caller's RNG and threads come back
        with torch_threads(cfg.threads), seeded(None, device):
            return _train(space, data, cfg, Path(out_dir), dist, device, data_config, resume, on_step, on_epoch)
    finally:
        if owns_group:
            torch.distributed.destroy_process_group()


def _train(
    space: SearchSpace, data: DatasetSplits, cfg: TrainConfig, out_dir: Path, dist: DistInfo,
    device: torch.device, data_config: DataConfig | None, resume: bool,
    on_step: Callable[[int, int, int, float], None] | None, on_epoch: Callable[[EpochStats], None] | None,
) -> TrainResult:
    ckpt_path = out_dir / CHECKPOINT_NAME
    history: list[EpochStats] = []
    start_epoch = 0
    train_state = None
    if ckpt_path.exists() and not resume:
        raise CheckpointError(f"{ckpt_path} exists; pass --resume to continue it or choose another output directory")
    weights = resolve_weights(space, cfg)
    if resume:
        supernet, meta, train_state = load_checkpoint(ckpt_path, space)
        saved, now = dict(meta.get("train", {})), _comparable(cfg)
        changed = sorted(k for k in now if k not in ("epochs", "weights") and saved.get(k, _LEGACY.get(k)) != now[k])
        if supernet.weights != weights:
            changed.append(f"weights: the checkpoint has {supernet.weights}")
        if changed:
            raise CheckpointError(
                f"{ckpt_path} was trained with other settings ({', '.join(changed)}); resume needs the same ones"
            )
        if data_config is not None and meta.get("data", {}).get("name") not in (None, data_config.name):
            raise CheckpointError(f"{ckpt_path} was trained on {meta['data']['name']}, not {data_config.name}")
        start_epoch = int(meta["epoch"]) + 1
        history = [EpochStats(**h) for h in meta.get("history", [])]
    else:
        torch.manual_seed(cfg.seed)
        supernet = Supernet(space, data.num_classes, data.in_channels, weights)

    supernet.to(device)
    if cfg.channels_last:
        supernet.to(memory_format=torch.channels_last)
    model: nn.Module = _Paths(supernet)
    if dist.world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    optimizer = torch.optim.SGD(param_groups(supernet, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum,
                                nesterov=cfg.nesterov and cfg.momentum > 0)
    if train_state is not None:
        optimizer.load_state_dict(train_state["optimizer"])
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    per_rank = len(data.train) // dist.world_size  # type: ignore[arg-type]
    steps = per_rank // cfg.batch_size
    if steps == 0:
        raise ConfigError(f"batch size {cfg.batch_size} is larger than the training split ({per_rank} images per rank)")
    if cfg.steps_per_epoch is not None:
        steps = min(steps, cfg.steps_per_epoch)
    total_steps = steps * cfg.epochs
    input_hw = tuple(data.input_size)
    macs = space.macs_table(input_hw)  # type: ignore[arg-type]
    extremes = (space.extreme_arch(macs, largest=True), space.extreme_arch(macs))
    val_rng = np.random.default_rng([cfg.seed, 999_983])
    val_archs = [space.sample(val_rng) for _ in range(cfg.val_archs)]
    recal = recal_batches(data, cfg.bn_recal_batches, cfg.batch_size, cfg.seed, device, cfg.channels_last)

    for epoch in range(start_epoch, cfg.epochs):
        arch_rng = np.random.default_rng([cfg.seed, epoch])
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 101 + dist.rank)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        t0 = time.perf_counter()
        batches = iterate_batches(data.train, cfg.batch_size, shuffle=True, generator=gen, drop_last=True,
                                  rank=dist.rank, world_size=dist.world_size)
        for step, (x, y) in enumerate(batches):
            if step >= steps:
                break
            lr = lr_at(epoch * steps + step, total_steps, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            archs = step_archs(space, arch_rng, cfg, input_hw, extremes)  # type: ignore[arg-type]
            x, y = to_device(x, device, cfg.channels_last), y.to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                outputs = model(x, archs)
                loss = path_losses(outputs, y, criterion, cfg)
            logits = outputs[0]
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(supernet.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.item() / len(archs) * len(y)  # mean over the step's paths
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            if on_step is not None and dist.is_main:
                on_step(epoch, step + 1, steps, loss.item())
        seconds = time.perf_counter() - t0

        val_acc = []
        for arch in val_archs:
            with recalibrated(supernet, arch, recal):
                val = iterate_batches(data.val, cfg.batch_size * 2, shuffle=False)
                limited = (b for i, b in enumerate(val) if cfg.val_batches is None or i < cfg.val_batches)
                res = evaluate(lambda x, a=arch: supernet(to_device(x, device, cfg.channels_last), a),
                               ((x, y.to(device)) for x, y in limited), supernet)
            val_acc.append(res["accuracy"])
        stats = EpochStats(epoch, lr, loss_sum / max(seen, 1), correct / max(seen, 1), seen * dist.world_size,
                           seconds, seen * dist.world_size / max(seconds, 1e-9), val_acc,
                           [a.to_str() for a in val_archs])
        history.append(stats)
        if dist.is_main:
            meta = {"epoch": epoch, "seed": cfg.seed, "train": _comparable(cfg),
                    "data": dataclasses.asdict(data_config) if data_config else {"name": data.name},
                    "history": [dataclasses.asdict(h) for h in history],
                    "torch": str(torch.__version__)}
            save_checkpoint(ckpt_path, supernet, meta, {"optimizer": optimizer.state_dict()})
            atomic_write_json(out_dir / "history.json", [dataclasses.asdict(h) for h in history])
        if on_epoch is not None and dist.is_main:
            on_epoch(stats)
    return TrainResult(ckpt_path, history, supernet)
