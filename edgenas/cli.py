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

    Stages, in data-flow order: data, space, profile, train, eval, search.
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


# ----- profile ---------------------------------------------------------------------------------------------
def _parse_shape(text: str | None) -> tuple[int, int, int] | None:
    """``C,H,W`` (or ``CxHxW``) into a tuple; anything else is a one-line error."""
    if text is None:
        return None
    parts = text.replace("x", ",").replace("X", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or any(d < 1 for d in shape):
        raise ConfigError(f"--input-shape must be three positive integers C,H,W (e.g. 1,28,28), not {text!r}")
    return shape  # type: ignore[return-value]


def _protocol_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for name, text in reversed((("warmup", "untimed runs per trial"), ("repeats", "timed runs per trial"),
                                ("trials", "interleaved passes over all models; more trials average out a "
                                           "machine whose speed drifts"))):
        fn = click.option(f"--{name}", type=int, default=None, help=f"Override the profile's {text}.")(fn)
    return fn


def _with_protocol(p: Any, warmup: int | None, repeats: int | None, trials: int | None) -> Any:
    """The profile with its measurement protocol overridden; not part of the latency hash, so a table
    measured more carefully is still a table for the same target."""
    given = {k: v for k, v in (("warmup", warmup), ("repeats", repeats), ("trials", trials)) if v is not None}
    return dataclasses.replace(p, measure=dataclasses.replace(p.measure, **given)) if given else p


def _warn(lines: list[str]) -> None:
    for line in lines:
        click.echo(f"warning: {line}", err=True)


def _progress(message: str) -> None:
    click.echo(message, err=True)


@cli.group()
def profile() -> None:
    """Hardware profiles, latency lookup tables and latency measurement."""


@profile.command("list")
def profile_list() -> None:
    """List the hardware profiles found (name, device, runtime, precision, input shape, file)."""
    from edgenas.hardware.profile import list_profiles, load_profile

    found = list_profiles()
    if not found:
        click.echo("no hardware profiles found (add NAME.yaml to ./hardware_profiles or $EDGENAS_PROFILES)")
    for name, path in found.items():
        try:
            p = load_profile(path)
            shape = "x".join(str(d) for d in p.input_shape)
            click.echo(f"{name:<16} {p.device:<5} {p.runtime:<12} {p.precision:<5} {shape:<10} {path}")
        except EdgenasError as exc:
            click.echo(f"{name:<16} invalid: {exc}")


@profile.command("show")
@click.argument("name")
@click.option("--input-shape", default=None, help="Override the input shape, C,H,W.")
def profile_show(name: str, input_shape: str | None) -> None:
    """Print a profile's settings and latency hash, or (for a .json file) a latency table's summary."""
    import yaml

    from edgenas.hardware.profile import load_profile

    if name.endswith(".json"):
        from edgenas.hardware.table import LatencyTable, environment_warnings

        table = LatencyTable.load(name)
        _warn(environment_warnings(table))
        env, cal = table.environment, table.calibration
        click.echo(table.summary())
        click.echo(f"space {table.space['name']} config {table.space_hash}; profile {table.profile_name} "
                   f"({table.profile_hash}); method {table.method}; statistic {table.statistic}")
        click.echo(f"measured {env.get('date')} on {env.get('cpu')} ({env.get('usable_cores')} usable cores), "
                   f"{env.get('runtime')} {(env.get('runtime_versions') or {}).get(env.get('runtime'), '')}, "
                   f"{env.get('threads')} thread(s)")
        click.echo(f"calibration: measured = {cal.scale:.4f} x raw {cal.offset_ms:+.4f} ms on {cal.n} subnets; "
                   f"built in {table.build_seconds:.1f} s, {table.query_us or float('nan'):.2f} us per prediction")
        return
    p = load_profile(name, _parse_shape(input_shape))
    click.echo(yaml.safe_dump(p.to_json(), sort_keys=False).rstrip())
    click.echo(f"latency_hash: {p.latency_hash()}")


@profile.command("build")
@click.option("--profile", "profile_name", required=True,
              help="Profile name (see `edgenas profile list`) or YAML path.")
@click.option("--space", "space_name", default="mbv3", show_default=True)
@click.option("--preset", default=None, help="Space preset; default by input size (small < 112 px <= imagenet).")
@click.option("--width-mult", type=float, default=None, help="Scale every width of the space.")
@click.option("--input-shape", default=None, help="Network input C,H,W (default: the profile's).")
@click.option("--num-classes", type=int, default=10, show_default=True)
@click.option("--calib", type=int, default=30, show_default=True,
              help="Uniformly sampled subnets measured end to end for the calibration (plus all-min, all-max).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--method", type=click.Choice(["context", "isolated", "network"]), default=None,
              help="How entries are timed: each block behind a context prefix, alone, or as a one-layer change "
                   "of a whole subnet. [default: network for int8 profiles, context otherwise]")
@click.option("--out", default=None,
              help="Table file. [default: latency_tables/<profile>_<space>_<preset>_<H>x<W>.json]")
@click.option("--force", is_flag=True, help="Overwrite an existing table file.")
@_protocol_options
def profile_build(profile_name: str, space_name: str, preset: str | None, width_mult: float | None,
                  input_shape: str | None, num_classes: int, calib: int, seed: int, method: str, out: str | None,
                  force: bool, warmup: int | None, repeats: int | None, trials: int | None) -> None:
    """Measure a latency lookup table for a space on a profile's target and calibrate it."""
    from edgenas.hardware.profile import load_profile
    from edgenas.hardware.table import build_table, default_method
    from edgenas.space import create_space, default_preset

    p = _with_protocol(load_profile(profile_name, _parse_shape(input_shape)), warmup, repeats, trials)
    if num_classes < 1:
        raise ConfigError(f"--num-classes must be >= 1, not {num_classes}")
    _, h, w = p.input_shape
    chosen = preset or default_preset((h, w))
    overrides = {"width_mult": width_mult} if width_mult is not None else {}
    sp = create_space(space_name, chosen, **overrides)
    width = f"_w{width_mult:g}" if width_mult is not None and width_mult != 1.0 else ""
    path = Path(out) if out else Path("latency_tables") / f"{p.name}_{sp.name}_{chosen}{width}_{h}x{w}.json"
    if path.exists() and not force:
        raise EdgenasError(f"{path} exists; pass --force to rebuild it or choose another --out")
    method = method or default_method(p)
    table = build_table(sp, p, num_classes=num_classes, calib_samples=calib, seed=seed, method=method,  # type: ignore[arg-type]
                        on_progress=_progress)
    table.save(path)
    click.echo(f"wrote {path}: {len(sp.layers)} layers, built in {table.build_seconds:.1f} s, "
               f"{table.query_us:.2f} us per prediction")
    click.echo(f"next: edgenas profile validate {path}")


@profile.command("validate")
@click.argument("table_path", metavar="TABLE")
@click.option("--n", "count", type=int, default=50, show_default=True, help="Fresh subnets measured end to end.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--plot", default=None, help="Scatter plot PNG. [default: TABLE with .png]")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@_protocol_options
def profile_validate(table_path: str, count: int, seed: int, plot: str | None, as_json: bool, warmup: int | None,
                     repeats: int | None, trials: int | None) -> None:
    """Measure fresh subnets end to end, compare with the table, store the figures in it."""
    from edgenas.hardware.table import LatencyTable, environment_warnings, validate_table
    from edgenas.space import space_from_dict

    table = LatencyTable.load(table_path)
    sp = space_from_dict(table.space)
    _warn(environment_warnings(table))
    p = _with_protocol(table.profile_object(), warmup, repeats, trials)
    plot_path = Path(plot) if plot else Path(table_path).with_suffix(".png")
    result = validate_table(table, sp, p, n=count, seed=seed, plot_path=plot_path, on_progress=_progress)
    table.save(table_path)
    if as_json:
        click.echo(json.dumps({k: v for k, v in dataclasses.asdict(result).items()
                               if k not in ("archs", "predicted_ms", "raw_ms", "measured_ms")}, indent=2))
        return
    click.echo(f"median relative error {result.median_rel_error:.2%}")
    click.echo(f"max relative error    {result.max_rel_error:.2%}")
    click.echo(f"within ±10%           {result.within_10pct:.0%} of {result.n}")
    click.echo(f"Kendall tau           {result.kendall_tau:.3f}")
    click.echo(f"mean signed error     {result.mean_signed_rel_error:+.2%} (bias)")
    click.echo(f"measurement noise     {result.noise_rel:.1%} (relative std of trial medians)")
    click.echo(f"end to end: {result.seconds_per_candidate:.2f} s per candidate; table: "
               f"{table.query_us or float('nan'):.2f} us per prediction")
    click.echo(f"plot {result.plot}; figures stored in {table_path}")


@profile.command("measure")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--profile", "profile_name", required=True, help="An onnxruntime profile name or YAML path.")
@click.option("--input-shape", default=None, help="Input C,H,W (or N,C,H,W); default: read from the model.")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON (raw samples left out).")
def profile_measure(model: str, profile_name: str, input_shape: str | None, as_json: bool) -> None:
    """Time any ONNX model on a profile's target with the profile's protocol."""
    from edgenas.hardware.measure import OrtMeasurer
    from edgenas.hardware.profile import load_profile

    p = load_profile(profile_name)
    if p.runtime != "onnxruntime":
        raise ConfigError(f"profile '{p.name}' runs {p.runtime}; measuring an ONNX file needs an onnxruntime profile")
    shape = None
    if input_shape is not None:
        try:
            shape = tuple(int(d) for d in input_shape.replace("x", ",").split(","))
        except ValueError:
            shape = ()
        if len(shape) not in (3, 4) or any(d < 1 for d in shape):
            raise ConfigError(f"--input-shape must be positive C,H,W or N,C,H,W, not {input_shape!r}")
    stats = OrtMeasurer(p).measure_onnx(model, shape)
    if as_json:
        data = {k: v for k, v in stats.to_json().items() if k != "samples_ms"}
        click.echo(json.dumps({"model": model, "profile": p.name, **data}, indent=2))
        return
    m = p.measure
    click.echo(f"{model} on {p.name} ({p.runtime}, {p.provider}, {p.threads} thread(s), batch {p.batch_size}, "
               f"{p.precision}): {m.trials} trials x {m.repeats} runs after {m.warmup} warm-up")
    click.echo(f"median {stats.median_ms:.4f} ms  p10 {stats.p10_ms:.4f}  p90 {stats.p90_ms:.4f}  "
               f"IQR {stats.iqr_ms:.4f}  n={stats.n}")


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
    """Train a weight-sharing supernet (shared or separate weights; single-path or sandwich recipe)."""
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


def _checkpoint_data_config(meta: dict[str, Any], where: str, data_name: str | None, data_root: str | None,
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


@cli.command("eval")
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

    from edgenas.data import load_dataset
    from edgenas.evaluate import score_archs
    from edgenas.proxy import accuracy_stderr
    from edgenas.supernet import load_checkpoint
    from edgenas.train import resolve_device

    if rank_check < 0 or rank_check in (1, 2):
        raise EdgenasError(f"--rank-check needs at least 3 architectures, not {rank_check}")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    supernet, meta, _ = load_checkpoint(ckpt)
    splits = load_dataset(_checkpoint_data_config(meta, ckpt, data_name, data_root))
    if rank_check:
        _rank_check(supernet, meta, splits, ckpt, rank_check, rank_epochs, rank_train_limit, rank_out, recal,
                    seed, threads, resolve_device(device), as_json)
        return
    space = supernet.space
    archs = [space.parse(s) for s in arch_strs]
    rng = np.random.default_rng(seed)
    archs += [space.sample(rng) for _ in range(sample)]
    if not archs:
        raise EdgenasError("nothing to score: give --arch STR, --sample N or --rank-check N")
    scores = score_archs(supernet, archs, splits, split=split, recal=recal,  # type: ignore[arg-type]
                         device=resolve_device(device))
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(s) for s in scores], indent=2))
        return
    for s in scores:
        click.echo(f"{s.arch}  {split} accuracy {s.accuracy:.2%} ±{accuracy_stderr(s.accuracy, s.count):.2%} "
                   f"on {s.count} images  loss {s.loss:.4f}")
    accs = [s.accuracy for s in scores]
    if len(accs) > 1:
        click.echo(f"mean {np.mean(accs):.2%}  min {min(accs):.2%}  max {max(accs):.2%}  "
                   f"(chance {1 / splits.num_classes:.0%})")


