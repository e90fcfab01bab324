"""Stage 6: a fine-tuned subnet as a verified ONNX bundle (fp32, optional int8, manifest)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgenas.export import ExportConfig
from edgenas.pipeline.progress import Progress, silent

__all__ = ["ExportJob", "export"]


@dataclass(frozen=True)
class ExportJob:
    subnet: str
    config: ExportConfig
    overwrite: bool = False


def export(job: ExportJob, progress: Progress | None = None) -> Any:
    """Export, check, compare, quantize, measure, write; an :class:`edgenas.export.ExportResult`."""
    from edgenas.export import export_bundle
    from edgenas.io import check_writable

    check_writable(job.config.out_dir, "--out-dir", directory=True)
    return export_bundle(job.subnet, job.config, overwrite=job.overwrite, on_progress=silent(progress).message)
