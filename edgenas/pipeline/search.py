"""Stage 3: search under a hardware profile's budgets (evolution, Supernet Shifting by default).

Everything ``edgenas search`` does between parsing options and printing: load the supernet (or
transfer one to a new dataset), find the latency table, turn a quantile into a budget, refuse an
impossible budget, build the constraints and configs, run the search, and time the finalists end to
end on the target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgenas.errors import ConfigError, EdgenasError
from edgenas.pipeline.progress import Progress, silent

__all__ = ["SearchJob", "SearchOutcome", "check_latency_options", "checkpoint_data_config", "search"]


@dataclass(frozen=True)
class SearchJob:
    """``edgenas search`` as a value. Give exactly one of ``supernet`` and ``transfer_from``; ``None``
    in an evolution or shifting field means the default (for shifting: the budget scaled to the
    supernet's training, see :func:`edgenas.search.shifting.shift_budget_for`)."""

    profile: str
    supernet: str | None = None
    transfer_from: str | None = None
    freeze_backbone: bool = False
    table: str | None = None
    tables_dir: str = "latency_tables"
    latency_ms: float | None = None
    latency_quantile: float | None = None
    mflops: float | None = None
    params_m: float | None = None
    data: str | None = None
    data_root: str | None = None
    resize: int | None = None
    val_limit: int | None = None
    population: int | None = None
    generations: int | None = None
    topk: int | None = None
    mutations: int | None = None
    mutation_prob: float | None = None
    crossovers: int | None = None
    seed: int | None = None
    strategy: str = "evolution"
    scorer: str = "supernet"
    warm_start: int = 0
    warm_proxy: str = "naswot"
    shift: bool = True
    shift_update: Literal["generation", "candidate"] = "generation"
    shift_batches: int | None = None
    shift_lr: float | None = None
    device: str = "auto"
    out: str = "runs/search"
    resume: bool = False
    measure: bool = True


@dataclass
class SearchOutcome:
    """The search result plus what the caller shows beside it."""

    result: Any  # edgenas.search.SearchResult
    table_path: Path
    table: Any  # edgenas.hardware.table.LatencyTable
    budgets: Any  # edgenas.hardware.profile.Budgets
    measured: Any | None  # edgenas.search.verify.MeasuredFinalists
    notes: list[str] = field(default_factory=list)
    out: Path = Path("runs/search")

    @property
    def recommended(self) -> str:
        """The architecture to ship, as ``extract`` picks it (:func:`edgenas.search.verify.deployable_arch`)."""
        from edgenas.search.results import result_to_json
        from edgenas.search.verify import deployable_arch

        return deployable_arch(result_to_json(self.result))


def check_latency_options(latency_ms: float | None, latency_quantile: float | None) -> None:
    """One latency budget at most, and a quantile in (0, 1): refused before any work starts."""
    if latency_quantile is None:
        return
    if latency_ms is not None:
        raise ConfigError("give --latency-ms or --latency-quantile, not both")
    from edgenas.hardware.table import check_quantile

    check_quantile(latency_quantile)


def checkpoint_data_config(meta: dict[str, Any], where: str, data_name: str | None, data_root: str | None,
                           **fields: Any) -> Any:
    """The dataset a checkpoint was trained on (full training split), or ``data_name`` instead."""
    from edgenas.config import from_mapping
    from edgenas.data import DataConfig

    saved = dict(meta.get("data") or {})
    if data_name is not None and data_name != saved.get("name"):
        saved = {"name": data_name}
    if data_root is not None:
        saved["root"] = data_root
    return from_mapping(DataConfig, {**saved, "train_limit": None, **fields}, where=f"{where}: data")


def _check_job(job: SearchJob) -> str:
    if (job.supernet is None) == (job.transfer_from is None):
        raise EdgenasError("give exactly one of --supernet CKPT or --transfer-from CKPT")
    check_latency_options(job.latency_ms, job.latency_quantile)
    if job.transfer_from is not None and not job.shift:
        raise EdgenasError("--transfer-from needs shifting: with --no-shift the new classifier would never be trained")
    if job.freeze_backbone and job.transfer_from is None:
        raise EdgenasError("--freeze-backbone only applies with --transfer-from")
    if job.transfer_from is not None and job.data is None:
        raise EdgenasError("--transfer-from needs --data NEW (the dataset to transfer to)")
    return job.supernet or job.transfer_from  # type: ignore[return-value]


def search(job: SearchJob, progress: Progress | None = None) -> SearchOutcome:
    """Run (or resume) the search of ``job``; results in ``job.out`` (search.json, candidates.csv/png)."""
    from edgenas.config import from_mapping
    from edgenas.data import load_dataset
    from edgenas.hardware.profile import load_profile
    from edgenas.hardware.table import (
        LatencyTable,
        environment_warnings,
        loose_budget_warnings,
        quantile_budget,
    )
    from edgenas.io import check_writable
    from edgenas.pipeline.table import find_table
    from edgenas.search import (
        EvolutionConfig,
        SearchHook,
        ShiftConfig,
        WarmStartConfig,
        latency_cost,
        make_budget_constraints,
        run_search,
    )
    from edgenas.search.scoring import SCORERS
    from edgenas.search.strategies import STRATEGIES
    from edgenas.supernet import load_checkpoint
    from edgenas.torch_utils import resolve_device

    report = silent(progress)
    source = _check_job(job)
    check_writable(job.out, "--out", directory=True)
    STRATEGIES.get(job.strategy), SCORERS.get(job.scorer)  # unknown names fail before any loading
    if job.warm_start < 0:
        raise ConfigError(f"--warm-start must be >= 0 (0: off), not {job.warm_start}")
    if job.warm_start:
        SCORERS.get(job.warm_proxy)
    loaded, meta, _ = load_checkpoint(source)
    sized = {"resize": job.resize} if job.resize is not None else {}
    data_cfg = checkpoint_data_config(meta, source, job.data, job.data_root, val_limit=job.val_limit, **sized)
    data = load_dataset(data_cfg)
    notes: list[str] = []
    if job.transfer_from is not None:
        from edgenas.search import transfer_supernet

        transferred = transfer_supernet(job.transfer_from, data, seed=job.seed or 0)
        supernet, notes = transferred.supernet, list(transferred.notes)
    else:
        supernet = loaded
    space = supernet.space
    prof = load_profile(job.profile, input_shape=(data.in_channels, *data.input_size))
    table_file = Path(job.table) if job.table else find_table(space, prof, job.tables_dir)
    table = LatencyTable.load(table_file, space, prof)
    for line in environment_warnings(table, prof):
        report.warning(line)
    latency_ms = job.latency_ms
    if job.latency_quantile is not None:
        latency_ms = quantile_budget(table, space, job.latency_quantile)
        report.message(f"latency budget {latency_ms:.4g} ms: the {job.latency_quantile:g} quantile of predicted "
                       f"latency over 10,000 uniform architectures of {space.name} on {prof.name}")
    budgets = prof.with_budgets(latency_ms=latency_ms, mflops=job.mflops, params_m=job.params_m).budgets
    constraints = make_budget_constraints(
        space, input_hw=tuple(data.input_size), in_channels=data.in_channels, num_classes=data.num_classes,
        latency_ms=budgets.latency_ms, mflops=budgets.mflops, params_m=budgets.params_m,
        latency=latency_cost(table, space))
    for line in loose_budget_warnings(space, table, budgets):
        report.warning(line)
    evo_fields = {k: v for k, v in dict(population=job.population, generations=job.generations, topk=job.topk,
                                        mutations=job.mutations, mutation_prob=job.mutation_prob,
                                        crossovers=job.crossovers, seed=job.seed).items() if v is not None}
    if job.population is not None:  # keep the defaults' shape (a quarter mutations, a quarter crossovers)
        defaults = EvolutionConfig()
        for key in ("mutations", "crossovers", "topk"):
            if key not in evo_fields:
                evo_fields[key] = min(getattr(defaults, key), max(job.population * getattr(defaults, key)
                                                                 // defaults.population, 1 if key == "topk" else 0))
    evolution = from_mapping(EvolutionConfig, evo_fields, where="search options")
    shift_cfg = None
    if job.shift:
        shift_fields: dict[str, Any] = {"update": job.shift_update, "freeze_backbone": job.freeze_backbone}
        if job.transfer_from is None:  # a transferred classifier starts untrained: it keeps the larger defaults
            from edgenas.search.shifting import shift_budget_for

            shift_fields.update(shift_budget_for(meta, evolution.population * evolution.generations))
        if job.shift_batches is not None:
            shift_fields["batches_per_candidate"] = job.shift_batches
        if job.shift_lr is not None:
            shift_fields["lr"] = job.shift_lr
        shift_cfg = from_mapping(ShiftConfig, shift_fields, where="search options")
    for note in notes:
        report.message(f"note: {note}")

    class _Generations(SearchHook):
        def on_generation_end(self, record: Any) -> None:
            report.search_generation(record)

    result = run_search(
        supernet, data, job.out, constraints, shift=shift_cfg, evolution=evolution,
        device=resolve_device(job.device), resume=job.resume, hooks=[_Generations()], data_config=data_cfg,
        strategy=job.strategy, scorer=job.scorer,
        warm_start=WarmStartConfig(pool=job.warm_start, proxy=job.warm_proxy) if job.warm_start else None,
        info={"profile": prof.name, "profile_hash": prof.latency_hash(), "table": str(table_file),
              "table_validation": table.validation.to_json() if table.validation else None,
              "source": str(source), "transfer": job.transfer_from is not None, "notes": notes,
              "budgets": {"latency_ms": budgets.latency_ms, "mflops": budgets.mflops, "params_m": budgets.params_m,
                          "latency_quantile": job.latency_quantile}})
    measured = None
    if job.measure:
        from edgenas.search.results import write_search_json
        from edgenas.search.verify import measure_finalists

        report.message(f"measuring the top {len(result.topk)} end to end on {prof.name} ...")
        measured = measure_finalists(space, result.topk, prof, num_classes=data.num_classes,
                                     in_channels=data.in_channels, budget_ms=budgets.latency_ms, table=table)
        result.info["measured"] = measured.to_json()
        write_search_json(result, Path(job.out) / "search.json")
    return SearchOutcome(result=result, table_path=table_file, table=table, budgets=budgets, measured=measured,
                         notes=notes, out=Path(job.out))
