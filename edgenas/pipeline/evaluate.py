"""Scoring a trained supernet: architectures' accuracy with inherited weights, and the rank check.

The rank check is the one question to ask of a supernet before trusting its search: architectures
spread over the space's MAC range are trained alone with a short recipe, and the rank correlation
between their inherited (validation) and stand-alone (test) accuracy is reported with bootstrap
intervals (:func:`edgenas.proxy.rank_check`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgenas.errors import EdgenasError
from edgenas.pipeline.progress import Progress, silent

__all__ = ["EvalJob", "EvalOutcome", "RankCheckJob", "evaluate", "rank_check"]


@dataclass(frozen=True)
class EvalJob:
    """Score ``archs`` (architecture strings) plus ``sample`` uniformly drawn ones on ``split``."""

    supernet: str
    archs: tuple[str, ...] = ()
    sample: int = 0
    seed: int = 0
    split: Literal["val", "test"] = "test"
    data: str | None = None
    data_root: str | None = None
    recal: int = 10
    threads: int | None = None
    device: str = "auto"


@dataclass
class EvalOutcome:
    scores: list[Any] = field(default_factory=list)  # edgenas.evaluate.ArchScore
    num_classes: int = 0


@dataclass(frozen=True)
class RankCheckJob:
    """``count`` architectures spread over the MAC range, trained alone for ``epochs`` on ``train_limit``
    images (default: the supernet's training slice), cached under ``out`` (default: beside the supernet)."""

    supernet: str
    count: int
    epochs: int = 3
    train_limit: int | None = None
    out: str | None = None
    seed: int = 0
    data: str | None = None
    data_root: str | None = None
    recal: int = 10
    threads: int | None = None
    device: str = "auto"


def _load(ckpt: str, data: str | None, data_root: str | None) -> tuple[Any, dict[str, Any], Any]:
    from edgenas.data import load_dataset
    from edgenas.pipeline.search import checkpoint_data_config
    from edgenas.supernet import load_checkpoint

    supernet, meta, _ = load_checkpoint(ckpt)
    return supernet, meta, load_dataset(checkpoint_data_config(meta, ckpt, data, data_root))


def evaluate(job: EvalJob) -> EvalOutcome:
    """BN-recalibrated accuracy of each architecture with the supernet's weights."""
    import numpy as np

    from edgenas.evaluate import score_archs
    from edgenas.torch_utils import resolve_device, torch_threads

    if not job.archs and job.sample <= 0:
        raise EdgenasError("nothing to score: give --arch STR, --sample N or --rank-check N")
    with torch_threads(job.threads):
        supernet, _, splits = _load(job.supernet, job.data, job.data_root)
        space = supernet.space
        archs = [space.parse(s) for s in job.archs]
        rng = np.random.default_rng(job.seed)
        archs += [space.sample(rng) for _ in range(job.sample)]
        scores = score_archs(supernet, archs, splits, split=job.split, recal=job.recal,
                             device=resolve_device(job.device))
    return EvalOutcome(scores=list(scores), num_classes=splits.num_classes)


def rank_check(job: RankCheckJob, progress: Progress | None = None) -> Any:
    """Train the spread architectures alone (cached, resumable) and correlate; an
    :class:`edgenas.proxy.RankCheck`."""
    from edgenas.config import to_mapping
    from edgenas.finetune import FinetuneConfig, finetune
    from edgenas.proxy import rank_check as correlate
    from edgenas.proxy import spread_archs
    from edgenas.torch_utils import resolve_device, torch_threads

    if job.count < 3:
        raise EdgenasError(f"--rank-check needs at least 3 architectures, not {job.count}")
    report = silent(progress)
    device = resolve_device(job.device)
    with torch_threads(job.threads):
        supernet, meta, splits = _load(job.supernet, job.data, job.data_root)
        limit = job.train_limit if job.train_limit is not None else (meta.get("data") or {}).get("train_limit")
        config = FinetuneConfig(epochs=job.epochs, from_scratch=True, patience=job.epochs, lr=0.1, train_limit=limit,
                                seed=job.seed, threads=job.threads)
        recipe = {**{k: v for k, v in to_mapping(config).items() if k != "threads"}, "data": splits.name}
        archs = spread_archs(supernet.space, job.count, tuple(splits.input_size), job.seed)

        def train_alone(arch: Any, where: Path) -> float:
            subnet = supernet.space.build_subnet(arch, splits.num_classes, splits.in_channels)
            return finetune(subnet, splits, config, where, device=device,
                            resume=(where / "last.pt").exists()).test_accuracy

        where = Path(job.out) if job.out else Path(job.supernet).resolve().parent / "rank_check"
        report.message(f"rank check: {len(archs)} architectures trained alone ({job.epochs} epochs, "
                       f"{limit or 'all'} training images), cached in {where}")
        return correlate(supernet, splits, archs, where, train=train_alone, recipe=recipe, recal=job.recal,
                         device=device, on_arch=report.rank_arch)
