"""Atomic file writes and safe loads.

Results and checkpoints are written to a temporary file in the same directory and renamed into
place, so an interrupted run leaves either the old file or the new one, never half of one. Torch
files are only ever read with ``weights_only=True``: nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgenas.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    import torch

__all__ = [
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_writable",
    "meta_int",
    "read_json",
    "read_model_checkpoint",
    "remove_stale_temps",
    "safe_torch_load",
    "save_model_checkpoint",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike[str], what: str, *, directory: bool) -> Path:
    """Refuse, before any work starts, an output that cannot be written: a directory (or a file's
    folder) that cannot be created, sits under a file, or does not take a new file. Nothing is left
    behind: folders made for the probe are removed again. The message names the option and the
    reason in one line."""
    path = Path(path)
    folder = path if directory else path.parent
    if not directory and path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; give a file path")
    created = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, prefix=".edgenas-probe-")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot write {what} {path}: {reason}; choose another location") from None
    finally:
        for made in created:  # deepest first
            with contextlib.suppress(OSError):
                made.rmdir()
    return path


STALE_TMP_AGE_S = 3600.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but owned by someone else
        return True
    return True


def remove_stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that interrupted writes of ``path`` left beside it (``kill -9``
    or a full disk between write and rename). A temp file names its writer's pid; it is stale when
    that process is gone, or, for a name without a pid, when it is over an hour old. Returns what
    was removed."""
    path = Path(path)
    removed: list[Path] = []
    prefix = f".{path.name}."
    if not path.parent.is_dir():
        return removed
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        middle = tmp.name[len(prefix):-len(".tmp")]
        pid_text = middle.split(".")[0]
        try:
            if pid_text.isdigit():
                stale = int(pid_text) != os.getpid() and not _alive(int(pid_text))
            else:
                stale = time.time() - tmp.stat().st_mtime > STALE_TMP_AGE_S
            if stale:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            continue  # another writer removed it first, or it is not ours to remove
    return removed


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results should read like any other file
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: str | os.PathLike[str], obj: Any) -> Path:
    buf = io.BytesIO()
    import torch

    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def save_model_checkpoint(path: str | os.PathLike[str], model: torch.nn.Module, meta: dict[str, Any],
                          train_state: dict[str, Any] | None = None) -> Path:
    """``{"model": state dict on CPU, "meta": meta[, "train_state"]}`` written atomically, plus
    ``meta`` as a readable JSON sidecar; loadable with ``weights_only=True`` (no pickled objects)."""
    blob: dict[str, Any] = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": meta}
    if train_state is not None:
        blob["train_state"] = train_state
    path = Path(path)
    atomic_torch_save(path, blob)
    atomic_write_json(path.with_suffix(".json"), meta)
    return path


def read_model_checkpoint(path: str | os.PathLike[str], what: str = "checkpoint"
                          ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """``(state dict, meta, train_state or None)`` of a file :func:`save_model_checkpoint` wrote;
    anything else is a one-line :class:`~edgenas.errors.CheckpointError` naming ``what`` was expected."""
    blob = safe_torch_load(path)
    if not isinstance(blob, dict) or not isinstance(blob.get("meta"), dict) or not isinstance(blob.get("model"), dict):
        raise CheckpointError(f"{path} is not an edgenas {what}")
    return blob["model"], blob["meta"], blob.get("train_state")


def meta_int(meta: dict[str, Any], key: str, path: str | os.PathLike[str], minimum: int = 1) -> int:
    """An integer field of checkpoint metadata (a class or channel count), or one line naming it:
    a hand-edited or foreign file must not reach ``int()`` and a traceback."""
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        from edgenas.config import short

        got = "missing" if key not in meta else f"{short(value)}"
        raise CheckpointError(f"{path}: checkpoint metadata '{key}' must be an integer >= {minimum}, not {got}")
    return value


def safe_torch_load(path: str | os.PathLike[str]) -> Any:
    """Load tensors and plain containers only; anything else is reported as a corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
            first = "not a torch checkpoint: torch.save writes a zip archive"
        elif "Weights only load failed" in first:
            first = "it holds pickled objects besides tensors; edgenas never unpickles them"
        raise CheckpointError(
            f"cannot read checkpoint {path}: corrupt or not an edgenas checkpoint ({first[:120]})"
        ) from None


def read_json(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
