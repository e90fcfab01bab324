"""Zero-cost proxies: score an architecture at initialisation, from one batch, with no training.

They answer "which of these untrained networks will train best?" in milliseconds, which is what a
search needs when the supernet is not trained yet (or not trusted), and what seeds a first
population (a *warm start*). Two are built in, each our own implementation of the published idea:

- ``naswot`` (Mellor et al., ICML 2021, "Neural Architecture Search without Training"): push one
  batch through the network; for every activation, each image gets a binary code (which units are
  on); the kernel ``K[i, j]`` counts the units on which images ``i`` and ``j`` agree, summed over
  layers; the score is ``log det K``. A network whose units carve the inputs into many different
  regions separates the images, and such networks train to higher accuracy. For hard-swish, "on"
  means a positive input, as for ReLU. Batch norm uses the batch's statistics (the network is fresh).
- ``synflow`` (Tanaka et al., NeurIPS 2020; used as a NAS proxy by Abdelfattah et al., ICLR 2021):
  take the absolute value of every weight, feed an all-ones input in float64, and sum
  ``|theta * dR/dtheta|`` over the parameters, ``R`` the sum of the outputs. It measures how much
  signal can flow through the network, data-free. Reported as log10 (the raw value spans hundreds
  of orders of magnitude); batch norm is in eval mode (its initial affine map), so one input suffices.

The literature (Abdelfattah et al.; White et al., 2022) finds the plain parameter count hard to
beat; ``params`` stays registered beside these for exactly that comparison. Every proxy here is
deterministic: the same seed builds the same initial weights and picks the same images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from edgenas.data import DatasetSplits
from edgenas.errors import ConfigError
from edgenas.space import Arch
from edgenas.torch_utils import seeded

__all__ = ["PROXIES", "ZeroCostScorer", "naswot_score", "synflow_score"]

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.GELU, nn.SiLU, nn.LeakyReLU)


def naswot_score(model: nn.Module, images: torch.Tensor) -> float:
    """``log det K`` of the activation-pattern kernel of ``images`` (N x C x H x W), N >= 2.

    ``K = sum over activations of (C C^T + (1 - C)(1 - C)^T)``, ``C`` the N x units binary codes;
    ``1e-3 * I`` is added so two images with identical codes give a finite score.
    """
    if images.shape[0] < 2:
        raise ConfigError(f"naswot needs a batch of at least 2 images, not {images.shape[0]}")
    n = images.shape[0]
    kernel = torch.zeros(n, n, dtype=torch.float64)

    def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        codes = (inputs[0].detach().reshape(n, -1) > 0).to(torch.float64)
        kernel.add_(codes @ codes.T).add_((1 - codes) @ (1 - codes).T)

    handles = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, _ACTIVATIONS)]
    try:
        model.train()  # batch statistics: a fresh network's running statistics say nothing
        for m in model.modules():
            if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)):
                m.eval()  # but no dropout: the same units for the same image
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
    sign, logdet = torch.linalg.slogdet(kernel + 1e-3 * torch.eye(n, dtype=torch.float64))
    return float(logdet) if float(sign) > 0 else float("-inf")


def synflow_score(model: nn.Module, input_shape: tuple[int, int, int]) -> float:
    """log10 of ``sum |theta * dR/dtheta|`` with all weights made positive and an all-ones input.
    ``model`` is changed (weights made absolute, float64): pass a throwaway copy."""
    model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    model.zero_grad(set_to_none=True)
    out = model(torch.ones(1, *input_shape, dtype=torch.float64))
    out.sum().backward()
    total = sum(float((p.detach() * p.grad).abs().sum()) for p in model.parameters() if p.grad is not None)
    return math.log10(total) if total > 0 and math.isfinite(total) else -300.0


class ZeroCostScorer:
    """``scorer(arch) -> (proxy score, {name: score})``: the architecture built at initialisation
    (weights from ``seed``), scored on one fixed batch of ``batch_size`` training images."""

    deterministic = True

    def __init__(self, supernet: Any, data: DatasetSplits, proxy: str, *, seed: int = 0, batch_size: int = 64,
                 device: torch.device | None = None) -> None:
        if proxy not in PROXIES:
            raise ConfigError(f"unknown zero-cost proxy '{proxy}' (known: {', '.join(PROXIES)})")
        if batch_size < 2:
            raise ConfigError(f"zero-cost batch size must be >= 2, not {batch_size}")
        self.space = supernet.space
        self.num_classes, self.in_channels = int(supernet.num_classes), int(supernet.in_channels)
        self.proxy, self.seed = proxy, seed
        self.device = device or torch.device("cpu")
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(data.train), generator=gen)[:batch_size].tolist()
        with seeded(seed):  # training transforms may draw random numbers: the same batch every time
            self.images = torch.stack([data.train[i][0] for i in order]).to(self.device)  # type: ignore[arg-type]
        self.input_shape = tuple(self.images.shape[1:])
        self.evaluations = 0

    def __call__(self, arch: Arch) -> tuple[float, dict[str, float]]:
        with seeded(self.seed, self.device):  # the same initial weights for the same architecture
            model = self.space.build_subnet(arch, self.num_classes, self.in_channels).to(self.device)
            if self.proxy == "naswot":
                score = naswot_score(model, self.images)
            else:
                score = synflow_score(model, self.input_shape)  # type: ignore[arg-type]
        self.evaluations += 1
        return score, {self.proxy: score}


#: proxy name -> what it is, for `--scorer` help and docs
PROXIES: dict[str, str] = {
    "naswot": "log det of the activation-pattern kernel of one batch at initialisation (Mellor et al. 2021)",
    "synflow": "log10 synaptic flow of the absolute-valued network on an all-ones input (Tanaka et al. 2020)",
}


def factory(proxy: str) -> Callable[..., ZeroCostScorer]:
    """A :data:`~edgenas.search.scoring.SCORERS` factory for ``proxy``."""

    def make(supernet: Any, data: DatasetSplits, config: Any = None, *, seed: int = 0,
             device: torch.device | None = None, **_: Any) -> ZeroCostScorer:
        return ZeroCostScorer(supernet, data, proxy, seed=seed, device=device)

    return make
