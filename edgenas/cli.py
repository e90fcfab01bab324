"""Command line: one thin command per pipeline stage.

Each command parses options, builds typed configs and calls one library function. Errors caused by
input (:class:`EdgenasError`) become ``error: <one line>`` on stderr and a non-zero exit; progress
goes to stderr so ``--json`` output on stdout stays machine-readable.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgenas import __version__
from edgenas.errors import ConfigError, EdgenasError

__all__ = ["cli", "main"]


class _Group(click.Group):
    """Click group that reports EdgenasError as one line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgenasError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: the last completed checkpoint is kept; rerun with --resume", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgenas")
def cli() -> None:
    """edgenas: hardware-aware NAS that ends in deployable models.

    Stages, in data-flow order: data, space, train, eval.
    """


# ----- data ---------------------------------------------------------------------------------------------
@cli.group()
def data() -> None:
    """Datasets in the registry."""


@data.command("list")
def data_list() -> None:
    """List dataset names."""
    from edgenas.data import list_datasets

    for name in list_datasets():
        click.echo(name)


@data.command("show")
@click.argument("name")
@click.option("--root", type=click.Path(file_okay=False), default=None, help="Data directory (else $EDGENAS_DATA).")
def data_show(name: str, root: str | None) -> None:
    """Load a dataset and print its split sizes, classes and normalisation."""
    from edgenas.data import DataConfig, load_dataset

    splits = load_dataset(DataConfig(name=name, root=root))
    click.echo(f"{splits.name}: train {len(splits.train)}  val {len(splits.val)}  test {len(splits.test)}")  # type: ignore[arg-type]
    click.echo(f"input {splits.in_channels}x{splits.input_size[0]}x{splits.input_size[1]}, "
               f"{splits.num_classes} classes: {', '.join(splits.class_names)}")
    click.echo(f"mean {tuple(round(m, 4) for m in splits.mean)}  std {tuple(round(s, 4) for s in splits.std)}")


# ----- space ----------------------------------------------------------------------------------------------
@cli.group()
def space() -> None:
    """Search spaces: list, describe, sample."""


@space.command("list")
def space_list() -> None:
    """List search space names."""
    from edgenas.space import list_spaces

    for name in list_spaces():
        click.echo(name)


@space.command("show")
@click.argument("name")
@click.option("--preset", default="small", show_default=True,
              help="Space preset: small (28-32 px) or imagenet (224 px).")
@click.option("--input-size", type=int, default=28, show_default=True, help="Input side in pixels, for MACs.")
def space_show(name: str, preset: str, input_size: int) -> None:
    """Print the layers, their choices and the MAC range of a space."""
    from edgenas.space import create_space

    sp = create_space(name, preset)
    hw = (input_size, input_size)
    table = sp.macs_table(hw)
    fixed = sp.fixed_macs(hw, 1, 10)
    click.echo(f"{sp.name}@v{sp.version} preset={preset} config={sp.config_hash()}  "
               f"{len(sp.layers)} layers, {sp.size:.3g} architectures")
    for layer, (c, h, w) in zip(sp.layers, sp.layer_input_shapes(hw)):
        click.echo(f"  layer {layer.index:2d} stage {layer.stage} in {c}x{h}x{w} -> {layer.out_channels} "
                   f"stride {layer.stride}: {' '.join(layer.choices)}")
    lo = fixed + sum(min(r) for r in table)
    hi = fixed + sum(max(r) for r in table)
    click.echo(f"MACs at {input_size}x{input_size} (1 multiply-add = 1 FLOP, 1 channel, 10 classes): "
               f"{lo / 1e6:.2f}M .. {hi / 1e6:.2f}M")


@space.command("sample")
@click.argument("name")
@click.option("-n", "count", type=int, default=5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--preset", default="small", show_default=True)
def space_sample(name: str, count: int, seed: int, preset: str) -> None:
    """Print uniformly sampled architectures (string, id, labels)."""
    import numpy as np

    from edgenas.space import create_space

    sp = create_space(name, preset)
    rng = np.random.default_rng(seed)
    for _ in range(count):
        arch = sp.sample(rng)
        click.echo(f"{arch}  {arch.arch_id}  {sp.describe(arch)}")


# ----- train ---------------------------------------------------------------------------------------------
def _train_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                     help="YAML with 'space', 'data' and 'train' sections; options given here override it."),
        click.option("--space", "space_name", default=None, help="Search space (mbv3, spos). [default: mbv3]"),
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


def _merge(section: dict[str, Any], **cli_values: Any) -> dict[str, Any]:
    return {**section, **{k: v for k, v in cli_values.items() if v is not None}}


@cli.command()
@_train_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/train", show_default=True,
              help="Run directory: supernet.pt, supernet.json, history.json, config.json.")
