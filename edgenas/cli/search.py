"""`edgenas search` (under a profile's budgets) and `edgenas extract` (the winner as a subnet)."""

from __future__ import annotations

import json

import click

from edgenas.cli._app import (
    SCORER_NAME,
    STRATEGY_NAME,
    _config_option,
    _console,
    cli,
)


# ----- search ---------------------------------------------------------------------------------------------
@cli.command()
@_config_option
@click.option("--profile", "profile_name", required=True, help="Hardware profile (edgenas profile list).")
@click.option("--supernet", "ckpt", type=click.Path(dir_okay=False), default=None, help="Supernet checkpoint.")
@click.option("--transfer-from", type=click.Path(dir_okay=False), default=None,
              help="Supernet trained on another dataset: its classifier is replaced for --data.")
@click.option("--freeze-backbone", is_flag=True, help="With --transfer-from: shift only the classifier.")
@click.option("--table", "table_path", type=click.Path(dir_okay=False), default=None,
              help="Latency table [default: the one in --tables-dir matching the space and profile].")
@click.option("--tables-dir", default="latency_tables", show_default=True)
@click.option("--latency-ms", type=float, default=None,
              help="Latency budget (overrides the profile's), in the latency table's milliseconds: at the host "
                   "speed the table was built at, whatever the host's speed during the search.")
@click.option("--latency-quantile", type=float, default=None,
              help="Latency budget as a quantile of the space's predicted latency on this target (e.g. 0.25: "
                   "the fastest quarter), the same on every machine; instead of --latency-ms.")
@click.option("--mflops", type=float, default=None, help="FLOPs budget, 1 multiply-add = 1 FLOP.")
@click.option("--params-m", type=float, default=None, help="Parameter budget in millions.")
@click.option("--data", "data_name", default=None, help="Dataset [default: the supernet's].")
@click.option("--data-root", default=None)
@click.option("--resize", type=int, default=None,
              help="Resize --data's images to this square side (the size the supernet and table were made for).")
@click.option("--val-limit", type=int, default=None, help="Score candidates on the first N validation images.")
@click.option("--population", type=int, default=None)
@click.option("--generations", type=int, default=None)
@click.option("--topk", type=int, default=None)
@click.option("--mutations", type=int, default=None)
@click.option("--mutation-prob", type=float, default=None)
@click.option("--crossovers", type=int, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--strategy", type=STRATEGY_NAME, default="evolution", show_default=True,
              help="Search strategy: evolution, random (random search, same evaluations) or a registered one.")
@click.option("--scorer", type=SCORER_NAME, default="supernet", show_default=True,
              help="Candidate score: supernet (validation accuracy), params (parameter count), the zero-cost "
                   "proxies naswot and synflow (at initialisation, no training) or a registered one.")
@click.option("--warm-start", type=int, default=0, show_default=True,
              help="Rank this many feasible random architectures by --warm-proxy and start from the best "
                   "(0: a random first population).")
@click.option("--warm-proxy", type=SCORER_NAME, default="naswot", show_default=True,
              help="The cheap scorer that ranks the warm-start pool (naswot, synflow, params).")
@click.option("--shift/--no-shift", default=True, show_default=True,
              help="Supernet Shifting (default) or plain SPOS evolution.")
@click.option("--shift-update", type=click.Choice(["generation", "candidate"]), default="generation",
              show_default=True, help="One optimiser step per generation (paper) or per candidate (released code).")