def _rank_check(supernet: Any, meta: dict[str, Any], splits: Any, ckpt: str, count: int, epochs: int,
                train_limit: int | None, out: str | None, recal: int, seed: int, threads: int | None,
                device: Any, as_json: bool) -> None:
    from edgenas.config import to_mapping
    from edgenas.finetune import FinetuneConfig, finetune
    from edgenas.proxy import rank_check, spread_archs

    limit = train_limit if train_limit is not None else (meta.get("data") or {}).get("train_limit")
    config = FinetuneConfig(epochs=epochs, from_scratch=True, patience=epochs, lr=0.1, train_limit=limit,
                            seed=seed, threads=threads)
    recipe = {**{k: v for k, v in to_mapping(config).items() if k != "threads"}, "data": splits.name}
    archs = spread_archs(supernet.space, count, tuple(splits.input_size), seed)

    def train_alone(arch: Any, where: Path) -> float:
        subnet = supernet.space.build_subnet(arch, splits.num_classes, splits.in_channels)
        return finetune(subnet, splits, config, where, device=device, resume=(where / "last.pt").exists()).test_accuracy

    def progress(i: int, n: int, entry: Any) -> None:
        if not as_json:
            click.echo(f"[{i}/{n}] {entry.arch}  {entry.macs / 1e6:.2f} M MACs  inherited (val) "
                       f"{entry.inherited:.2%}  alone (test) {entry.standalone:.2%}", err=True)

    where = Path(out) if out else Path(ckpt).resolve().parent / "rank_check"
    if not as_json:
        click.echo(f"rank check: {len(archs)} architectures trained alone ({epochs} epochs, "
                   f"{limit or 'all'} training images), cached in {where}", err=True)
    check = rank_check(supernet, splits, archs, where, train=train_alone, recipe=recipe, recal=recal, device=device,
                       on_arch=progress)
    if as_json:
        click.echo(json.dumps(check.to_json(), indent=2))
        return
    k, r = check.kendall, check.spearman
    click.echo(f"Kendall tau {k[0]:.3f} (95% CI {k[1]:.3f} .. {k[2]:.3f})  Spearman rho {r[0]:.3f} "
               f"(95% CI {r[1]:.3f} .. {r[2]:.3f})  over {len(check.entries)} architectures")
    for note in check.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(check.verdict())


