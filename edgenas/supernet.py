"""Weight-sharing supernet: single-path forward, honest BN statistics, inherited weights, checkpoints.

Weights. ``separate``: every choice block owns its weights and batch norms (the SPOS code);
``shared``: each layer holds one block at the largest kernel and expansion that every choice slices
(:mod:`edgenas.space.elastic`), batch norms included. Either way, running statistics gathered
during supernet training still mix many paths (the input to layer i depends on the choices before
it), so they are *not* trusted for
evaluation: before a subnet is scored its path's BN statistics are recalibrated on training batches
(SPOS's recalibration), inside a context manager that restores the supernet's buffers afterwards,
so evaluation never changes the supernet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgenas.errors import CheckpointError, ConfigError
from edgenas.io import atomic_torch_save, atomic_write_json, meta_int, read_model_checkpoint
from edgenas.space import Arch, SearchSpace, Subnet, space_from_dict, space_to_dict
from edgenas.space.elastic import slice_like

__all__ = [
    "CHECKPOINT_FORMAT",
    "WEIGHT_LAYOUTS",
    "Supernet",
    "evaluate",
    "inherit_subnet",
    "load_checkpoint",
    "path_modules",
    "recalibrate_bn",
    "recalibrated",
    "save_checkpoint",
    "subnet_state_dict",
]

CHECKPOINT_FORMAT = "edgenas-supernet/1"


WEIGHT_LAYOUTS = ("separate", "shared")


class Supernet(nn.Module):
    """All choices of all layers; ``forward(x, arch)`` runs exactly one path.

    ``weights="separate"``: every (layer, choice) owns its block (SPOS, the paper's setting).
    ``weights="shared"``: one weight set per layer that every choice slices (Once-for-All/BigNAS),
    so each weight is trained by every path through it; only spaces with ``supports_shared``.
    ``None`` takes the space's default (shared where it is supported).
    """

    def __init__(self, space: SearchSpace, num_classes: int, in_channels: int, weights: str | None = None) -> None:
        super().__init__()
        weights = weights or space.default_weights
        if weights not in WEIGHT_LAYOUTS:
            raise ConfigError(f"unknown supernet weights {weights!r}; known: {', '.join(WEIGHT_LAYOUTS)}")
        self.space = space
        self.weights = weights
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.stem = space.build_stem(in_channels)
        if weights == "shared":
            self.layers = nn.ModuleList(space.build_shared_layer(spec.index) for spec in space.layers)
        else:
            self.layers = nn.ModuleList(
                nn.ModuleList(space.build_choice(spec.index, c) for c in range(len(spec.choices)))
                for spec in space.layers
            )
        self.head = space.build_head(num_classes)

    @property
    def shared(self) -> bool:
        return self.weights == "shared"

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        x = self.stem(x)
        for layer, choice in zip(self.layers, arch.choices, strict=True):
            x = layer(x, choice) if self.shared else layer[choice](x)
        return self.head(x)

    def replace_classifier(self, num_classes: int) -> None:
        """Fresh classifier for a new label set (transfer); everything else keeps its weights."""
        old = self.head.classifier
        self.head.classifier = nn.Linear(old.in_features, num_classes).to(old.weight.device)
        self.num_classes = num_classes


def path_modules(supernet: Supernet, arch: Arch) -> list[nn.Module]:
    """The modules one architecture uses: stem, its chosen blocks (a shared layer whole), head."""
    if supernet.shared:
        blocks = [layer for layer, c in zip(supernet.layers, arch.choices) if not layer.is_skip(c)]
    else:
        blocks = [layer[c] for layer, c in zip(supernet.layers, arch.choices)]
    return [supernet.stem, *blocks, supernet.head]


def _source_key(supernet: Supernet, key: str, arch: Arch) -> str:
    """The supernet tensor a subnet tensor comes from (``layers.3.x`` -> ``layers.3.<choice>.x`` or
    ``layers.3.block.x``)."""
    if not key.startswith("layers."):
        return key
    _, layer, rest = key.split(".", 2)
    return f"layers.{layer}.block.{rest}" if supernet.shared else f"layers.{layer}.{arch.choices[int(layer)]}.{rest}"


def subnet_state_dict(supernet: Supernet, arch: Arch, like: dict[str, torch.Tensor] | None = None
                      ) -> dict[str, torch.Tensor]:
    """The chosen path's tensors under a :class:`Subnet`'s names, each cut to the subnet's shape
    (with shared weights a choice's slice; with separate weights the whole tensor). ``like`` is the
    target subnet's state dict when the caller has built it already."""
    if like is None:
        like = supernet.space.build_subnet(arch, supernet.num_classes, supernet.in_channels).state_dict()
    source = supernet.state_dict()
    return {key: slice_like(source[_source_key(supernet, key, arch)], value.shape) for key, value in like.items()}


def inherit_subnet(supernet: Supernet, arch: Arch) -> Subnet:
    """A standalone subnet carrying the supernet's weights (and BN buffers) for ``arch``."""
    supernet.space.validate(arch)
    subnet = supernet.space.build_subnet(arch, supernet.num_classes, supernet.in_channels)
    subnet.load_state_dict(subnet_state_dict(supernet, arch, subnet.state_dict()), strict=True)
    return subnet


def _bn_layers(modules: Iterable[nn.Module]) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for mod in modules for m in mod.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_bn(
    forward: Any, modules: Iterable[nn.Module], batches: Iterable[torch.Tensor], *, model: nn.Module
) -> int:
    """Replace the BN running statistics of ``modules`` by exact averages over ``batches``.

    ``forward(x)`` runs the path in train mode (so BN uses batch statistics and updates its
    running averages with ``momentum=None``, a cumulative mean). Returns the number of batches.
    """
    bns = _bn_layers(modules)
    momenta = [bn.momentum for bn in bns]
    was_training = model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    count = 0
    try:
        for x in batches:
            forward(x)
            count += 1
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.train(was_training)
    return count


@contextlib.contextmanager
def recalibrated(supernet: Supernet, arch: Arch, batches: Iterable[torch.Tensor]) -> Iterator[Supernet]:
    """Within the block the path of ``arch`` has freshly recalibrated BN statistics; on exit the
    supernet's buffers are exactly as before, so scoring a candidate leaves no trace."""
    bns = _bn_layers(path_modules(supernet, arch))
    saved = [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in bns]
    try:
        recalibrate_bn(lambda x: supernet(x, arch), path_modules(supernet, arch), batches, model=supernet)
        yield supernet
    finally:
        for bn, (mean, var, n) in zip(bns, saved):
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.num_batches_tracked.copy_(n)


@torch.no_grad()
def evaluate(forward: Any, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], model: nn.Module) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy of ``forward`` over ``batches``, in eval mode."""
    was_training = model.training
    model.eval()
    correct, total, loss = 0, 0, 0.0
    try:
        for x, y in batches:
            logits = forward(x).float()
            loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
    finally:
        model.train(was_training)
    if total == 0:
        return {"accuracy": float("nan"), "loss": float("nan"), "count": 0}
    return {"accuracy": correct / total, "loss": loss / total, "count": total}


def save_checkpoint(path: str | Path, supernet: Supernet, meta: dict[str, Any],
                    train_state: dict[str, Any] | None = None) -> Path:
    """Write ``path`` (weights, optional optimiser/scheduler state, metadata) atomically plus a
    readable JSON sidecar ``path.with_suffix('.json')``. The metadata embedded in the weights file
    is the authoritative copy; the sidecar is for people and tools."""
    path = Path(path)
    full_meta = {"format": CHECKPOINT_FORMAT, "space": space_to_dict(supernet.space),
                 "num_classes": supernet.num_classes, "in_channels": supernet.in_channels,
                 "weights": supernet.weights, **meta}
    blob: dict[str, Any] = {"model": supernet.state_dict(), "meta": full_meta}
    if train_state is not None:
        blob["train_state"] = train_state
    atomic_torch_save(path, blob)
    atomic_write_json(path.with_suffix(".json"), full_meta)
    return path


def load_checkpoint(
    path: str | Path, space: SearchSpace | None = None
) -> tuple[Supernet, dict[str, Any], dict[str, Any] | None]:
    """Load a supernet checkpoint; a corrupt file, a foreign file or a space mismatch is a
    :class:`CheckpointError` with one line saying which."""
    path = Path(path)
    state, meta, train_state = read_model_checkpoint(path, "supernet checkpoint")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    try:
        saved_space = space_from_dict(meta["space"])
    except Exception as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if space is not None and space.config_hash() != saved_space.config_hash():
        raise CheckpointError(
            f"{path} was trained for space {saved_space.name} (config {saved_space.config_hash()}), "
            f"not {space.name} (config {space.config_hash()})"
        )
    weights = meta.get("weights", "separate")  # files from before shared weights existed are separate
    if weights not in WEIGHT_LAYOUTS or (weights == "shared" and not saved_space.supports_shared):
        raise CheckpointError(f"{path}: unknown supernet weight layout {weights!r} for space {saved_space.name}")
    supernet = Supernet(saved_space, meta_int(meta, "num_classes", path), meta_int(meta, "in_channels", path), weights)
    try:
        missing, unexpected = supernet.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not match its space: {str(exc).splitlines()[-1].strip()[:160]}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match its space: {len(missing)} missing and {len(unexpected)} unexpected tensors"
            + (f" (e.g. {(missing or unexpected)[0]})" if missing or unexpected else "")
        )
    return supernet, meta, train_state
