"""The chosen architecture as a standalone network with inherited, recalibrated weights.

A search run directory names its winner (``search.json``) and the supernet it was scored on
(``supernet.pt`` after Supernet Shifting, the source checkpoint after plain SPOS). Extraction
copies that path's weights into a plain :class:`~edgenas.space.Subnet` (no supernet, no unused
choices, no dynamic ops) and recalibrates its BN statistics on the same fixed training batches the
search scored with, so the extracted network computes exactly what the supernet's single path
computed when it was scored.

Subnet checkpoints (format ``edgenas-subnet/1``) hold the weights and everything needed to rebuild
and deploy the network without the run directory: the space config, the architecture, the number of
classes and input channels, and the data facts (dataset config, class names, input size,
normalisation). They are read with ``weights_only=True`` like every other file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgenas.config import from_mapping, to_mapping
from edgenas.data import DataConfig, DatasetSplits
from edgenas.errors import CheckpointError, EdgenasError, SpaceError
from edgenas.io import meta_int, read_json, read_model_checkpoint, save_model_checkpoint
from edgenas.search.verify import deployable_arch
from edgenas.space import Arch, Subnet, space_from_dict, space_to_dict
from edgenas.supernet import Supernet, inherit_subnet, load_checkpoint, recalibrate_bn
from edgenas.torch_utils import recal_batches, to_device

__all__ = [
    "SUBNET_FORMAT",
    "RunSelection",
    "data_facts",
    "extract_subnet",
    "load_run_supernet",
    "load_subnet",
    "resolve_run",
    "save_subnet",
]

SUBNET_FORMAT = "edgenas-subnet/1"


@dataclass(frozen=True)
class RunSelection:
    """What a search run directory says to extract: the architecture and where its weights are."""

    run_dir: Path
    arch: Arch
    supernet_path: Path
    data_config: DataConfig
    search: dict[str, Any]


def resolve_run(run_dir: str | Path, arch: str | None = None) -> RunSelection:
    """Read a search run directory; ``arch`` (a string of the same space) overrides the winner.

    The winner is the search's recommendation (the best finalist measured within the latency
    budget) when the search measured its finalists, else its best-scoring architecture.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise EdgenasError(f"search run directory {run} does not exist")
    doc_path = run / "search.json"
    if not doc_path.is_file():
        raise EdgenasError(f"{run} has no search.json: it is not a finished search run (resume it or run one)")
    doc = read_json(doc_path)
    if not isinstance(doc, dict) or doc.get("format") != "edgenas-search/1" or "best" not in doc:
        raise EdgenasError(f"{doc_path} is not an edgenas search result")
    supernet_name = doc.get("supernet")
    candidate = run / supernet_name if supernet_name else Path(str(doc.get("source", "")))
    if not candidate.is_file():
        raise CheckpointError(f"the supernet of {run} ({candidate}) is missing")
    config = doc.get("config")
    data = doc.get("data")
    if not data and isinstance(config, dict) and config.get("data"):  # results from before "data" was recorded
        data = {"name": config["data"]}
    if not isinstance(config, dict) or not isinstance(config.get("space"), dict) or not isinstance(data, dict):
        raise EdgenasError(f"{doc_path} lacks the search's config (space and data): it was cut short or edited; "
                           "rerun the search")
    try:
        space = space_from_dict(config["space"])
        text = arch if arch is not None else deployable_arch(doc)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EdgenasError(f"{doc_path} is not a readable search result ({type(exc).__name__}: "
                           f"{str(exc)[:80]}); rerun the search") from None
    try:
        chosen = space.parse(text)
    except SpaceError as exc:
        raise SpaceError(f"--arch does not belong to the searched space {space.name}: {exc}") from None
    data_cfg = from_mapping(DataConfig, {**dict(data), "train_limit": None}, where=f"{doc_path}: data")
    return RunSelection(run, chosen, candidate, data_cfg, doc)


