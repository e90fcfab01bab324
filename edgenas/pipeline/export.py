"""Stage 6: a fine-tuned subnet as a verified ONNX bundle (fp32, int8 when it keeps its accuracy, manifest)."""

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
    """Export, check, compare, quantize, gate int8, measure, write; an :class:`edgenas.export.ExportResult`.

    An int8 model losing more than ``job.config.int8_tolerance`` points of test accuracy is left out of
    the bundle, which is still written (``result.manifest["int8"]`` says why), unless
    ``job.config.require_int8`` (then :class:`edgenas.export.Int8GateError`, nothing written).
    """
    from edgenas.export import export_bundle
    from edgenas.io import check_writable

    check_writable(job.config.out_dir, "--out-dir", directory=True)
    return export_bundle(job.subnet, job.config, overwrite=job.overwrite, on_progress=silent(progress).message)
