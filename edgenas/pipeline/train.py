"""Stage 1: train a supernet from a typed job (dataset, space, recipe, run directory)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgenas.data import DataConfig
from edgenas.errors import ConfigError, EdgenasError
from edgenas.pipeline.progress import Progress, silent
from edgenas.train import TrainConfig

__all__ = ["TrainJob", "TrainOutcome", "train"]


@dataclass(frozen=True)
class TrainJob:
    """What ``edgenas train`` does, as a value: the YAML of ``train --config`` has the same sections.

    ``space_options`` are the space's config fields (``width_mult``, ...); ``preset`` defaults by the
    input size (small below 112 px, imagenet from there).
    """

    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    space: str = "mbv3"
    preset: str | None = None
    space_options: dict[str, Any] = field(default_factory=dict)
    out: str = "runs/train"
    resume: bool = False

    @classmethod
    def from_sections(cls, sections: dict[str, Any], where: str = "config",
                      overrides: dict[str, dict[str, Any]] | None = None, **fields: Any) -> TrainJob:
        """A job from a mapping with ``space``, ``data`` and ``train`` sections (a ``--config`` file).
        ``overrides`` (per section; ``None`` values ignored) win over the file, as command-line options
        do; ``fields`` (``out``, ``resume``) are set directly."""
        from edgenas.config import from_mapping

        unknown = sorted(set(sections) - {"space", "data", "train"})
        if unknown:
            raise ConfigError(f"{where}: unknown section '{unknown[0]}' (known: space, data, train)")
        merged = {}
        for key in ("space", "data", "train"):
            section = sections.get(key) or {}
            if not isinstance(section, dict):
                raise ConfigError(f"{where}: '{key}' must be a mapping")
            given = (overrides or {}).get(key) or {}
            merged[key] = {**section, **{k: v for k, v in given.items() if v is not None}}
        space_section = merged["space"]
        name = space_section.pop("name", "mbv3")
        preset = space_section.pop("preset", None)
        return cls(data=from_mapping(DataConfig, merged["data"], where=f"{where}: data"),
                   train=from_mapping(TrainConfig, merged["train"], where=f"{where}: train"),
                   space=str(name), preset=preset, space_options=space_section, **fields)


@dataclass
class TrainOutcome:
    checkpoint: Path
    space: str
    preset: str
    data: str
    history: list[Any]

    def to_json(self) -> dict[str, Any]:
        return {"checkpoint": str(self.checkpoint), "space": self.space, "preset": self.preset, "data": self.data,
                "epochs": [dataclasses.asdict(h) for h in self.history]}


def train(job: TrainJob, progress: Progress | None = None) -> TrainOutcome:
    """Train (or, with ``job.resume``, continue) a supernet; ``config.json`` records the job beside it."""
    from edgenas.config import to_mapping
    from edgenas.data import load_dataset
    from edgenas.io import atomic_write_json, check_writable
    from edgenas.space import create_space, default_preset, space_to_dict
    from edgenas.train import train_supernet

    report = silent(progress)
    check_writable(job.out, "--out", directory=True)  # before the data is loaded, let alone trained on
    splits = load_dataset(job.data)
    preset = job.preset or default_preset(splits.input_size)
    space = create_space(job.space, preset, **job.space_options)
    out = Path(job.out)
    if not job.resume:
        if (out / "supernet.pt").exists():
            raise EdgenasError(f"{out / 'supernet.pt'} exists; pass --resume to continue it or choose another --out")
        atomic_write_json(out / "config.json", {"space": {**space_to_dict(space), "preset": preset},
                                                "data": to_mapping(job.data), "train": to_mapping(job.train)})
    result = train_supernet(space, splits, job.train, out, data_config=job.data, resume=job.resume,
                            on_step=report.train_step, on_epoch=report.train_epoch)
    return TrainOutcome(checkpoint=Path(result.checkpoint), space=space.name, preset=preset, data=splits.name,
                        history=list(result.history))
