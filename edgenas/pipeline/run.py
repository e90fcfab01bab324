"""The whole pipeline in one run directory: the stage functions in sequence, resumable.

``stages.json`` (:class:`edgenas.report.StageLog`) records the settings and each finished stage,
so a rerun with ``resume`` continues at the first unfinished one (training, search and fine-tuning
also resume inside their stage). Ends with ``report.md`` and a summary table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from edgenas.errors import EdgenasError
from edgenas.pipeline.budgets import (
    check_budget_options,
    pick_per_budget,
    resolve_budgets,
    summary_rows,
    write_budget_summary,
)
from edgenas.pipeline.progress import Progress, silent

if TYPE_CHECKING:
    from edgenas.report import StageLog

__all__ = ["RunJob", "RunOutcome", "run"]

STAGES = (("train", "1/7 train the supernet"), ("table", "2/7 latency table"), ("search", "3/7 search"),
          ("extract", "4/7 extract the winner"), ("finetune", "5/7 fine-tune"),
          ("export", "6/7 export the ONNX bundle"), ("check", "7/7 latency baseline and regression check"))


@dataclass(frozen=True)
class RunJob:
    """Settings of ``edgenas run``; the defaults are the README's demo scale minus its data slice."""

    profile: str
    data: str = "fashion-mnist"
    data_root: str | None = None
    latency_ms: float | None = None
    latency_quantile: float | None = None
    mflops: float | None = None
    params_m: float | None = None
    space: str = "mbv3"
    width_mult: float = 0.5
    epochs: int = 3
    weights: Literal["auto", "separate", "shared"] = "auto"
    recipe: Literal["single", "sandwich"] = "single"
    train_limit: int | None = None
    population: int = 16
    generations: int = 4
    topk: int = 5
    mutations: int = 6
    crossovers: int = 6
    val_limit: int = 1000
    shift: bool = True
    finetune_epochs: int = 2
    int8: bool = True
    int8_tolerance: float = 1.0
    budgets: tuple[float, ...] | None = None
    budget_quantiles: tuple[float, ...] | None = None
    strategy: str | None = None
    name: str | None = None
    export_dir: str | None = None
    tables_dir: str = "latency_tables"
    seed: int = 0
    threads: int = 1
    device: str = "auto"
    out: str = "runs/run"
    resume: bool = False

    def settings(self) -> dict[str, object]:
        """What must not change between a run and its resumption (recorded in stages.json)."""
        keys = ("profile", "data", "latency_ms", "latency_quantile", "mflops", "params_m", "space", "width_mult",
                "epochs", "weights", "recipe", "train_limit", "population", "generations", "topk", "mutations",
                "crossovers", "val_limit", "shift", "finetune_epochs", "int8", "seed")
        extra: dict[str, object] = {"int8_tolerance": self.int8_tolerance} if self.int8_tolerance != 1.0 else {}
        for key in ("budgets", "budget_quantiles"):  # recorded only when set, so older runs resume
            if getattr(self, key) is not None:
                extra[key] = [float(v) for v in getattr(self, key)]
        if self.strategy is not None:
            extra["strategy"] = self.strategy
        return {**{k: getattr(self, k) for k in keys}, **extra}

    @property
    def multi_budget(self) -> bool:
        return self.budgets is not None or self.budget_quantiles is not None

    def search_strategy(self) -> str:
        """The strategy asked for; by default NSGA-II for several budgets (one front serves them all),
        else evolution."""
        return self.strategy or ("nsga2" if self.multi_budget else "evolution")


@dataclass
class RunOutcome:
    out: Path
    bundle: Path
    report: Path
    summary: list[tuple[str, str]]
    seconds: float
    verdict: str | None
    budgets: list[dict[str, object]] | None = None  # one row per budget (``edgenas run --budgets``)


