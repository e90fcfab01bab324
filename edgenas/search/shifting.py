"""Supernet Shifting: fine-tune the supernet on the paths the search keeps visiting.

A :class:`~edgenas.search.evolution.SearchHook`, never part of scoring (STYLE 3). For each legal
candidate it runs a few training batches through that candidate's path and back-propagates the
loss. With ``update="generation"`` (the paper's description) the gradients of all candidates of
a generation accumulate and the optimiser steps once at the generation's end, so every candidate
of a generation is scored with the same weights; ``update="candidate"`` steps after each
candidate instead (what the authors' released code does, inside its fitness function).
Because good architectures are proposed more often, the shared weights drift towards them.

The optimiser (SGD, small constant learning rate, momentum, weight decay on conv/linear weights
only) is the hook's own and lives across generations; its state and the counters are the hook's
``state_dict``. Training batches are drawn from the training split with a generator seeded by
``(seed, generation, candidate index)``, and dropout runs under a forked RNG seeded the same
way, so a resumed search trains on exactly the batches an uninterrupted one would.

With ``freeze_backbone`` only the classifier learns (the transfer baseline): the backbone's
parameters get no gradient and its batch-norm buffers are restored after each candidate, so it
stays bit-for-bit unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from edgenas.config import to_mapping
from edgenas.data import DatasetSplits, iterate_batches
from edgenas.errors import CheckpointError, ConfigError, EdgenasError
from edgenas.search.evolution import SearchHook
from edgenas.search.results import Candidate, GenerationRecord
from edgenas.space import Arch
from edgenas.supernet import Supernet, path_modules
from edgenas.torch_utils import param_groups, to_device

__all__ = ["RELEASED_SHIFT", "ShiftConfig", "SupernetShifting", "batch_seed", "scaled_shift", "shift_budget_for"]

#: The authors' released setting per candidate (20 SGD steps of batch 150 at lr 1e-4) and the SPOS
#: supernet training it followed (peak lr 0.5 at batch 1024, 120k steps of ImageNet).
RELEASED_SHIFT = {"steps": 20, "batch_size": 150, "lr": 1e-4, "train_lr": 0.5, "train_batch_size": 1024,
                  "fraction_of_training": 0.02}


@dataclass(frozen=True)
class ShiftConfig:
    """How the supernet is shifted during the search.

    ``accumulate="sum"`` adds the candidates' gradients as the paper describes, so one
    per-generation step moves the weights about as far as the per-candidate steps of
    ``update="candidate"`` together; ``"mean"`` divides by the number of candidates instead.
    """

    batches_per_candidate: int = 2
    batch_size: int = 128
    lr: float = 0.002
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    update: Literal["generation", "candidate"] = "generation"
    accumulate: Literal["sum", "mean"] = "sum"
    freeze_backbone: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.batches_per_candidate >= 1, "batches_per_candidate must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be positive"),
            (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (self.update in ("generation", "candidate"),
             f"update must be generation or candidate, not {self.update!r}"),
            (self.accumulate in ("sum", "mean"), f"accumulate must be sum or mean, not {self.accumulate!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"shift config: {message}")


def scaled_shift(train_images: int, train_lr: float, train_batch_size: int, candidates: int,
                 fraction: float = RELEASED_SHIFT["fraction_of_training"]) -> dict[str, Any]:
    """The released code's shifting budget scaled to this supernet and this search.

    Over one search the released code shifts on about 2% of the images the supernet was trained on
    (1,000 candidates x 20 steps x 150 images vs 120k x 1024); the same ``fraction`` of this
    supernet's training images is spread over the search's ``candidates`` (at least one batch of 32 each,
    since batch norm trains on batch statistics). The learning rate keeps the released ratio of
    per-image learning rates to the supernet's peak (1e-4/150 vs 0.5/1024, i.e. 1/732 at equal batch
    size): a gentle continuation of training at the end of its schedule, not a second training.
    """
    if train_images <= 0 or candidates <= 0 or train_lr <= 0 or train_batch_size <= 0:
        raise ConfigError("scaled_shift needs positive training images, lr, batch size and candidates")
    per_candidate = fraction * train_images / candidates
    batch_size = int(min(train_batch_size, max(32, round(per_candidate))))
    batches = max(1, round(per_candidate / batch_size))
    r = RELEASED_SHIFT
    per_image_ratio = (r["lr"] / r["batch_size"]) / (r["train_lr"] / r["train_batch_size"])
    lr = train_lr / train_batch_size * batch_size * per_image_ratio
    return {"batches_per_candidate": batches, "batch_size": batch_size, "lr": float(f"{lr:.3g}"),
            "images_per_candidate": batches * batch_size, "fraction": batches * batch_size * candidates / train_images}


def shift_budget_for(meta: Mapping[str, Any], candidates: int) -> dict[str, Any]:
    """:func:`scaled_shift`'s ``ShiftConfig`` fields for the supernet a checkpoint's metadata describes
    (its training images from the history, its lr and batch size); empty when the metadata does not say."""
    train = meta.get("train") or {}
    images = sum(int(h.get("images", 0)) for h in meta.get("history") or [] if isinstance(h, dict))
    try:
        budget = scaled_shift(images, float(train["lr"]), int(train["batch_size"]), candidates)
    except (KeyError, TypeError, ValueError, EdgenasError):
        return {}
    return {k: budget[k] for k in ("batches_per_candidate", "batch_size", "lr")}


def batch_seed(seed: int, generation: int, index: int) -> int:
    """The seed of one candidate's training batches: a pure function of where it is in the search."""
    return int(np.random.SeedSequence([seed, generation, index]).generate_state(1, np.uint64)[0] >> 1)