# ----- search ---------------------------------------------------------------------------------------------
def _find_table(space: Any, profile: Any, tables_dir: Path) -> Path:
    """The table in ``tables_dir`` built for exactly this space config and profile (hashes match)."""
    import json as _json

    want_space, want_profile = space.config_hash(), profile.latency_hash()
    for path in sorted(tables_dir.glob("*.json")) if tables_dir.is_dir() else []:
        try:
            head = _json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (isinstance(head, dict) and (head.get("space") or {}).get("hash") == want_space
                and (head.get("profile") or {}).get("latency_hash") == want_profile):
            return path
    c, h, w = profile.input_shape
    width = getattr(space.config, "width_mult", 1.0)
    raise EdgenasError(
        f"no latency table in {tables_dir}/ for profile {profile.name} at {c}x{h}x{w} and this supernet's "
        f"{space.name} space; build it: edgenas profile build --profile {profile.name} --space {space.name} "
        f"--width-mult {width:g} --input-shape {c},{h},{w}"
    )


class _SearchProgress:
    """Generation, best score and ETA on a terminal; one line per generation otherwise."""

    def __init__(self, generations: int, quiet: bool) -> None:
        from edgenas.search import SearchHook

        outer = self

        class Hook(SearchHook):
            def on_generation_end(self, record: Any) -> None:
                outer.generation(record)

        self.hook = Hook()
        self.generations, self.quiet = generations, quiet
        self.seconds: list[float] = []

    def generation(self, record: Any) -> None:
        if self.quiet:
            return
        self.seconds.append(float(getattr(record, "seconds", 0.0)))
        left = self.generations - (record.generation + 1)
        eta = left * (sum(self.seconds) / len(self.seconds))
        best = record.topk[0] if record.topk else None
        best_text = "no legal candidate"
        if best is not None:
            best_text = f"best {best.score:.2%} {best.arch} ({best.metrics.get('latency_ms', float('nan')):.3f} ms)"
        click.echo(f"generation {record.generation + 1}/{self.generations} | {best_text} | ETA {eta:.0f} s", err=True)


def _check_latency_options(latency_ms: float | None, latency_quantile: float | None) -> None:
    """One latency budget at most, and a quantile in (0, 1): refused before any work starts."""
    if latency_quantile is None:
        return
    if latency_ms is not None:
        raise ConfigError("give --latency-ms or --latency-quantile, not both")
    from edgenas.hardware.table import check_quantile

    check_quantile(latency_quantile)


@cli.command()
@click.option("--profile", "profile_name", required=True, help="Hardware profile (edgenas profile list).")
@click.option("--supernet", "ckpt", type=click.Path(dir_okay=False), default=None, help="Supernet checkpoint.")
@click.option("--transfer-from", type=click.Path(dir_okay=False), default=None,
              help="Supernet trained on another dataset: its classifier is replaced for --data.")
@click.option("--freeze-backbone", is_flag=True, help="With --transfer-from: shift only the classifier.")
@click.option("--table", "table_path", type=click.Path(dir_okay=False), default=None,
              help="Latency table [default: the one in --tables-dir matching the space and profile].")