@click.option("--resume", is_flag=True, help="Continue the checkpoint in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print only the final results as JSON.")
def train(config_file: str | None, space_name: str | None, preset: str | None, width_mult: float | None,
          data_name: str | None, data_root: str | None, resize: int | None, train_limit: int | None,
          out_dir: str, resume: bool, as_json: bool, **train_opts: Any) -> None:
    """Train a weight-sharing supernet with SPOS uniform single-path sampling."""
    from edgenas.config import from_mapping, load_yaml, to_mapping
    from edgenas.data import DataConfig, load_dataset
    from edgenas.io import atomic_write_json
    from edgenas.space import create_space, default_preset, space_to_dict
    from edgenas.train import TrainConfig, train_supernet

    file_cfg = load_yaml(config_file) if config_file else {}
    unknown = sorted(set(file_cfg) - {"space", "data", "train"})
    if unknown:
        raise ConfigError(f"{config_file}: unknown section '{unknown[0]}' (known: space, data, train)")
    where = config_file or "options"
    data_cfg = from_mapping(DataConfig, _merge(file_cfg.get("data") or {}, name=data_name, root=data_root,
                                               resize=resize, train_limit=train_limit), where=f"{where}: data")
    train_cfg = from_mapping(TrainConfig, _merge(file_cfg.get("train") or {}, **train_opts), where=f"{where}: train")
    splits = load_dataset(data_cfg)
    space_section = dict(file_cfg.get("space") or {})
    name = space_name or space_section.pop("name", "mbv3")
    space_section.pop("name", None)
    chosen_preset = preset or space_section.pop("preset", None) or default_preset(splits.input_size)
    space_section.pop("preset", None)
    if width_mult is not None:
        space_section["width_mult"] = width_mult
    sp = create_space(name, chosen_preset, **space_section)

    out = Path(out_dir)
    if not resume:
        if (out / "supernet.pt").exists():
            raise EdgenasError(f"{out / 'supernet.pt'} exists; pass --resume to continue it or choose another --out")
        atomic_write_json(out / "config.json", {"space": {**space_to_dict(sp), "preset": chosen_preset},
                                                "data": to_mapping(data_cfg), "train": to_mapping(train_cfg)})
    reporter = _TrainReporter(quiet=as_json, epochs=train_cfg.epochs)
    with reporter:
        result = train_supernet(sp, splits, train_cfg, out, data_config=data_cfg, resume=resume,
                                on_step=reporter.step, on_epoch=reporter.epoch)
    summary = {"checkpoint": str(result.checkpoint), "space": sp.name, "preset": chosen_preset,
               "data": splits.name, "epochs": [dataclasses.asdict(h) for h in result.history]}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        last = result.history[-1] if result.history else None
        if last is not None:
            click.echo(f"done: {result.checkpoint} | epoch {last.epoch + 1}: val accuracy of "
                       f"{len(last.val_accuracy)} sampled subnets {last.val_mean:.2%}")


class _TrainReporter:
    """Progress bar with loss and ETA on a terminal; one line per epoch otherwise (CI logs)."""

    def __init__(self, quiet: bool, epochs: int) -> None:
        self.quiet, self.epochs = quiet, epochs
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> _TrainReporter:
        if not self.quiet and sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                                     TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.3f}"),
                                     TimeRemainingColumn(), transient=True)
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()

    def step(self, epoch: int, step: int, total: int, loss: float) -> None:
        if self.progress is None:
            return
        if self.task is None or step == 1:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task("train", total=total, epoch=f"{epoch + 1}/{self.epochs}", loss=loss)
        self.progress.update(self.task, completed=step, loss=loss)

    def epoch(self, stats: Any) -> None:
        if self.quiet:
            return
        val = f" | val acc (sampled subnets) {stats.val_mean:.2%}" if stats.val_accuracy else ""
        click.echo(f"epoch {stats.epoch + 1}/{self.epochs} lr {stats.lr:.4f} | train loss {stats.train_loss:.4f} "
                   f"acc {stats.train_accuracy:.2%} | {stats.images_per_s:.0f} img/s{val}", err=True)


@cli.command("eval")
@click.option("--supernet", "ckpt", type=click.Path(dir_okay=False), required=True, help="Supernet checkpoint.")
@click.option("--arch", "arch_strs", multiple=True, help="Architecture string(s) to score.")
@click.option("--sample", type=int, default=0, help="Also score N uniformly sampled architectures.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--split", type=click.Choice(["val", "test"]), default="test", show_default=True)
@click.option("--data", "data_name", default=None, help="Dataset (default: the one the supernet was trained on).")
@click.option("--data-root", default=None)
@click.option("--recal", type=int, default=10, show_default=True, help="Training batches for BN recalibration.")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def eval_cmd(ckpt: str, arch_strs: tuple[str, ...], sample: int, seed: int, split: str, data_name: str | None,
             data_root: str | None, recal: int, device: str, as_json: bool) -> None:
    """Score architectures of a trained supernet (BN recalibrated) on the test or val split."""
    import numpy as np

    from edgenas.config import from_mapping
    from edgenas.data import DataConfig, load_dataset
    from edgenas.evaluate import score_archs
    from edgenas.supernet import load_checkpoint
    from edgenas.train import resolve_device

    supernet, meta, _ = load_checkpoint(ckpt)
    saved = dict(meta.get("data") or {})
    if data_name is not None and data_name != saved.get("name"):
        saved = {"name": data_name}
    if data_root is not None:
        saved["root"] = data_root
    data_cfg = from_mapping(DataConfig, {**saved, "train_limit": None}, where=f"{ckpt}: data")
    splits = load_dataset(data_cfg)
    space = supernet.space
    archs = [space.parse(s) for s in arch_strs]
    rng = np.random.default_rng(seed)
    archs += [space.sample(rng) for _ in range(sample)]
    if not archs:
        raise EdgenasError("nothing to score: give --arch STR and/or --sample N")
    scores = score_archs(supernet, archs, splits, split=split, recal=recal,  # type: ignore[arg-type]
                         device=resolve_device(device))
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(s) for s in scores], indent=2))
        return
    for s in scores:
        click.echo(f"{s.arch}  {split} accuracy {s.accuracy:.2%} on {s.count} images  loss {s.loss:.4f}")
    accs = [s.accuracy for s in scores]
    if len(accs) > 1:
        click.echo(f"mean {np.mean(accs):.2%}  min {min(accs):.2%}  max {max(accs):.2%}  "
                   f"(chance {1 / splits.num_classes:.0%})")


def main() -> None:
    cli(prog_name="edgenas")


if __name__ == "__main__":
    main()
