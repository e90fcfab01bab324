"""Stage 5: fine-tune an extracted subnet (or train it from scratch) with one recipe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgenas.errors import ConfigError
from edgenas.finetune import FinetuneConfig
from edgenas.pipeline.progress import Progress, silent

__all__ = ["FinetuneJob", "FinetuneOutcome", "finetune"]


@dataclass(frozen=True)
class FinetuneJob:
    """``subnet``: an ``edgenas extract`` checkpoint; its recorded dataset is used (full training split
    unless ``config.train_limit``), found under ``data_root`` when given."""

    subnet: str
    out: str
    config: FinetuneConfig = field(default_factory=FinetuneConfig)
    data_root: str | None = None
    device: str = "auto"
    resume: bool = False


@dataclass
class FinetuneOutcome:
    result: Any  # edgenas.finetune.FinetuneResult; .report is finetune.json
    arch: Any  # edgenas.space.Arch
    data: str


def finetune(job: FinetuneJob, progress: Progress | None = None) -> FinetuneOutcome:
    """Train, keep the best epoch by validation accuracy, test it."""
    from edgenas.config import from_mapping
    from edgenas.data import DataConfig, load_dataset
    from edgenas.extract import load_subnet
    from edgenas.finetune import finetune as run_finetune
    from edgenas.io import check_writable
    from edgenas.torch_utils import resolve_device

    subnet, meta, _ = load_subnet(job.subnet)
    check_writable(job.out, "--out", directory=True)
    saved = (meta.get("data") or {}).get("config")
    if not isinstance(saved, dict):
        raise ConfigError(f"{job.subnet} records no data config; extract it again with `edgenas extract`")
    root = {"root": job.data_root} if job.data_root is not None else {}
    data = load_dataset(from_mapping(DataConfig, {**saved, "train_limit": None, **root}, where=f"{job.subnet}: data"))
    result = run_finetune(subnet, data, job.config, job.out, resume=job.resume, device=resolve_device(job.device),
                          on_epoch=silent(progress).finetune_epoch, meta=meta)
    return FinetuneOutcome(result=result, arch=subnet.arch, data=data.name)