@click.option("--tables-dir", default="latency_tables", show_default=True)
@click.option("--latency-ms", type=float, default=None, help="Latency budget (overrides the profile's).")
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
           shift: bool, shift_update: str, shift_batches: int | None, shift_lr: float | None, device: str,
           out_dir: str, resume: bool, measure: bool, as_json: bool) -> None:
    """Evolutionary search under the profile's budgets, with Supernet Shifting by default."""
    from edgenas.config import from_mapping
    from edgenas.data import load_dataset
    from edgenas.hardware.profile import load_profile
    from edgenas.hardware.table import (
        LatencyTable,
        check_budgets,
        environment_warnings,
        loose_budget_warnings,
        quantile_budget,
    )
    from edgenas.search import EvolutionConfig, ShiftConfig, latency_cost, make_budget_constraints, run_search
    from edgenas.search.results import result_to_json
    from edgenas.supernet import load_checkpoint
    from edgenas.train import resolve_device

    if (ckpt is None) == (transfer_from is None):
        raise EdgenasError("give exactly one of --supernet CKPT or --transfer-from CKPT")
    _check_latency_options(latency_ms, latency_quantile)
    if transfer_from is not None and not shift:
        raise EdgenasError("--transfer-from needs shifting: with --no-shift the new classifier would never be trained")
    if freeze_backbone and transfer_from is None:
        raise EdgenasError("--freeze-backbone only applies with --transfer-from")
    source = ckpt or transfer_from
    assert source is not None
    _, meta, _ = load_checkpoint(source)
    if transfer_from is not None and data_name is None:
        raise EdgenasError("--transfer-from needs --data NEW (the dataset to transfer to)")
    sized = {"resize": resize} if resize is not None else {}
    data_cfg = _checkpoint_data_config(meta, source, data_name, data_root, val_limit=val_limit, **sized)
    data = load_dataset(data_cfg)
    notes: list[str] = []
    if transfer_from is not None:
        from edgenas.search import transfer_supernet

        transferred = transfer_supernet(transfer_from, data, seed=seed or 0)
        supernet, notes = transferred.supernet, list(transferred.notes)
    else:
        supernet, _, _ = load_checkpoint(source)
    space = supernet.space
    prof = load_profile(profile_name, input_shape=(data.in_channels, *data.input_size))
    table_file = Path(table_path) if table_path else _find_table(space, prof, Path(tables_dir))
    table = LatencyTable.load(table_file, space, prof)
    _warn(environment_warnings(table, prof))
    if latency_quantile is not None:
        latency_ms = quantile_budget(table, space, latency_quantile)
        if not as_json:
            click.echo(f"latency budget {latency_ms:.4g} ms: the {latency_quantile:g} quantile of predicted latency "
                       f"over 10,000 uniform architectures of {space.name} on {prof.name}", err=True)
    budgets = prof.with_budgets(latency_ms=latency_ms, mflops=mflops, params_m=params_m).budgets
    check_budgets(space, table, budgets, data.in_channels, data.num_classes, tuple(data.input_size))
    _warn(loose_budget_warnings(space, table, budgets))
    constraints = make_budget_constraints(
        space, input_hw=tuple(data.input_size), in_channels=data.in_channels, num_classes=data.num_classes,
        latency_ms=budgets.latency_ms, mflops=budgets.mflops, params_m=budgets.params_m,
        latency=latency_cost(table, space))
    evo_fields = {k: v for k, v in dict(population=population, generations=generations, topk=topk,
                                        mutations=mutations, mutation_prob=mutation_prob, crossovers=crossovers,
                                        seed=seed).items() if v is not None}
    evolution = from_mapping(EvolutionConfig, evo_fields, where="search options")
    shift_cfg = None
    if shift:
        shift_fields: dict[str, Any] = {"update": shift_update, "freeze_backbone": freeze_backbone}
        if transfer_from is None:  # a transferred classifier starts untrained: it keeps the larger defaults
            from edgenas.search.shifting import shift_budget_for

            shift_fields.update(shift_budget_for(meta, evolution.population * evolution.generations))
        if shift_batches is not None:
            shift_fields["batches_per_candidate"] = shift_batches
        if shift_lr is not None:
            shift_fields["lr"] = shift_lr
        shift_cfg = from_mapping(ShiftConfig, shift_fields, where="search options")
    progress = _SearchProgress(evolution.generations, quiet=as_json)
    for note in notes:
        if not as_json:
            click.echo(f"note: {note}", err=True)
    result = run_search(
        supernet, data, out_dir, constraints, shift=shift_cfg, evolution=evolution, device=resolve_device(device),
        resume=resume, hooks=[progress.hook], data_config=data_cfg,
        info={"profile": prof.name, "profile_hash": prof.latency_hash(), "table": str(table_file),
              "table_validation": table.validation.to_json() if table.validation else None,
              "source": str(source), "transfer": transfer_from is not None, "notes": notes,
              "budgets": {"latency_ms": budgets.latency_ms, "mflops": budgets.mflops, "params_m": budgets.params_m,
                          "latency_quantile": latency_quantile}})
    measured = None
    if measure:
        from edgenas.search.results import write_search_json
        from edgenas.search.verify import measure_finalists

        if not as_json:
            click.echo(f"measuring the top {len(result.topk)} end to end on {prof.name} ...", err=True)
        measured = measure_finalists(space, result.topk, prof, num_classes=data.num_classes,
                                     in_channels=data.in_channels, budget_ms=budgets.latency_ms)
        result.info["measured"] = measured.to_json()
        write_search_json(result, Path(out_dir) / "search.json")
    if as_json:
        click.echo(json.dumps(result_to_json(result), indent=2))
        return
    best = result.best
    m = best.metrics
    click.echo(f"best: {best.arch}  val accuracy {best.score:.2%}  predicted latency "
               f"{m.get('latency_ms', float('nan')):.3f} ms  {m.get('mflops', float('nan')):.2f} MFLOPs"
               f"  {m.get('params_m', float('nan')):.3f} M params")
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
        click.echo(f"measured {measured.statistic} latency of the best: {top.measured_ms:.3f} ms{budget_text}")
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
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--arch", "arch_str", default=None, help="Architecture string to extract [default: the search's best].")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Subnet checkpoint to write [default: RUN_DIR/subnet.pt].")
@click.option("--recal", type=int, default=None, help="Training batches for BN recalibration [default: the search's].")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print only the subnet's metadata as JSON.")
def extract(run_dir: str, arch_str: str | None, out_path: str | None, recal: int | None, device: str,
            as_json: bool) -> None:
    """The search's winner (or --arch) as a standalone network with the supernet's weights."""
    from edgenas.data import iterate_batches, load_dataset
    from edgenas.extract import data_facts, extract_subnet, load_run_supernet, resolve_run, save_subnet
    from edgenas.supernet import evaluate
    from edgenas.train import resolve_device, to_device

    selection = resolve_run(run_dir, arch_str)
    data = load_dataset(selection.data_config)
    supernet, _ = load_run_supernet(selection)
    scoring = dict(selection.search.get("config", {}).get("scoring") or {})
    dev = resolve_device(device)
    subnet = extract_subnet(supernet, selection.arch, data, recal=recal or int(scoring.get("recal_batches", 10)),
                            batch_size=int(scoring.get("batch_size", 256)), seed=int(selection.search.get("seed") or 0),
                            device=dev)
    test = evaluate(lambda x: subnet(to_device(x, dev, True)),
                    ((x, y.to(dev)) for x, y in iterate_batches(data.test, 256, shuffle=False)), subnet)
    meta = {"data": data_facts(data, selection.data_config),
            "source": {"run_dir": str(selection.run_dir), "supernet": str(selection.supernet_path),
                       "search_best": selection.search["best"]["arch"]},
            "inherited": {"test": {"accuracy": test["accuracy"], "count": int(test["count"])}}}
    out = Path(out_path) if out_path else selection.run_dir / "subnet.pt"
    save_subnet(out, subnet.cpu(), meta)
    if as_json:
        click.echo(json.dumps({"path": str(out), **meta, "arch": selection.arch.to_str()}, indent=2))
        return
    params = sum(p.numel() for p in subnet.parameters())
    click.echo(f"extracted {selection.arch} ({params / 1e6:.3f} M params) from {selection.supernet_path}")
    click.echo(f"inherited weights, BN recalibrated: test accuracy {test['accuracy']:.2%} "
               f"on {int(test['count'])} {data.name} test images")
    click.echo(f"wrote {out}")


# ----- finetune ---------------------------------------------------------------------------------------------
class _FinetuneReporter:
    """One line per epoch on stderr (loss, val accuracy, lr, speed, ETA); silent with --json."""

    def __init__(self, epochs: int, quiet: bool) -> None:
        self.epochs, self.quiet = epochs, quiet
        self.seconds: list[float] = []

    def epoch(self, stats: Any) -> None:
        if self.quiet:
            return
        self.seconds.append(stats.seconds)
        eta = (self.epochs - stats.epoch - 1) * sum(self.seconds) / len(self.seconds)
        kd = f" (kd {stats.kd_loss:.4f})" if stats.kd_loss is not None else ""
        click.echo(f"epoch {stats.epoch + 1}/{self.epochs} | loss {stats.train_loss:.4f}{kd} acc "
                   f"{stats.train_accuracy:.2%} | val acc {stats.val_accuracy:.2%}{' *' if stats.improved else ''} | "
                   f"lr {stats.lr:.4g} | {stats.images_per_s:.0f} img/s | ETA {eta:.0f} s", err=True)


def _recipe_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The training recipe of `finetune` and `baseline` (one recipe, so their results compare)."""
    for option in reversed([
        click.option("--epochs", type=int, default=None, help="[default: 5]"),
        click.option("--lr", type=float, default=None, help="Peak learning rate. [default: 0.05]"),
        click.option("--batch-size", type=int, default=None, help="[default: 128]"),
        click.option("--label-smoothing", type=float, default=None, help="[default: 0.1]"),
        click.option("--weight-decay", type=float, default=None, help="On conv/linear weights only. [default: 4e-5]"),
        click.option("--warmup-steps", type=int, default=None,
                     help="Linear warm-up steps before the cosine. [default: 0]"),
        click.option("--grad-clip", type=float, default=None, help="Clip the gradient norm to this value."),
        click.option("--patience", type=int, default=None,
                     help="Stop after N epochs without val improvement. [default: 3]"),
        click.option("--train-limit", type=int, default=None, help="Use only the first N training images."),
        click.option("--seed", type=int, default=None, help="[default: 0]"),
        click.option("--threads", type=int, default=None, help="CPU threads for torch. [default: all cores]"),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N."),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt."),
        click.option("--json", "as_json", is_flag=True, help="Print only the result as JSON."),
    ]):
        fn = option(fn)
    return fn


@cli.command()
@click.argument("ckpt", metavar="SUBNET_CKPT", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Output directory: last.pt, best.pt, subnet.pt, finetune.json.")
@_recipe_options
@click.option("--distill/--no-distill", default=None,
              help="Distil from the subnet as loaded (the supernet's weights), frozen. [default: no]")
@click.option("--kd-alpha", type=float, default=None, help="Weight of the distillation term. [default: 0.5]")
@click.option("--kd-temperature", type=float, default=None, help="[default: 4.0]")
@click.option("--from-scratch", is_flag=True, default=None,
              help="Re-initialise the weights (seeded) instead of starting from the inherited ones.")
@click.option("--data-root", default=None, help="Data directory, if not where the checkpoint's data was found.")
def finetune(ckpt: str, out_dir: str, data_root: str | None, device: str, resume: bool, as_json: bool,
             **options: Any) -> None:
    """Fine-tune an extracted subnet (optionally distilling from its inherited weights); report test accuracy."""
    from edgenas.config import from_mapping
    from edgenas.data import DataConfig, load_dataset
    from edgenas.extract import load_subnet
    from edgenas.finetune import FinetuneConfig
    from edgenas.finetune import finetune as run_finetune
    from edgenas.train import resolve_device

    config = FinetuneConfig(**{k: v for k, v in options.items() if v is not None})
    subnet, meta, _ = load_subnet(ckpt)
    saved = (meta.get("data") or {}).get("config")
    if not isinstance(saved, dict):
        raise ConfigError(f"{ckpt} records no data config; extract it again with `edgenas extract`")
    root = {"root": data_root} if data_root is not None else {}
    data = load_dataset(from_mapping(DataConfig, {**saved, "train_limit": None, **root}, where=f"{ckpt}: data"))
    reporter = _FinetuneReporter(config.epochs, quiet=as_json)
    result = run_finetune(subnet, data, config, out_dir, resume=resume, device=resolve_device(device),
                          on_epoch=reporter.epoch, meta=meta)
    if as_json:
        click.echo(json.dumps(result.report, indent=2))
        return
    how = "from scratch" if result.from_scratch else "from inherited weights"
    how += ", distilled from the inherited subnet" if result.distill else ""
    stop = " (stopped early)" if result.stopped_early else ""
    click.echo(f"fine-tuned {subnet.arch} {how}: {result.epochs_run} epoch(s){stop}, best epoch "
               f"{result.best_epoch + 1}, val accuracy {result.val_accuracy:.2%}")
    gain = 100 * (result.test_accuracy - result.before_test_accuracy)
    click.echo(f"test accuracy {result.test_accuracy:.2%} on {result.test_count} {data.name} test images; "
               f"before fine-tuning {result.before_test_accuracy:.2%} on {result.before_test_count} "
               f"({gain:+.2f} points)")
    click.echo(f"wrote {result.checkpoint} (also best.pt, last.pt, finetune.json in {out_dir}) in "
               f"{result.seconds:.1f} s")


@cli.command()
@click.option("--family", required=True,
              help="Hand-designed network family: mobilenetv3-small (torchvision), lcnet or mobilenetv4-small (timm); "
                   "randomly initialised.")
@click.option("--data", "data_name", default="fashion-mnist", show_default=True)
@click.option("--data-root", default=None, help="Data directory.")
@click.option("--val-limit", type=int, default=None,
              help="Validate on the first N validation images (as a search's --val-limit) [default: all].")
@click.option("--profile", "profile_name", default="cpu-ort", show_default=True,
              help="Profile whose measurer scales the width to the budget.")
@click.option("--latency-ms", type=float, default=None,
              help="Take the widest member measured within this budget [default: the profile's].")
@click.option("--width", type=float, default=None, help="Train this width instead of scaling to a budget.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Output directory: baseline.json, last.pt, best.pt, subnet.pt, finetune.json.")
@_recipe_options
def baseline(family: str, data_name: str, data_root: str | None, val_limit: int | None, profile_name: str,
             latency_ms: float | None,
             width: float | None, out_dir: str, device: str, resume: bool, as_json: bool, **options: Any) -> None:
    """Train a hand-designed baseline scaled to the latency budget, with the fine-tuning recipe."""
    from edgenas.baselines import get_family, profile_measure, train_baseline
    from edgenas.data import DataConfig, load_dataset
    from edgenas.extract import data_facts
    from edgenas.finetune import FinetuneConfig
    from edgenas.hardware.profile import load_profile
    from edgenas.train import resolve_device

    get_family(family)  # an unknown name fails before the data is loaded
    config = FinetuneConfig(**{k: v for k, v in options.items() if v is not None})
    data_cfg = DataConfig(name=data_name, val_limit=val_limit,
                          **({"root": data_root} if data_root is not None else {}))
    data = load_dataset(data_cfg)
    budget = None
    measure = None
    if width is None and not resume:
        prof = load_profile(profile_name, input_shape=(data.in_channels, *data.input_size))
        budget = latency_ms if latency_ms is not None else prof.budgets.latency_ms
        if budget is None:
            raise ConfigError(f"profile {prof.name} has no latency budget: give --latency-ms or --width")
        timed = profile_measure(prof)

        def measure(models: list[Any]) -> list[float]:
            _progress(f"measuring {len(models)} widths of {family} on {prof.name} ...")
            return timed(models)

    reporter = _FinetuneReporter(config.epochs, quiet=as_json)
    run = train_baseline(family, data, config, out_dir, width=width, budget_ms=budget, measure=measure,
                         resume=resume, device=resolve_device(device), on_epoch=reporter.epoch,
                         meta={"data": data_facts(data, data_cfg)})
    result, choice = run.result, run.choice
    if as_json:
        click.echo(json.dumps({**result.report, "baseline": choice}, indent=2))
        return
    if choice["latency_ms"] is not None:
        click.echo(f"{choice['label']}: measured {choice['latency_ms']:.3f} ms on {profile_name}, the widest of "
                   f"{len(choice['tried'])} widths within {choice['budget_ms']:g} ms")
    stop = " (stopped early)" if result.stopped_early else ""
    click.echo(f"trained {choice['label']} ({choice['description']}): {result.epochs_run} epoch(s){stop}, best "
               f"epoch {result.best_epoch + 1}, val accuracy {result.val_accuracy:.2%}")
    click.echo(f"test accuracy {result.test_accuracy:.2%} on {result.test_count} {data.name} test images")
    click.echo(f"wrote {result.checkpoint} (also baseline.json, finetune.json in {out_dir}) in {result.seconds:.1f} s")


# ----- export -----------------------------------------------------------------------------------------------
@cli.command("export")
@click.argument("subnet_ckpt", type=click.Path(dir_okay=False))
@click.option("--name", required=True, help="Bundle name: the folder written under --out-dir.")
@click.option("--out-dir", type=click.Path(file_okay=False), default="export", show_default=True)
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (17-20).")
@click.option("--int8/--no-int8", default=True, show_default=True,
              help="Also write model.int8.onnx (static QDQ, calibrated on training images).")
@click.option("--simplify", is_flag=True, help="Simplify the graph with onnxsim (pip install onnxsim).")
@click.option("--calib-images", type=int, default=512, show_default=True, help="Training images for int8 calibration.")
@click.option("--parity-images", type=int, default=None, help="Test images for parity/accuracy [default: all].")
@click.option("--profile", "profile_name", default="cpu-ort", show_default=True,
              help="fp32 onnxruntime profile (name or YAML path) the latency is measured on.")
@click.option("--no-measure", is_flag=True, help="Skip the latency measurement.")
@click.option("--force", is_flag=True, help="Replace an existing bundle of the same name.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def export_cmd(subnet_ckpt: str, name: str, out_dir: str, opset: int, int8: bool, simplify: bool, calib_images: int,
               parity_images: int | None, profile_name: str, no_measure: bool, force: bool, as_json: bool) -> None:
    """A subnet checkpoint as a checked ONNX bundle: model.onnx, model.int8.onnx, manifest.json."""
    from edgenas.export import ExportConfig, export_bundle

    config = ExportConfig(name=name, out_dir=out_dir, opset=opset, int8=int8, simplify=simplify,
                          calib_images=calib_images, parity_images=parity_images, profile=profile_name,
                          measure=not no_measure)
    result = export_bundle(subnet_ckpt, config, overwrite=force, on_progress=_progress)
    m = result.manifest
    if as_json:
        click.echo(json.dumps({"bundle_dir": str(result.bundle_dir), **m}, indent=2))
        return
    files = ", ".join(f"{f} ({info['bytes'] / 1024:.1f} KiB)" for f, info in m["files"].items())
    click.echo(f"bundle {result.bundle_dir}: {files}, manifest.json")
    cost, par, acc = m["cost"], m["parity"], m["accuracy"]
    click.echo(f"{m['arch']} ({m['arch_id']}) on {m['data']['name']}: {cost['mflops']:.3f} MFLOPs, "
               f"{cost['params'] / 1e6:.4f} M params; graph {cost['onnx_macs'] / 1e6:.3f} M MACs, opset {m['opset']}")
    click.echo(f"parity torch vs onnxruntime on {par['count']} test images: max |diff| {par['max_abs_diff']:.2g} "
               f"(tolerance {par['tolerance']:g}), top-1 agreement {par['top1_agreement']:.2%}")
    line = (f"test accuracy: torch {acc['torch']['accuracy']:.2%} ({acc['torch']['count']} images), "
            f"onnx fp32 {acc['onnx']['accuracy']:.2%} ({acc['onnx']['count']})")
    if acc["int8"] is not None:
        i8 = acc["int8"]
        line += (f", int8 {i8['accuracy']:.2%} ({i8['count']}; drop {acc['int8_drop_points']:.2f} points, "
                 f"agreement with fp32 {i8['top1_agreement_with_fp32']:.2%})")
    click.echo(line)
    if m["latency"] is not None:
        lat = m["latency"]
        parts = [f"{f} median {s['median_ms']:.4f} ms (p10 {s['p10_ms']:.4f}, p90 {s['p90_ms']:.4f})"
                 for f, s in lat.items() if f != "int8_speedup"]
        speedup = f"; int8 speed-up {lat['int8_speedup']:.2f}x" if lat.get("int8_speedup") else ""
        click.echo(f"latency on {m['profile']['name']}: {'; '.join(parts)}{speedup}")


# ----- check ------------------------------------------------------------------------------------------------
@cli.command("check")
@click.argument("bundle")
@click.option("--profile", "profile_name", required=True, help="An onnxruntime profile name or YAML path.")
@click.option("--tolerance", default="10%", show_default=True,
              help="Relative latency change to tolerate: 10% or 0.1 (between 0 and 1).")
@click.option("--trials", type=int, default=None,
              help="Interleaved trials of 10 runs per model [default: the profile's trials x repeats / 10]; "
                   "more trials narrow the CI.")
@click.option("--update", is_flag=True, help="(Re)write the baseline into the bundle's manifest instead of checking.")
@click.option("--json", "as_json", is_flag=True, help="Print the report (with --update: the baseline) as JSON.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the result as JUnit XML (testcases latency, flops, params) to this file.")
@click.pass_context
def check(ctx: click.Context, bundle: str, profile_name: str, tolerance: str, trials: int | None, update: bool,
          as_json: bool, junit_path: str | None) -> None:
    """Fail CI when an exported bundle got slower, or its FLOPs or params changed.

    Times BUNDLE's model and a fixed reference workload interleaved in the same run, so a runner's
    drift hits both and cancels, and compares their latency ratio with the baseline stored in the
    bundle's manifest (record it once with --update, on a quiet machine).

    \b
    Rule: T interleaved trials of 10 runs each (default T: the profile's
    trials x repeats / 10), per-trial ratio r_t = bundle median / reference median;
    d = median(r) / baseline ratio; 95% bootstrap CI of d (2000 seeded resamples
    of both these trials and the baseline's stored ones);
    REGRESSION iff CI low > 1 + tolerance (confidently slower than the tolerance),
    IMPROVED iff CI high < 1 - tolerance (passes), else PASS.
    FLOPs (MACs) and params must equal the baseline exactly; changed file
    checksums are only reported.

    Exit codes: 0 pass, 1 regression, 2 usage or input error.
    """
    from edgenas.check import CheckConfig, check_bundle, format_baseline, parse_tolerance, update_baseline
    from edgenas.hardware.profile import load_profile
    from edgenas.io import atomic_write_text

    config = CheckConfig(tolerance=parse_tolerance(tolerance), trials=trials)
    if update and junit_path is not None:
        raise ConfigError("--junit reports a check; it does not apply to --update")
    p = load_profile(profile_name)
    if update:
        baseline = update_baseline(bundle, p, config, on_progress=_progress)
        click.echo(json.dumps(baseline.to_json(), indent=2) if as_json
                   else format_baseline(baseline, Path(bundle) / "manifest.json"))
        return
    report = check_bundle(bundle, p, config, on_progress=_progress)
    if junit_path is not None:
        atomic_write_text(junit_path, report.to_junit())
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else report.render(use_rich=sys.stdout.isatty()))
    ctx.exit(report.exit_code)


# ----- run --------------------------------------------------------------------------------------------------
@cli.command("run")
@click.option("--profile", "profile_name", required=True, help="Hardware profile (edgenas profile list).")
@click.option("--data", "data_name", default="fashion-mnist", show_default=True)
@click.option("--data-root", default=None)
@click.option("--latency-ms", type=float, default=None, help="Latency budget [default: the profile's].")
@click.option("--latency-quantile", type=float, default=None,
              help="Latency budget as a quantile of the space's predicted latency on this target (see search).")
@click.option("--mflops", type=float, default=None, help="FLOPs budget, 1 multiply-add = 1 FLOP.")
@click.option("--params-m", type=float, default=None, help="Parameter budget in millions.")
@click.option("--space", "space_name", default="mbv3", show_default=True)
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
@click.option("--name", default=None, help="Bundle name [default: the run directory's name].")
@click.option("--export-dir", type=click.Path(file_okay=False), default=None,
              help="Where the bundle folder goes [default: OUT/export].")
@click.option("--tables-dir", default="latency_tables", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True, help="CPU threads for training.")
@click.option("--device", default="auto", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/run", show_default=True)
@click.option("--resume", is_flag=True, help="Continue an interrupted run at its first unfinished stage.")
@click.pass_context
def run_cmd(ctx: click.Context, profile_name: str, data_name: str, data_root: str | None, latency_ms: float | None,
            latency_quantile: float | None, mflops: float | None, params_m: float | None, space_name: str,
            width_mult: float, epochs: int, weights: str, recipe: str, train_limit: int | None, population: int,
            generations: int, topk: int, mutations: int, crossovers: int, val_limit: int, shift: bool,
            finetune_epochs: int, int8: bool,
            name: str | None, export_dir: str | None, tables_dir: str, seed: int, threads: int, device: str,
            out_dir: str, resume: bool) -> None:
    """The whole pipeline in one run directory: train, latency table, search, extract, fine-tune, export, check.

    Each stage is the command of the same name with its files under --out; `stages.json` records
    what is done, so --resume continues at the first unfinished stage (training, search and
    fine-tuning also resume inside the stage). Ends with a summary table and report.md.
    """
    from edgenas.check import CheckConfig, check_bundle, update_baseline
    from edgenas.hardware.profile import load_profile
    from edgenas.report import StageLog, pipeline_summary, render_report
    from edgenas.space import default_preset

    out = Path(out_dir)
    settings = dict(
        profile=profile_name, data=data_name, latency_ms=latency_ms, latency_quantile=latency_quantile,
        mflops=mflops, params_m=params_m, space=space_name, width_mult=width_mult, epochs=epochs, weights=weights,
        recipe=recipe, train_limit=train_limit, population=population, generations=generations, topk=topk,
        mutations=mutations, crossovers=crossovers, val_limit=val_limit, shift=shift, finetune_epochs=finetune_epochs,
        int8=int8, seed=seed)
    prof = load_profile(profile_name)  # fail on a bad profile before any work
    _check_latency_options(latency_ms, latency_quantile)
    if prof.runtime != "onnxruntime":
        raise ConfigError(f"edgenas run exports ONNX bundles; profile '{prof.name}' runs {prof.runtime}: "
                          "choose an onnxruntime profile (edgenas profile list)")
    log = StageLog.open(out, settings, resume)
    bundle_name = name or out.resolve().name
    paths = {"supernet": out / "supernet", "search": out / "search", "subnet": out / "search" / "subnet.pt",
             "finetune": out / "finetune", "export": Path(export_dir) if export_dir else out / "export"}

    def stage(key: str, title: str) -> float | None:
        if log.done(key):
            click.echo(f"== {title}: done, skipped", err=True)
            return None
        click.echo(f"== {title}", err=True)
        return log.begin(key)

    if (t := stage("train", "1/7 train the supernet")) is not None:
        ctx.invoke(train, space_name=space_name, width_mult=width_mult, data_name=data_name, data_root=data_root,
                   train_limit=train_limit, epochs=epochs, weights=weights, recipe=recipe, seed=seed, threads=threads,
                   device=device,
                   out_dir=str(paths["supernet"]), resume=(paths["supernet"] / "supernet.pt").exists())
        log.finish("train", t, checkpoint=str(paths["supernet"] / "supernet.pt"))
    if (t := stage("table", "2/7 latency table")) is not None:
        from edgenas.data import DataConfig, load_dataset
        from edgenas.supernet import load_checkpoint

        supernet, _, _ = load_checkpoint(paths["supernet"] / "supernet.pt")
        splits = load_dataset(DataConfig(name=data_name, root=data_root))
        target = load_profile(profile_name, input_shape=(splits.in_channels, *splits.input_size))
        try:
            table_path = _find_table(supernet.space, target, Path(tables_dir))
            note = "reused"
        except EdgenasError:
            c, h, w = target.input_shape
            preset = default_preset((h, w))  # as `edgenas train` chose it
            table_path = Path(tables_dir) / f"{target.name}_{space_name}_{preset}_w{width_mult:g}_{h}x{w}.json"
            ctx.invoke(profile_build, profile_name=profile_name, space_name=space_name, preset=preset,
                       width_mult=width_mult, input_shape=f"{c},{h},{w}", out=str(table_path), force=True)
            note = "built"
        log.finish("table", t, table=str(table_path), note=note)
    if (t := stage("search", "3/7 search")) is not None:
        ctx.invoke(search, profile_name=profile_name, ckpt=str(paths["supernet"] / "supernet.pt"),
                   tables_dir=tables_dir, latency_ms=latency_ms, latency_quantile=latency_quantile, mflops=mflops,
                   params_m=params_m, data_root=data_root, val_limit=val_limit, population=population,
                   generations=generations, topk=topk, mutations=mutations, crossovers=crossovers, seed=seed,
                   shift=shift, device=device, out_dir=str(paths["search"]),
                   resume=(paths["search"] / "checkpoint.pt").exists())
        log.finish("search", t, search_json=str(paths["search"] / "search.json"),
                   plot=str(paths["search"] / "candidates.png"))
    if (t := stage("extract", "4/7 extract the winner")) is not None:
        ctx.invoke(extract, run_dir=str(paths["search"]), out_path=str(paths["subnet"]), device=device)
        log.finish("extract", t, subnet=str(paths["subnet"]))
    if (t := stage("finetune", "5/7 fine-tune")) is not None:
        ctx.invoke(finetune, ckpt=str(paths["subnet"]), out_dir=str(paths["finetune"]), epochs=finetune_epochs,
                   train_limit=train_limit, seed=seed, threads=threads, device=device, data_root=data_root,
                   resume=(paths["finetune"] / "last.pt").exists())
        log.finish("finetune", t, finetune_json=str(paths["finetune"] / "finetune.json"))
    bundle = paths["export"] / bundle_name
    if (t := stage("export", "6/7 export the ONNX bundle")) is not None:
        ctx.invoke(export_cmd, subnet_ckpt=str(paths["finetune"] / "subnet.pt"), name=bundle_name,
                   out_dir=str(paths["export"]), int8=int8, profile_name=profile_name, force=True)
        log.finish("export", t, bundle=str(bundle), manifest=str(bundle / "manifest.json"))
    if (t := stage("check", "7/7 latency baseline and regression check")) is not None:
        config = CheckConfig()
        update_baseline(bundle, prof, config, on_progress=_progress)
        report = check_bundle(bundle, prof, config, on_progress=_progress)
        click.echo(report.render(use_rich=False), err=True)
        log.finish("check", t, verdict=report.verdict, exit_code=report.exit_code)
    path = render_report(out, log)
    click.echo("")
    width = max(len(k) for k, _ in pipeline_summary(out, log)) if log.stages else 10
    for key, value in pipeline_summary(out, log):
        click.echo(f"{key:<{width}}  {value.replace('`', '')}")
    total = sum(float(r.get("seconds", 0.0)) for r in log.stages.values())
    click.echo(f"\nbundle {bundle}; report {path}; {total:.0f} s in all")



def main() -> None:
    cli(prog_name="edgenas")


if __name__ == "__main__":
    main()
