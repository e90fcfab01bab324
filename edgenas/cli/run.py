"""`edgenas run`: the whole pipeline in one run directory."""

from __future__ import annotations

import click

from edgenas.cli._app import (
    SPACE_NAME,
    _config_option,
    _console,
    cli,
)


# ----- run --------------------------------------------------------------------------------------------------
@cli.command("run")
@_config_option
@click.option("--profile", "profile_name", required=True, help="Hardware profile (edgenas profile list).")
@click.option("--data", "data_name", default="fashion-mnist", show_default=True)
@click.option("--data-root", default=None)
@click.option("--latency-ms", type=float, default=None, help="Latency budget [default: the profile's].")
@click.option("--latency-quantile", type=float, default=None,
              help="Latency budget as a quantile of the space's predicted latency on this target (see search).")
@click.option("--budgets", "budgets_text", multiple=True, metavar="MS[,MS...]",
              help="Several latency budgets (table ms), comma-separated or repeated: one NSGA-II search under the "
                   "loosest, then one fine-tuned, exported and checked bundle per budget, with budgets.csv/png.")
@click.option("--budget-quantiles", "quantiles_text", multiple=True, metavar="Q[,Q...]",
              help="Like --budgets, as quantiles of the space's predicted latency on this target (e.g. 0.2,0.5).")
@click.option("--strategy", default=None,
              help="Search strategy (evolution, nsga2) [default: nsga2 with several budgets, else evolution].")
@click.option("--mflops", type=float, default=None, help="FLOPs budget, 1 multiply-add = 1 FLOP.")
@click.option("--params-m", type=float, default=None, help="Parameter budget in millions.")
@click.option("--space", "space_name", type=SPACE_NAME, default="mbv3", show_default=True)
@click.option("--width-mult", type=float, default=0.5, show_default=True)
@click.option("--epochs", type=int, default=3, show_default=True, help="Supernet training epochs.")
@click.option("--weights", type=click.Choice(["auto", "separate", "shared"]), default="auto", show_default=True,
              help="Supernet weights (auto = shared where the space supports it).")
@click.option("--recipe", type=click.Choice(["single", "sandwich"]), default="single", show_default=True,
              help="Supernet training recipe.")
@click.option("--train-limit", type=int, default=None, help="Train the supernet and fine-tune on N images.")
@click.option("--population", type=int, default=16, show_default=True)
@click.option("--generations", type=int, default=4, show_default=True)
@click.option("--topk", type=int, default=5, show_default=True)
@click.option("--mutations", type=int, default=6, show_default=True)
@click.option("--crossovers", type=int, default=6, show_default=True)
@click.option("--val-limit", type=int, default=1000, show_default=True,
              help="Score search candidates on the first N validation images.")
@click.option("--shift/--no-shift", default=True, show_default=True)
@click.option("--finetune-epochs", type=int, default=2, show_default=True)
@click.option("--int8/--no-int8", default=True, show_default=True)
@click.option("--int8-tolerance", type=float, default=1.0, show_default=True,
              help="Largest top-1 accuracy drop (points) of the int8 model below fp32 that still ships it.")
@click.option("--name", default=None, help="Bundle name [default: the run directory's name].")
@click.option("--export-dir", type=click.Path(file_okay=False), default=None,
              help="Where the bundle folder goes [default: OUT/export].")
@click.option("--tables-dir", default="latency_tables", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True, help="CPU threads for training.")
@click.option("--device", default="auto", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/run", show_default=True)
@click.option("--resume", is_flag=True, help="Continue an interrupted run at its first unfinished stage.")
def run_cmd(profile_name: str, data_name: str, data_root: str | None, latency_ms: float | None,
            latency_quantile: float | None, budgets_text: tuple[str, ...], quantiles_text: tuple[str, ...],
            strategy: str | None, mflops: float | None, params_m: float | None, space_name: str,
            width_mult: float, epochs: int, weights: str, recipe: str, train_limit: int | None, population: int,
            generations: int, topk: int, mutations: int, crossovers: int, val_limit: int, shift: bool,
            finetune_epochs: int, int8: bool, int8_tolerance: float,
            name: str | None, export_dir: str | None, tables_dir: str, seed: int, threads: int, device: str,
            out_dir: str, resume: bool) -> None:
    """The whole pipeline in one run directory: train, latency table, search, extract, fine-tune, export, check.

    Each stage is the command of the same name with its files under --out; `stages.json` records
    what is done, so --resume continues at the first unfinished stage (training, search and
    fine-tuning also resume inside the stage). Ends with a summary table and report.md.
    """
    from edgenas.pipeline import RunJob
    from edgenas.pipeline import run as run_pipeline

    job = RunJob(profile=profile_name, data=data_name, data_root=data_root, latency_ms=latency_ms,
                 latency_quantile=latency_quantile, mflops=mflops, params_m=params_m, space=space_name,
                 width_mult=width_mult, epochs=epochs, weights=weights, recipe=recipe,  # type: ignore[arg-type]
                 train_limit=train_limit, population=population, generations=generations, topk=topk,
                 mutations=mutations, crossovers=crossovers, val_limit=val_limit, shift=shift,
                 finetune_epochs=finetune_epochs, int8=int8, int8_tolerance=int8_tolerance,
                 budgets=_numbers(budgets_text, "--budgets"), budget_quantiles=_numbers(quantiles_text,
                                                                                       "--budget-quantiles"),
                 strategy=strategy, name=name,
                 export_dir=export_dir, tables_dir=tables_dir,
                 seed=seed, threads=threads, device=device, out=out_dir, resume=resume)
    outcome = run_pipeline(job, _console(epochs=epochs, generations=generations))
    click.echo("")
    width = max((len(k) for k, _ in outcome.summary), default=10)
    for key, value in outcome.summary:
        click.echo(f"{key:<{width}}  {value.replace('`', '')}")
    if outcome.budgets is not None:
        click.echo("\nbudget          architecture      predicted  fine-tuned  measured   check   bundle")
        for r in outcome.budgets:
            shared = f" (= {r['shared_with']})" if r.get("shared_with") else ""
            click.echo(f"{r['label']:<15} {r.get('arch_id') or '-'!s:<17} {_ms(r.get('predicted_ms'))}  "
                       f"{_pct(r.get('finetuned_test_accuracy'))}  {_ms(r.get('measured_ms'))}  "
                       f"{r.get('check') or '-'!s:<7} {r.get('bundle') or '-'}{shared}")
        click.echo(f"\nbundles under {outcome.bundle}; budgets.csv, budgets.png and report {outcome.report}; "
                   f"{outcome.seconds:.0f} s in all")
        return
    click.echo(f"\nbundle {outcome.bundle}; report {outcome.report}; {outcome.seconds:.0f} s in all")


def _numbers(values: tuple[str, ...], option: str) -> tuple[float, ...] | None:
    """``("0.1,0.2", "0.4")`` -> ``(0.1, 0.2, 0.4)``; ``()`` -> ``None``; anything else one line."""
    if not values:
        return None
    from edgenas.errors import ConfigError

    out = []
    for part in (p.strip() for v in values for p in v.split(",")):
        try:
            out.append(float(part))
        except ValueError:
            raise ConfigError(f"{option} takes numbers separated by commas, not {part[:40]!r}") from None
    return tuple(out)


def _ms(x: object) -> str:
    return f"{x:8.4f} ms" if isinstance(x, (int, float)) else f"{'-':>11}"


def _pct(x: object) -> str:
    return f"{x:9.2%}" if isinstance(x, (int, float)) else f"{'-':>9}"
