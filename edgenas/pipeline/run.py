"""The whole pipeline in one run directory: the stage functions in sequence, resumable.

``stages.json`` (:class:`edgenas.report.StageLog`) records the settings and each finished stage,
so a rerun with ``resume`` continues at the first unfinished one (training, search and fine-tuning
also resume inside their stage). Ends with ``report.md`` and a summary table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgenas.errors import ConfigError, EdgenasError
from edgenas.pipeline.progress import Progress, silent

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
        extra = {"int8_tolerance": self.int8_tolerance} if self.int8_tolerance != 1.0 else {}  # older runs resume
        return {**{k: getattr(self, k) for k in keys}, **extra}


@dataclass
class RunOutcome:
    out: Path
    bundle: Path
    report: Path
    summary: list[tuple[str, str]]
    seconds: float
    verdict: str | None


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
    if prof.runtime != "onnxruntime":
        raise ConfigError(f"edgenas run exports ONNX bundles; profile '{prof.name}' runs {prof.runtime}: "
                          "choose an onnxruntime profile (edgenas profile list)")
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
    if (t := stage("search")) is not None:
        search(SearchJob(profile=job.profile, supernet=str(paths["supernet"] / "supernet.pt"),
                         tables_dir=job.tables_dir, latency_ms=job.latency_ms, latency_quantile=job.latency_quantile,
                         mflops=job.mflops, params_m=job.params_m, data_root=job.data_root, val_limit=job.val_limit,
                         population=job.population, generations=job.generations, topk=job.topk,
                         mutations=job.mutations, crossovers=job.crossovers, seed=job.seed, shift=job.shift,
                         device=job.device, out=str(paths["search"]),
                         resume=(paths["search"] / "checkpoint.pt").exists()), report)
        log.finish("search", t, search_json=str(paths["search"] / "search.json"),
                   plot=str(paths["search"] / "candidates.png"))
    if (t := stage("extract")) is not None:
        extracted = extract(ExtractJob(run_dir=str(paths["search"]), out=str(paths["subnet"]), device=job.device))
        report.message(f"extracted {extracted.arch}: inherited test accuracy {extracted.test_accuracy:.2%}")
        log.finish("extract", t, subnet=str(paths["subnet"]))
    if (t := stage("finetune")) is not None:
        tuned = finetune(FinetuneJob(
            subnet=str(paths["subnet"]), out=str(paths["finetune"]),
            config=FinetuneConfig(epochs=job.finetune_epochs, train_limit=job.train_limit, seed=job.seed,
                                  threads=job.threads),
            data_root=job.data_root, device=job.device, resume=(paths["finetune"] / "last.pt").exists()), report)
        report.message(f"fine-tuned: test accuracy {tuned.result.test_accuracy:.2%}")
        log.finish("finetune", t, finetune_json=str(paths["finetune"] / "finetune.json"))
    bundle = paths["export"] / bundle_name
    if (t := stage("export")) is not None:
        export(ExportJob(subnet=str(paths["finetune"] / "subnet.pt"),
                         config=ExportConfig(name=bundle_name, out_dir=paths["export"], int8=job.int8,
                                             int8_tolerance=job.int8_tolerance, profile=job.profile),
                         overwrite=True), report)
        log.finish("export", t, bundle=str(bundle), manifest=str(bundle / "manifest.json"))
    verdict = (log.stages.get("check") or {}).get("verdict")
    if (t := stage("check")) is not None:
        check(CheckJob(bundle=str(bundle), profile=job.profile, update=True), report)
        checked = check(CheckJob(bundle=str(bundle), profile=job.profile), report).report
        report.message(checked.render(use_rich=False))
        verdict = checked.verdict
        log.finish("check", t, verdict=checked.verdict, exit_code=checked.exit_code)
    path = render_report(out, log)
    total = sum(float(r.get("seconds", 0.0)) for r in log.stages.values())
    return RunOutcome(out=out, bundle=bundle, report=path, summary=pipeline_summary(out, log), seconds=total,
                      verdict=verdict)