def data_facts(data: DatasetSplits, config: DataConfig) -> dict[str, Any]:
    """What a deployed model must know about its inputs and outputs."""
    return {
        "config": to_mapping(config),
        "name": data.name,
        "class_names": list(data.class_names),
        "num_classes": data.num_classes,
        "in_channels": data.in_channels,
        "input_size": list(data.input_size),
        "mean": list(data.mean),
        "std": list(data.std),
    }


def extract_subnet(supernet: Supernet, arch: Arch, data: DatasetSplits, *, recal: int = 10, batch_size: int = 256,
                   seed: int = 0, device: torch.device | None = None, channels_last: bool = True) -> Subnet:
    """The path of ``arch`` as a standalone network, BN recalibrated on fixed training batches.

    ``recal``/``batch_size``/``seed`` default to the scorer's, so the result equals the network
    the search scored. The supernet is not changed (its weights are copied, not moved).
    """
    if data.num_classes != supernet.num_classes or data.in_channels != supernet.in_channels:
        raise EdgenasError(f"the supernet ({supernet.num_classes} classes, {supernet.in_channels}-channel input) "
                           f"does not fit {data.name} ({data.num_classes} classes, {data.in_channels} channels)")
    device = device or next(supernet.parameters()).device
    subnet = inherit_subnet(supernet, arch).to(device)
    if channels_last:
        subnet.to(memory_format=torch.channels_last)
    batches = recal_batches(data, recal, batch_size, seed, device, channels_last)
    recalibrate_bn(lambda x: subnet(to_device(x, device, channels_last)), [subnet], batches, model=subnet)
    return subnet.eval()


def save_subnet(path: str | Path, subnet: Subnet, meta: dict[str, Any], train_state: dict[str, Any] | None = None
                ) -> Path:
    """Write a subnet checkpoint atomically, with a readable JSON sidecar of its metadata."""
    space = _subnet_space(subnet)
    full = {"format": SUBNET_FORMAT, "space": space_to_dict(space), "arch": subnet.arch.to_str(),
            "arch_id": subnet.arch.arch_id, "num_classes": subnet.num_classes,
            "in_channels": subnet.in_channels, **meta}
    return save_model_checkpoint(path, subnet, full, train_state)


def load_subnet(path: str | Path) -> tuple[Subnet, dict[str, Any], dict[str, Any] | None]:
    """Rebuild a subnet from its checkpoint; anything else (a supernet, a corrupt file) is one line."""
    path = Path(path)
    state, meta, train_state = read_model_checkpoint(path, "subnet checkpoint")
    if meta.get("format") != SUBNET_FORMAT:
        hint = " (a supernet: run `edgenas extract` on the search run first)" if "supernet" in str(
            meta.get("format")) else ""
        raise CheckpointError(f"{path} has format {meta.get('format')!r}, expected {SUBNET_FORMAT!r}{hint}")
    try:
        space = space_from_dict(meta["space"])
        arch = space.parse(meta["arch"])
        subnet = space.build_subnet(arch, meta_int(meta, "num_classes", path), meta_int(meta, "in_channels", path))
        subnet.load_state_dict(state, strict=True)
    except (KeyError, TypeError, RuntimeError, SpaceError) as exc:
        raise CheckpointError(f"{path} does not match its architecture: {str(exc).splitlines()[0][:160]}") from None
    return subnet.eval(), meta, train_state


def load_run_supernet(selection: RunSelection) -> tuple[Supernet, dict[str, Any]]:
    """The supernet a search run scored its candidates on (checked against the run's space)."""
    supernet, meta, _ = load_checkpoint(selection.supernet_path)
    if supernet.space.config_hash() != space_from_dict(selection.search["config"]["space"]).config_hash():
        raise CheckpointError(f"{selection.supernet_path} is not the supernet searched in {selection.run_dir}")
    return supernet, meta


def _subnet_space(subnet: Subnet) -> Any:
    space = getattr(subnet, "space", None)
    if space is None:
        raise EdgenasError("the subnet does not record its space; build it with space.build_subnet")
    return space