class SupernetShifting(SearchHook):
    """The shifting hook; ``steps_taken`` counts optimiser steps, ``candidates_trained`` candidates."""

    state_key: ClassVar[str] = "supernet_shifting"

    def __init__(self, supernet: Supernet, data: DatasetSplits, config: ShiftConfig | None = None, *,
                 seed: int = 0, device: torch.device | None = None, channels_last: bool = True) -> None:
        self.config = cfg = config or ShiftConfig()
        if data.num_classes != supernet.num_classes or data.in_channels != supernet.in_channels:
            raise EdgenasError(
                f"the supernet takes {supernet.in_channels}-channel input and {supernet.num_classes} classes, "
                f"dataset {data.name} has {data.in_channels} and {data.num_classes}; transfer it first"
            )
        available = len(data.train) // cfg.batch_size  # type: ignore[arg-type]
        if available < cfg.batches_per_candidate:
            raise ConfigError(
                f"shift config: {cfg.batches_per_candidate} batches of {cfg.batch_size} per candidate need "
                f"{cfg.batches_per_candidate * cfg.batch_size} training images; {data.name} has {len(data.train)}"  # type: ignore[arg-type]
            )
        self.supernet = supernet
        self.data = data
        self.seed = seed
        self.device = device or next(supernet.parameters()).device
        self.channels_last = channels_last
        trainable: nn.Module = supernet.head.classifier if cfg.freeze_backbone else supernet
        self._trainable = [p for p in trainable.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(param_groups(trainable, cfg.weight_decay), lr=cfg.lr,
                                         momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.steps_taken = 0
        self.candidates_trained = 0
        self.batches_trained = 0
        self._pending = 0
        supernet.zero_grad(set_to_none=True)

    # ----- hook ------------------------------------------------------------------------------------------
    def on_candidate(self, candidate: Candidate) -> None:
        self.train_candidate(candidate.arch, candidate.generation, candidate.index)
        if self.config.update == "candidate":
            self.step()

    def on_generation_end(self, record: GenerationRecord) -> None:
        if self.config.update == "generation":
            self.step()

    def state_dict(self) -> dict[str, Any]:
        return {"config": to_mapping(self.config), "optimizer": self.optimizer.state_dict(),
                "steps_taken": self.steps_taken, "candidates_trained": self.candidates_trained,
                "batches_trained": self.batches_trained}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved, now = dict(state["config"]), to_mapping(self.config)
        changed = sorted(k for k in now if saved.get(k) != now[k])
        if changed:
            raise CheckpointError(f"the saved search shifted with other settings ({', '.join(changed)}); "
                                  "resume needs the same ones")
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps_taken = int(state["steps_taken"])
        self.candidates_trained = int(state["candidates_trained"])
        self.batches_trained = int(state["batches_trained"])
        self._pending = 0

    # ----- work --------------------------------------------------------------------------------------------
    def train_candidate(self, arch: Arch, generation: int, index: int) -> float:
        """Back-propagate ``arch``'s mean training loss over its batches; no step. Returns the loss."""
        cfg, supernet = self.config, self.supernet
        seed = batch_seed(self.seed, generation, index)
        batches = iterate_batches(self.data.train, cfg.batch_size, shuffle=True,
                                  generator=torch.Generator().manual_seed(seed), drop_last=True)
        devices = [self.device] if self.device.type == "cuda" else []
        was_training = supernet.training
        total = 0.0
        with torch.random.fork_rng(devices=devices), self._frozen_backbone(arch):
            torch.manual_seed(seed)
            supernet.train()
            try:
                for step, (x, y) in enumerate(batches):
                    if step >= cfg.batches_per_candidate:
                        break
                    logits = supernet(to_device(x, self.device, self.channels_last), arch)
                    loss = self.criterion(logits.float(), y.to(self.device)) / cfg.batches_per_candidate
                    loss.backward()
                    total += float(loss.detach())
                    self.batches_trained += 1
            finally:
                supernet.train(was_training)
        self.candidates_trained += 1
        self._pending += 1
        return total

    def step(self) -> bool:
        """Apply the accumulated gradients (if any candidate was trained since the last step)."""
        if self._pending == 0:
            return False
        if self.config.accumulate == "mean" and self._pending > 1:
            for p in self._trainable:
                if p.grad is not None:
                    p.grad.div_(self._pending)
        self.optimizer.step()
        self.supernet.zero_grad(set_to_none=True)
        self.steps_taken += 1
        self._pending = 0
        return True

    @contextlib.contextmanager
    def _frozen_backbone(self, arch: Arch) -> Iterator[None]:
        """With ``freeze_backbone``: no gradients into the backbone and its BN buffers put back."""
        if not self.config.freeze_backbone:
            yield
            return
        classifier = {id(p) for p in self.supernet.head.classifier.parameters()}
        frozen = [p for p in self.supernet.parameters() if id(p) not in classifier and p.requires_grad]
        bns = [m for mod in path_modules(self.supernet, arch) for m in mod.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [{k: v.clone() for k, v in bn.named_buffers(recurse=False)} for bn in bns]
        for p in frozen:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in frozen:
                p.requires_grad_(True)
            with torch.no_grad():
                for bn, buffers in zip(bns, saved):
                    for name, value in buffers.items():
                        getattr(bn, name).copy_(value)
