"""Stage 4: a search run's winner (or any architecture of it) as a standalone subnet checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgenas.errors import ConfigError, EdgenasError

__all__ = ["ExtractJob", "ExtractOutcome", "extract", "extract_pareto", "front_points", "spread_along_front"]


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
    from edgenas.data import load_dataset
    from edgenas.extract import load_run_supernet, resolve_run
    from edgenas.io import check_writable

    selection = resolve_run(job.run_dir, job.arch)
    out = Path(job.out) if job.out else selection.run_dir / "subnet.pt"
    check_writable(out, "--out", directory=False)
    data = load_dataset(selection.data_config)
    supernet, _ = load_run_supernet(selection)
    return _extract_one(job, selection, selection.arch, supernet, data, out)


def front_points(search_doc: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """(cost key, front points ``{arch, score, cost}``) of a finished search, cheapest first: NSGA-II's
    front when the search ran it, else the non-dominated subset of what the search evaluated."""
    summary = search_doc.get("front_summary")
    if summary:
        key, front = str(summary["cost"]), [dict(f) for f in summary["front"]]
    else:
        pareto = search_doc.get("pareto") or {}
        key = pareto.get("cost")
        if not key:
            raise EdgenasError("the search recorded no cost (latency, FLOPs or params) to spread models along; "
                               "search under a budget")
        front = [{"arch": c["arch"], "score": c["score"], "cost": c["metrics"][key]} for c in pareto.get("front", [])]
    if not front:
        raise EdgenasError("the search's Pareto front is empty")
    front.sort(key=lambda f: (float(f["cost"]), -float(f["score"])))
    return key, front


def spread_along_front(search_doc: dict[str, Any], k: int) -> list[dict[str, Any]]:
    """``k`` points of the search's accuracy-cost front (:func:`front_points`), evenly spread by rank
    from the cheapest to the most accurate: ``{arch, score, cost, cost_key}``."""
    import numpy as np

    if k < 1:
        raise ConfigError(f"--pareto must be >= 1, not {k}")
    key, front = front_points(search_doc)
    picks = sorted({int(np.rint(i)) for i in np.linspace(0, len(front) - 1, min(k, len(front)))})
    return [{"arch": front[i]["arch"], "score": float(front[i]["score"]), "cost": float(front[i]["cost"]),
             "cost_key": key} for i in picks]


def extract_pareto(job: ExtractJob, k: int) -> list[ExtractOutcome]:
    """``k`` models spread along the search's front (:func:`spread_along_front`), each extracted as
    :func:`extract` does, into ``job.out`` (default ``RUN_DIR/pareto``) as ``NN-ARCHID.pt``, with a
    ``pareto.json`` listing them cheapest first. The supernet and data are loaded once."""
    from edgenas.data import load_dataset
    from edgenas.extract import load_run_supernet, resolve_run
    from edgenas.io import atomic_write_json, check_writable
    from edgenas.space import space_from_dict

    selection = resolve_run(job.run_dir)
    picks = spread_along_front(selection.search, k)
    folder = Path(job.out) if job.out else selection.run_dir / "pareto"
    check_writable(folder, "--out", directory=True)
    data = load_dataset(selection.data_config)
    supernet, _ = load_run_supernet(selection)
    space = space_from_dict(selection.search["config"]["space"])
    outcomes = []
    for i, pick in enumerate(picks):
        arch = space.parse(pick["arch"])
        outcomes.append(_extract_one(job, selection, arch, supernet, data, folder / f"{i:02d}-{arch.arch_id}.pt",
                                     front=pick))
    atomic_write_json(folder / "pareto.json", {"run_dir": str(selection.run_dir), "cost": picks[0]["cost_key"],
                                               "models": [{**o.meta["front"], "path": str(o.path),
                                                           "inherited_test_accuracy": o.test_accuracy}
                                                          for o in outcomes]})
    return outcomes


def _extract_one(job: ExtractJob, selection: Any, arch: Any, supernet: Any, data: Any, out: Path,
                 front: dict[str, Any] | None = None) -> ExtractOutcome:
    from edgenas.data import iterate_batches
    from edgenas.extract import data_facts, extract_subnet, save_subnet
    from edgenas.supernet import evaluate
    from edgenas.torch_utils import resolve_device, to_device

    scoring = dict(selection.search.get("config", {}).get("scoring") or {})
    dev = resolve_device(job.device)
    subnet = extract_subnet(supernet, arch, data,
                            recal=job.recal or int(scoring.get("recal_batches", 10)),
                            batch_size=int(scoring.get("batch_size", 256)),
                            seed=int(selection.search.get("seed") or 0), device=dev)
    test = evaluate(lambda x: subnet(to_device(x, dev, True)),
                    ((x, y.to(dev)) for x, y in iterate_batches(data.test, 256, shuffle=False)), subnet)
    meta = {"data": data_facts(data, selection.data_config),
            "source": {"run_dir": str(selection.run_dir), "supernet": str(selection.supernet_path),
                       "search_best": selection.search["best"]["arch"]},
            "inherited": {"test": {"accuracy": test["accuracy"], "count": int(test["count"])}},
            **({"front": front} if front is not None else {})}
    save_subnet(out, subnet.cpu(), meta)
    return ExtractOutcome(path=out, arch=arch, supernet_path=selection.supernet_path,
                          params=sum(p.numel() for p in subnet.parameters()), test_accuracy=float(test["accuracy"]),
                          test_count=int(test["count"]), data=data.name, meta=meta)