def run(job: RunJob, progress: Progress | None = None) -> RunOutcome:
    """Train, table, search, extract, fine-tune, export and check, skipping finished stages on resume."""
    from edgenas.data import DataConfig, load_dataset
    from edgenas.export import ExportConfig
    from edgenas.finetune import FinetuneConfig
    from edgenas.hardware.profile import load_profile
    from edgenas.pipeline.check import CheckJob, check
    from edgenas.pipeline.export import ExportJob, export
    from edgenas.pipeline.extract import ExtractJob, extract
    from edgenas.pipeline.finetune import FinetuneJob, finetune
    from edgenas.pipeline.search import SearchJob, check_latency_options, search
    from edgenas.pipeline.table import TableJob, build_table, default_table_path, find_table
    from edgenas.pipeline.train import TrainJob, train
    from edgenas.report import StageLog, pipeline_summary, render_report
    from edgenas.space import create_space, default_preset
    from edgenas.supernet import load_checkpoint
    from edgenas.train import TrainConfig

    report = silent(progress)
    out = Path(job.out)
    prof = load_profile(job.profile)  # fail on a bad profile before any work
    check_latency_options(job.latency_ms, job.latency_quantile)
    check_budget_options(job.budgets, job.budget_quantiles, job.latency_ms, job.latency_quantile)
    if job.strategy is not None:
        from edgenas.search.strategies import STRATEGIES

        STRATEGIES.get(job.strategy)
    from edgenas.hardware.measure import onnx_measurer

    onnx_measurer(prof)  # the bundle's ONNX files are timed in the profile's runtime: refuse torch eager now
    create_space(job.space)  # an unknown space fails here, not after the data is loaded
    log = StageLog.open(out, job.settings(), job.resume)
    bundle_name = job.name or out.resolve().name
    paths = {"supernet": out / "supernet", "search": out / "search", "subnet": out / "search" / "subnet.pt",
             "finetune": out / "finetune", "export": Path(job.export_dir) if job.export_dir else out / "export"}
    titles = dict(STAGES)

    def stage(key: str) -> float | None:
        done = log.done(key)
        report.stage(key, titles[key], skipped=done)
        return None if done else log.begin(key)

    if (t := stage("train")) is not None:
        train(TrainJob(data=DataConfig(name=job.data, root=job.data_root, train_limit=job.train_limit),
                       train=TrainConfig(epochs=job.epochs, weights=job.weights, recipe=job.recipe, seed=job.seed,
                                         threads=job.threads, device=job.device),
                       space=job.space, space_options={"width_mult": job.width_mult}, out=str(paths["supernet"]),
                       resume=(paths["supernet"] / "supernet.pt").exists()), report)
        log.finish("train", t, checkpoint=str(paths["supernet"] / "supernet.pt"))
    if (t := stage("table")) is not None:
        supernet, _, _ = load_checkpoint(paths["supernet"] / "supernet.pt")
        splits = load_dataset(DataConfig(name=job.data, root=job.data_root))
        target = load_profile(job.profile, input_shape=(splits.in_channels, *splits.input_size))
        try:
            table_path, note = find_table(supernet.space, target, job.tables_dir), "reused"
        except EdgenasError:
            preset = default_preset(tuple(splits.input_size))  # as training chose it
            table_path = default_table_path(target, supernet.space, preset, job.tables_dir, job.width_mult)
            build_table(TableJob(profile=job.profile, space=job.space, preset=preset, width_mult=job.width_mult,
                                 input_shape=target.input_shape, out=str(table_path), force=True), report)
            note = "built"
        log.finish("table", t, table=str(table_path), note=note)
    search_budget = job.latency_ms
    picks_budgets: list[tuple[str, float]] | None = None
    if job.multi_budget:
        picks_budgets = _resolved_budgets(job, log, paths)
        search_budget = picks_budgets[-1][1]  # the loosest: its front holds every tighter budget's model
    if (t := stage("search")) is not None:
        search(SearchJob(profile=job.profile, supernet=str(paths["supernet"] / "supernet.pt"),
                         tables_dir=job.tables_dir, latency_ms=search_budget,
                         latency_quantile=None if job.multi_budget else job.latency_quantile,
                         mflops=job.mflops, params_m=job.params_m, data_root=job.data_root, val_limit=job.val_limit,
                         population=job.population, generations=job.generations, topk=job.topk,
                         mutations=job.mutations, crossovers=job.crossovers, seed=job.seed, shift=job.shift,
                         strategy=job.search_strategy(), device=job.device, out=str(paths["search"]),
                         resume=(paths["search"] / "checkpoint.pt").exists()), report)
        log.finish("search", t, search_json=str(paths["search"] / "search.json"),
                   plot=str(paths["search"] / "candidates.png"))

    def deliver(arch: str | None, subnet: Path, tuned_dir: Path, bundle_name: str, suffix: str = ""
                ) -> dict[str, object]:
        """Stages 4-7 for one architecture (``None``: the search's recommendation)."""
        export_dir = paths["export"]
        bundle = export_dir / bundle_name
        for key, title in STAGES[3:]:
            titles[key + suffix] = title + (f" ({suffix[1:]})" if suffix else "")
        if (t := stage("extract" + suffix)) is not None:
            extracted = extract(ExtractJob(run_dir=str(paths["search"]), arch=arch, out=str(subnet),
                                           device=job.device))
            report.message(f"extracted {extracted.arch}: inherited test accuracy {extracted.test_accuracy:.2%}")
            log.finish("extract" + suffix, t, subnet=str(subnet))
        if (t := stage("finetune" + suffix)) is not None:
            tuned = finetune(FinetuneJob(
                subnet=str(subnet), out=str(tuned_dir),
                config=FinetuneConfig(epochs=job.finetune_epochs, train_limit=job.train_limit, seed=job.seed,
                                      threads=job.threads),
                data_root=job.data_root, device=job.device, resume=(tuned_dir / "last.pt").exists()), report)
            report.message(f"fine-tuned: test accuracy {tuned.result.test_accuracy:.2%}")
            log.finish("finetune" + suffix, t, finetune_json=str(tuned_dir / "finetune.json"))
        if (t := stage("export" + suffix)) is not None:
            export(ExportJob(subnet=str(tuned_dir / "subnet.pt"),
                             config=ExportConfig(name=bundle_name, out_dir=export_dir, int8=job.int8,
                                                 int8_tolerance=job.int8_tolerance, profile=job.profile),
                             overwrite=True), report)
            log.finish("export" + suffix, t, bundle=str(bundle), manifest=str(bundle / "manifest.json"))
        verdict = (log.stages.get("check" + suffix) or {}).get("verdict")
        if (t := stage("check" + suffix)) is not None:
            check(CheckJob(bundle=str(bundle), profile=job.profile, update=True), report)
            checked = check(CheckJob(bundle=str(bundle), profile=job.profile), report).report
            report.message(checked.render(use_rich=False))
            verdict = checked.verdict
            log.finish("check" + suffix, t, verdict=checked.verdict, exit_code=checked.exit_code)
        return {"bundle": str(bundle), "verdict": verdict, "finetune": _read(tuned_dir / "finetune.json"),
                "manifest": _read(bundle / "manifest.json")}

    rows: list[dict[str, object]] | None = None
    if picks_budgets is None:
        delivered = deliver(None, paths["subnet"], paths["finetune"], bundle_name)
        bundle, verdict = Path(str(delivered["bundle"])), delivered["verdict"]
    else:
        search_doc = _read(paths["search"] / "search.json")
        picks = pick_per_budget(search_doc, picks_budgets)
        results: dict[str, dict[str, object]] = {}
        for pick in picks:
            if pick.folder != pick.label:
                report.message(f"budget {pick.label}: the same architecture as budget {pick.folder}; one bundle "
                               "serves both")
                continue
            report.message(f"budget {pick.label} ({pick.budget_ms:.4g} ms): {pick.arch} (supernet score "
                           f"{pick.score:.2%}, predicted {pick.predicted_ms:.4g} ms)")
            folder = out / "budgets" / pick.label
            results[pick.label] = deliver(pick.arch, folder / "subnet.pt", folder / "finetune",
                                          f"{bundle_name}-{pick.label}", suffix=f"@{pick.label}")
        rows = summary_rows(picks, results)
        write_budget_summary(out, rows, search_doc, prof.name)
        bundle = paths["export"]
        verdicts = [str(r["check"]) for r in rows]
        verdict = next((v for v in verdicts if v != "PASS"), "PASS") if verdicts else None
    path = render_report(out, log)
    total = sum(float(r.get("seconds", 0.0)) for r in log.stages.values())
    return RunOutcome(out=out, bundle=bundle, report=path, summary=pipeline_summary(out, log), seconds=total,
                      verdict=verdict, budgets=rows)


def _read(path: Path) -> dict[str, object]:
    from edgenas.io import read_json

    doc = read_json(path) if path.is_file() else None
    return doc if isinstance(doc, dict) else {}


def _resolved_budgets(job: RunJob, log: StageLog, paths: dict[str, Path]) -> list[tuple[str, float]]:
    """The budgets in the table's milliseconds (quantiles read off the table), checked reachable."""
    from edgenas.data import DataConfig, load_dataset
    from edgenas.hardware.profile import load_profile
    from edgenas.hardware.table import LatencyTable
    from edgenas.supernet import load_checkpoint

    table_path = Path(str(log.stages["table"]["table"]))
    supernet, _, _ = load_checkpoint(paths["supernet"] / "supernet.pt")
    splits = load_dataset(DataConfig(name=job.data, root=job.data_root))
    target = load_profile(job.profile, input_shape=(splits.in_channels, *splits.input_size))
    table = LatencyTable.load(table_path, supernet.space, target)
    return resolve_budgets(table, supernet.space, job.budgets, job.budget_quantiles)
