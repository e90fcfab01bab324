"""Stage 2: the latency table of a space on a profile's target, found on disk or measured."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgenas.errors import ConfigError, EdgenasError
from edgenas.hardware.profile import Profile
from edgenas.pipeline.progress import Progress, silent
from edgenas.space import SearchSpace

__all__ = ["TableJob", "TableOutcome", "ValidateJob", "build_table", "default_table_path", "find_table",
           "validate_table", "with_protocol"]


@dataclass(frozen=True)
class TableJob:
    """``edgenas profile build`` as a value. ``input_shape`` defaults to the profile's; ``method`` to
    the profile's default (network for int8, context otherwise); ``out`` to :func:`default_table_path`."""

    profile: str
    space: str = "mbv3"
    preset: str | None = None
    width_mult: float | None = None
    input_shape: tuple[int, int, int] | None = None
    num_classes: int = 10
    calib: int = 30
    seed: int = 0
    method: str | None = None
    out: str | None = None
    force: bool = False
    warmup: int | None = None
    repeats: int | None = None
    trials: int | None = None
    reference: bool = True


@dataclass
class TableOutcome:
    path: Path
    table: Any  # edgenas.hardware.table.LatencyTable
    layers: int


def with_protocol(profile: Profile, warmup: int | None = None, repeats: int | None = None,
                  trials: int | None = None) -> Profile:
    """The profile with its measurement protocol overridden; not part of the latency hash, so a table
    measured more carefully is still a table for the same target."""
    given = {k: v for k, v in (("warmup", warmup), ("repeats", repeats), ("trials", trials)) if v is not None}
    return dataclasses.replace(profile, measure=dataclasses.replace(profile.measure, **given)) if given else profile


def default_table_path(profile: Profile, space: SearchSpace, preset: str, tables_dir: str | Path = "latency_tables",
                       width_mult: float | None = None) -> Path:
    _, h, w = profile.input_shape
    width = f"_w{width_mult:g}" if width_mult is not None and width_mult != 1.0 else ""
    return Path(tables_dir) / f"{profile.name}_{space.name}_{preset}{width}_{h}x{w}.json"


def find_table(space: SearchSpace, profile: Profile, tables_dir: str | Path) -> Path:
    """The table in ``tables_dir`` built for exactly this space config and profile (hashes match)."""
    tables_dir = Path(tables_dir)
    want_space, want_profile = space.config_hash(), profile.latency_hash()
    for path in sorted(tables_dir.glob("*.json")) if tables_dir.is_dir() else []:
        try:
            head = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (isinstance(head, dict) and (head.get("space") or {}).get("hash") == want_space
                and (head.get("profile") or {}).get("latency_hash") == want_profile):
            return path
    c, h, w = profile.input_shape
    width = getattr(space.config, "width_mult", 1.0)
    raise EdgenasError(
        f"no latency table in {tables_dir}/ for profile {profile.name} at {c}x{h}x{w} and this supernet's "
        f"{space.name} space; build it: edgenas profile build --profile {profile.name} --space {space.name} "
        f"--width-mult {width:g} --input-shape {c},{h},{w}"
    )


def build_table(job: TableJob, progress: Progress | None = None) -> TableOutcome:
    """Measure a latency lookup table for the space on the profile's target, calibrate and save it."""
    from edgenas.hardware.profile import load_profile
    from edgenas.hardware.table import build_table as measure_table
    from edgenas.hardware.table import default_method
    from edgenas.io import check_writable
    from edgenas.space import create_space, default_preset

    report = silent(progress)
    if job.num_classes < 1:
        raise ConfigError(f"--num-classes must be >= 1, not {job.num_classes}")
    profile = with_protocol(load_profile(job.profile, job.input_shape), job.warmup, job.repeats, job.trials)
    _, h, w = profile.input_shape
    preset = job.preset or default_preset((h, w))
    space = create_space(job.space, preset, **({"width_mult": job.width_mult} if job.width_mult is not None else {}))
    path = Path(job.out) if job.out else default_table_path(profile, space, preset, width_mult=job.width_mult)
    if path.exists() and not job.force:
        raise EdgenasError(f"{path} exists; pass --force to rebuild it or choose another --out")
    check_writable(path, "--out", directory=False)
    table = measure_table(space, profile, num_classes=job.num_classes, calib_samples=job.calib, seed=job.seed,
                          method=job.method or default_method(profile),  # type: ignore[arg-type]
                          on_progress=report.message, reference=job.reference)
    table.save(path)
    return TableOutcome(path=path, table=table, layers=len(space.layers))


@dataclass(frozen=True)
class ValidateJob:
    """``edgenas profile validate``: ``count`` fresh subnets measured end to end against the table at
    ``table``; the figures are stored in the table file, the scatter plot beside it (or at ``plot``)."""

    table: str
    count: int = 50
    seed: int = 1
    plot: str | None = None
    warmup: int | None = None
    repeats: int | None = None
    trials: int | None = None


def validate_table(job: ValidateJob, progress: Progress | None = None) -> tuple[Any, Any]:
    """Measure, compare, store; returns (:class:`~edgenas.hardware.table.TableValidation`, the table)."""
    from edgenas.hardware.table import LatencyTable, environment_warnings
    from edgenas.hardware.table import validate_table as measure_validation
    from edgenas.space import space_from_dict

    report = silent(progress)
    table = LatencyTable.load(job.table)
    space = space_from_dict(table.space)
    for line in environment_warnings(table):
        report.warning(line)
    profile = with_protocol(table.profile_object(), job.warmup, job.repeats, job.trials)
    plot = Path(job.plot) if job.plot else Path(job.table).with_suffix(".png")
    result = measure_validation(table, space, profile, n=job.count, seed=job.seed, plot_path=plot,
                                on_progress=report.message)
    table.save(job.table)
    return result, table
