"""Stage 4: a search run's winner (or any architecture of it) as a standalone subnet checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ExtractJob", "ExtractOutcome", "extract"]


@dataclass(frozen=True)
class ExtractJob:
    """``run_dir``: a search output; ``arch`` overrides its recommendation; ``recal`` defaults to the
    search's BN-recalibration batches, so the subnet computes what the search scored."""

    run_dir: str
    arch: str | None = None
    out: str | None = None
    recal: int | None = None
    device: str = "auto"


@dataclass
class ExtractOutcome:
    path: Path
    arch: Any  # edgenas.space.Arch
    supernet_path: Path
    params: int
    test_accuracy: float
    test_count: int
    data: str
    meta: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), **self.meta, "arch": self.arch.to_str()}


def extract(job: ExtractJob) -> ExtractOutcome:
    """Copy the path's weights into a plain network, recalibrate BN, score it on the test split, save it."""
    from edgenas.data import iterate_batches, load_dataset
    from edgenas.extract import data_facts, extract_subnet, load_run_supernet, resolve_run, save_subnet
    from edgenas.io import check_writable
    from edgenas.supernet import evaluate
    from edgenas.torch_utils import resolve_device, to_device

    selection = resolve_run(job.run_dir, job.arch)
    out = Path(job.out) if job.out else selection.run_dir / "subnet.pt"
    check_writable(out, "--out", directory=False)
    data = load_dataset(selection.data_config)
    supernet, _ = load_run_supernet(selection)
    scoring = dict(selection.search.get("config", {}).get("scoring") or {})
    dev = resolve_device(job.device)
    subnet = extract_subnet(supernet, selection.arch, data,
                            recal=job.recal or int(scoring.get("recal_batches", 10)),
                            batch_size=int(scoring.get("batch_size", 256)),
                            seed=int(selection.search.get("seed") or 0), device=dev)
    test = evaluate(lambda x: subnet(to_device(x, dev, True)),
                    ((x, y.to(dev)) for x, y in iterate_batches(data.test, 256, shuffle=False)), subnet)
    meta = {"data": data_facts(data, selection.data_config),
            "source": {"run_dir": str(selection.run_dir), "supernet": str(selection.supernet_path),
                       "search_best": selection.search["best"]["arch"]},
            "inherited": {"test": {"accuracy": test["accuracy"], "count": int(test["count"])}}}
    save_subnet(out, subnet.cpu(), meta)
    return ExtractOutcome(path=out, arch=selection.arch, supernet_path=selection.supernet_path,
                          params=sum(p.numel() for p in subnet.parameters()), test_accuracy=float(test["accuracy"]),
                          test_count=int(test["count"]), data=data.name, meta=meta)
