"""A hand-designed network trained with the fine-tuning recipe, scaled to the latency budget: the
comparison a user needs to know whether the search was worth it on their data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgenas.errors import ConfigError
from edgenas.finetune import FinetuneConfig
from edgenas.pipeline.progress import Progress, silent

__all__ = ["BaselineJob", "BaselineOutcome", "baseline"]


@dataclass(frozen=True)
class BaselineJob:
    """``family``: a name in :data:`edgenas.baselines.BASELINES`. Without ``width``, every published width
    is measured on ``profile`` and the widest within ``latency_ms`` (default: the profile's budget) is trained."""

    family: str
    out: str
    config: FinetuneConfig = field(default_factory=FinetuneConfig)
    data: str = "fashion-mnist"
    data_root: str | None = None
    val_limit: int | None = None
    profile: str = "cpu-ort"
    latency_ms: float | None = None
    width: float | None = None
    device: str = "auto"
    resume: bool = False


@dataclass
class BaselineOutcome:
    result: Any  # edgenas.finetune.FinetuneResult
    choice: dict[str, Any]  # the width chosen, its measured latency and the widths tried
    data: str


def baseline(job: BaselineJob, progress: Progress | None = None) -> BaselineOutcome:
    from edgenas.baselines import get_family, profile_measure, train_baseline
    from edgenas.data import DataConfig, load_dataset
    from edgenas.extract import data_facts
    from edgenas.hardware.profile import load_profile
    from edgenas.io import check_writable
    from edgenas.torch_utils import resolve_device

    report = silent(progress)
    get_family(job.family)  # an unknown name fails before the data is loaded
    check_writable(job.out, "--out", directory=True)
    data_cfg = DataConfig(name=job.data, val_limit=job.val_limit,
                          **({"root": job.data_root} if job.data_root is not None else {}))
    data = load_dataset(data_cfg)
    budget = None
    measure = None
    if job.width is None and not job.resume:
        prof = load_profile(job.profile, input_shape=(data.in_channels, *data.input_size))
        budget = job.latency_ms if job.latency_ms is not None else prof.budgets.latency_ms
        if budget is None:
            raise ConfigError(f"profile {prof.name} has no latency budget: give --latency-ms or --width")
        timed = profile_measure(prof)

        def measure(models: list[Any]) -> list[float]:
            report.message(f"measuring {len(models)} widths of {job.family} on {prof.name} ...")
            return timed(models)

    run = train_baseline(job.family, data, job.config, job.out, width=job.width, budget_ms=budget, measure=measure,
                         resume=job.resume, device=resolve_device(job.device), on_epoch=report.finetune_epoch,
                         meta={"data": data_facts(data, data_cfg)})
    return BaselineOutcome(result=run.result, choice=run.choice, data=data.name)
