"""`edgenas train` (a supernet) and `edgenas eval` (score architectures; the rank check)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import click

from edgenas.cli._app import (
    SPACE_NAME,
    _config_option,
    _console,
    cli,
)


# ----- train ---------------------------------------------------------------------------------------------
def _train_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                     help="YAML with 'space', 'data' and 'train' sections; options given here override it."),
        click.option("--space", "space_name", type=SPACE_NAME, default=None,
                     help="Search space (mbv3, spos or a registered one). [default: mbv3]"),
        click.option("--preset", default=None,
                     help="Space preset; default by input size (small < 112 px <= imagenet)."),
        click.option("--width-mult", type=float, default=None, help="Scale every width of the space."),
        click.option("--data", "data_name", default=None,
                     help="Dataset name, see `edgenas data list`. [default: fashion-mnist]"),
        click.option("--data-root", default=None, help="Data directory (else $EDGENAS_DATA, then system paths)."),
        click.option("--resize", type=int, default=None, help="Resize inputs to this square side."),
        click.option("--train-limit", type=int, default=None, help="Use only the first N training images."),
        click.option("--epochs", type=int, default=None),
        click.option("--batch-size", type=int, default=None),
        click.option("--lr", type=float, default=None),
        click.option("--momentum", type=float, default=None),
        click.option("--nesterov/--no-nesterov", default=None),
        click.option("--weight-decay", type=float, default=None),
        click.option("--schedule", type=click.Choice(["cosine", "linear"]), default=None),
        click.option("--warmup-steps", type=int, default=None),
        click.option("--label-smoothing", type=float, default=None),
        click.option("--grad-clip", type=float, default=None),
        click.option("--amp/--no-amp", default=None, help="Mixed precision (CUDA only)."),
        click.option("--channels-last/--no-channels-last", default=None),
        click.option("--sampling", type=click.Choice(["uniform", "flops"]), default=None,
                     help="Uniform single-path, or FLOPs-bin-uniform as in SPOS."),
        click.option("--weights", type=click.Choice(["auto", "separate", "shared"]), default=None,
                     help="Supernet weights: one set per choice (SPOS) or one per layer that choices slice "
                          "(OFA/BigNAS). [default: auto = shared where the space supports it]"),
        click.option("--recipe", type=click.Choice(["single", "sandwich"]), default=None,
                     help="One sampled path per step, or largest + smallest + N random paths. [default: single]"),
        click.option("--sandwich-random", type=int, default=None, help="Random paths per sandwich step. [default: 2]"),
        click.option("--distill/--no-distill", default=None,
                     help="Sandwich: the other paths learn from the largest path's predictions. [default: on]"),
        click.option("--kd-temperature", type=float, default=None, help="In-place distillation temperature."),
        click.option("--steps-per-epoch", type=int, default=None, help="Cap on steps per epoch (epoch slices)."),
        click.option("--val-archs", type=int, default=None, help="Sampled subnets validated after each epoch."),
        click.option("--seed", type=int, default=None),
        click.option("--device", default=None, help="auto, cpu, cuda, cuda:N. [default: auto]"),
        click.option("--threads", type=int, default=None,
                     help="CPU threads for torch (1 is fastest on a busy machine). [default: all cores]"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@cli.command()
@_train_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/train", show_default=True,
              help="Run directory: supernet.pt, supernet.json, history.json, config.json.")
@click.option("--resume", is_flag=True, help="Continue the checkpoint in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print only the final results as JSON.")
def train(config_file: str | None, space_name: str | None, preset: str | None, width_mult: float | None,
          data_name: str | None, data_root: str | None, resize: int | None, train_limit: int | None,
          out_dir: str, resume: bool, as_json: bool, **train_opts: Any) -> None:
    """Train a weight-sharing supernet (shared or separate weights; single-path or sandwich recipe)."""
    from edgenas.config import load_yaml
    from edgenas.pipeline import TrainJob
    from edgenas.pipeline import train as train_stage

    options = {"data": dict(name=data_name, root=data_root, resize=resize, train_limit=train_limit),
               "space": dict(name=space_name, preset=preset, width_mult=width_mult), "train": train_opts}
    job = TrainJob.from_sections(load_yaml(config_file) if config_file else {}, where=config_file or "options",
                                 overrides=options, out=out_dir, resume=resume)
    result = train_stage(job, _console(quiet=as_json, epochs=job.train.epochs))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    last = result.history[-1] if result.history else None
    if last is not None:
        click.echo(f"done: {result.checkpoint} | epoch {last.epoch + 1}: val accuracy of "
                   f"{len(last.val_accuracy)} sampled subnets {last.val_mean:.2%}")


@cli.command("eval")
@_config_option
@click.option("--supernet", "ckpt", type=click.Path(dir_okay=False), required=True, help="Supernet checkpoint.")
@click.option("--arch", "arch_strs", multiple=True, help="Architecture string(s) to score.")
@click.option("--sample", type=int, default=0, help="Also score N uniformly sampled architectures.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--split", type=click.Choice(["val", "test"]), default="test", show_default=True)
@click.option("--data", "data_name", default=None, help="Dataset (default: the one the supernet was trained on).")
@click.option("--data-root", default=None)
@click.option("--recal", type=int, default=10, show_default=True, help="Training batches for BN recalibration.")
@click.option("--rank-check", type=int, default=0,
              help="Train N architectures spread over the MAC range alone and correlate with the supernet's scores.")
@click.option("--rank-epochs", type=int, default=3, show_default=True, help="Rank check: stand-alone epochs.")
@click.option("--rank-train-limit", type=int, default=None,
              help="Rank check: stand-alone training images [default: the supernet's training slice].")
@click.option("--rank-out", type=click.Path(file_okay=False), default=None,
              help="Rank check: cache of trained architectures (resumable) [default: SUPERNET_DIR/rank_check].")
@click.option("--threads", type=int, default=None, help="CPU threads for torch.")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def eval_cmd(ckpt: str, arch_strs: tuple[str, ...], sample: int, seed: int, split: str, data_name: str | None,
             data_root: str | None, recal: int, rank_check: int, rank_epochs: int, rank_train_limit: int | None,
             rank_out: str | None, threads: int | None, device: str, as_json: bool) -> None:
    """Score architectures of a trained supernet (BN recalibrated) on the test or val split.

    With --rank-check N: the one command to know whether to trust a supernet. N architectures
    spread over the space's MAC range are trained alone with a short recipe; Kendall tau and
    Spearman rho between their inherited validation accuracy and stand-alone test accuracy are
    printed with 95% bootstrap intervals.
    """
    import numpy as np

    from edgenas.pipeline.evaluate import EvalJob, RankCheckJob, evaluate
    from edgenas.pipeline.evaluate import rank_check as check_ranks
    from edgenas.proxy import accuracy_stderr

    if rank_check:
        check = check_ranks(RankCheckJob(supernet=ckpt, count=rank_check, epochs=rank_epochs,
                                         train_limit=rank_train_limit, out=rank_out, seed=seed, data=data_name,
                                         data_root=data_root, recal=recal, threads=threads, device=device),
                            _console(quiet=as_json))
        if as_json:
            click.echo(json.dumps(check.to_json(), indent=2))
            return
        k, r = check.kendall, check.spearman
        click.echo(f"Kendall tau {k[0]:.3f} (95% CI {k[1]:.3f} .. {k[2]:.3f})  Spearman rho {r[0]:.3f} "
                   f"(95% CI {r[1]:.3f} .. {r[2]:.3f})  over {len(check.entries)} architectures")
        for note in check.notes:
            click.echo(f"note: {note}", err=True)
        click.echo(check.verdict())
        return
    outcome = evaluate(EvalJob(supernet=ckpt, archs=arch_strs, sample=sample, seed=seed, split=split,  # type: ignore[arg-type]
                               data=data_name, data_root=data_root, recal=recal, threads=threads, device=device))
    scores = outcome.scores
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(s) for s in scores], indent=2))
        return
    for s in scores:
        click.echo(f"{s.arch}  {split} accuracy {s.accuracy:.2%} ±{accuracy_stderr(s.accuracy, s.count):.2%} "
                   f"on {s.count} images  loss {s.loss:.4f}")
    accs = [s.accuracy for s in scores]
    if len(accs) > 1:
        click.echo(f"mean {np.mean(accs):.2%}  min {min(accs):.2%}  max {max(accs):.2%}  "
                   f"(chance {1 / outcome.num_classes:.0%})")