@click.option("--shift-batches", type=int, default=None, help="Training batches per candidate.")
@click.option("--shift-lr", type=float, default=None)
@click.option("--device", default="auto", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/search", show_default=True)
@click.option("--resume", is_flag=True, help="Continue the interrupted search in --out.")
@click.option("--measure/--no-measure", default=True, show_default=True,
              help="Time the final top-k end to end on the profile and recommend the best that fits the budget.")
@click.option("--json", "as_json", is_flag=True, help="Print only the results as JSON.")
def search(profile_name: str, ckpt: str | None, transfer_from: str | None, freeze_backbone: bool,
           table_path: str | None, tables_dir: str, latency_ms: float | None, latency_quantile: float | None,
           mflops: float | None, params_m: float | None, data_name: str | None, data_root: str | None,
           resize: int | None, val_limit: int | None, population: int | None, generations: int | None, topk: int | None,
           mutations: int | None, mutation_prob: float | None, crossovers: int | None, seed: int | None,
           strategy: str, scorer: str, warm_start: int, warm_proxy: str, shift: bool, shift_update: str,
           shift_batches: int | None,
           shift_lr: float | None, device: str, out_dir: str, resume: bool, measure: bool, as_json: bool) -> None:
    """Evolutionary search under the profile's budgets, with Supernet Shifting by default."""
    from edgenas.pipeline import SearchJob
    from edgenas.pipeline import search as search_stage
    from edgenas.search import EvolutionConfig
    from edgenas.search.results import result_to_json

    job = SearchJob(profile=profile_name, supernet=ckpt, transfer_from=transfer_from, freeze_backbone=freeze_backbone,
                    table=table_path, tables_dir=tables_dir, latency_ms=latency_ms, latency_quantile=latency_quantile,
                    mflops=mflops, params_m=params_m, data=data_name, data_root=data_root, resize=resize,
                    val_limit=val_limit, population=population, generations=generations, topk=topk,
                    mutations=mutations, mutation_prob=mutation_prob, crossovers=crossovers, seed=seed,
                    strategy=strategy, scorer=scorer, warm_start=warm_start, warm_proxy=warm_proxy, shift=shift,
                    shift_update=shift_update,  # type: ignore[arg-type]
                    shift_batches=shift_batches, shift_lr=shift_lr,
                    device=device, out=out_dir, resume=resume, measure=measure)
    planned = generations if generations is not None else EvolutionConfig().generations
    outcome = search_stage(job, _console(quiet=as_json, generations=planned))
    result, measured, table = outcome.result, outcome.measured, outcome.table
    if as_json:
        click.echo(json.dumps(result_to_json(result), indent=2))
        return
    best = result.best
    m = best.metrics
    score = f"val accuracy {best.score:.2%}" if "accuracy" in best.metrics else f"{scorer} score {best.score:.6g}"
    click.echo(f"best: {best.arch}  {score}  predicted latency "
               f"{m.get('latency_ms', float('nan')):.3f} ms  {m.get('mflops', float('nan')):.2f} MFLOPs"
               f"  {m.get('params_m', float('nan')):.3f} M params")
    if result.front_summary:
        fs, ref = result.front_summary, result.front_summary["reference"]
        click.echo(f"Pareto front ({fs['cost']}): {fs['size']} architectures, hypervolume {fs['hypervolume']:.4g} "
                   f"(reference: score {ref['score']:g}, {fs['cost']} {ref['cost']:.4g} from the {ref['cost_from']}); "
                   f"{out_dir}/pareto.csv")
    if table.validation is not None:
        click.echo(f"latency table trust: {table.validation.summary()}")
    if result.info.get("proxy_health"):
        from edgenas.proxy import ProxyHealth

        health = ProxyHealth.from_json(result.info["proxy_health"])
        prefix = "proxy health" if health.separable else "warning: proxy health"
        click.echo(f"{prefix}: {health.summary()}", err=not health.separable)
    if measured is not None:
        top = measured.finalists[0]
        budget_text = "" if measured.budget_ms is None else f" (budget {measured.budget_ms:g} ms)"
        speed = ("" if measured.speed is None else f"; in the table's units, the host ran at {measured.speed:.2f}x "
                 f"its build-time reference time, as timed {top.raw_ms:.3f} ms")
        click.echo(f"measured {measured.statistic} latency of the best: {top.measured_ms:.3f} ms{budget_text}{speed}")
        rec = measured.recommended
        if rec is None:
            click.echo("warning: no top-k architecture is within the budget when measured; loosen the budget or "
                       "rebuild the latency table on a quiet machine", err=True)
        elif rec.arch != top.arch:
            click.echo(f"warning: the best is over budget when measured; recommended instead: {rec.arch} "
                       f"(val accuracy {rec.score:.2%}, measured {rec.measured_ms:.3f} ms)", err=True)
    click.echo(f"results: {out_dir}/search.json, candidates.csv, candidates.png")


# ----- extract ----------------------------------------------------------------------------------------------
@cli.command()
@_config_option
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--arch", "arch_str", default=None, help="Architecture string to extract [default: the search's best].")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Subnet checkpoint to write [default: RUN_DIR/subnet.pt].")
@click.option("--recal", type=int, default=None, help="Training batches for BN recalibration [default: the search's].")
@click.option("--pareto", "pareto_k", type=int, default=None,
              help="Extract K models spread along the search's accuracy-cost front instead, into --out "
                   "[default: RUN_DIR/pareto/] with a pareto.json.")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print only the subnet's metadata as JSON.")
def extract(run_dir: str, arch_str: str | None, out_path: str | None, recal: int | None, pareto_k: int | None,
            device: str, as_json: bool) -> None:
    """The search's winner (or --arch) as a standalone network with the supernet's weights."""
    from edgenas.errors import ConfigError
    from edgenas.pipeline import ExtractJob, extract_pareto
    from edgenas.pipeline import extract as extract_stage

    job = ExtractJob(run_dir=run_dir, arch=arch_str, out=out_path, recal=recal, device=device)
    if pareto_k is not None:
        if arch_str is not None:
            raise ConfigError("give --arch or --pareto, not both")
        outcomes = extract_pareto(job, pareto_k)
        if as_json:
            click.echo(json.dumps([o.to_json() for o in outcomes], indent=2))
            return
        for o in outcomes:
            front = o.meta["front"]
            click.echo(f"{o.path}: {o.arch} {front['cost_key']} {front['cost']:.4g}, search score "
                       f"{front['score']:.4g}, inherited test accuracy {o.test_accuracy:.2%}")
        click.echo(f"wrote {len(outcomes)} subnets and {outcomes[0].path.parent / 'pareto.json'}")
        return
    result = extract_stage(job)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    click.echo(f"extracted {result.arch} ({result.params / 1e6:.3f} M params) from {result.supernet_path}")
    click.echo(f"inherited weights, BN recalibrated: test accuracy {result.test_accuracy:.2%} "
               f"on {result.test_count} {result.data} test images")
    click.echo(f"wrote {result.path}")
