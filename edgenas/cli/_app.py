"""The ``edgenas`` click group and what its commands share: one-line errors, ``--config`` files,
the console progress display and option helpers. Commands live in the modules beside this one."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click

from edgenas import __version__
from edgenas.errors import ConfigError, EdgenasError

__all__ = ["cli"]


class _Group(click.Group):
    """Click group that reports EdgenasError as one line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgenasError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except click.UsageError as exc:  # one line like every other input error, not click's three
            where = exc.ctx.command_path if exc.ctx is not None else "edgenas"
            click.echo(f"error: {exc.format_message()} (see {where} --help)", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: the last completed checkpoint is kept; rerun with --resume", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except Exception as exc:  # a case no check foresaw: still one line, and never exit 1 (a regression)
            if os.environ.get("EDGENAS_DEBUG"):
                raise
            text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            click.echo(f"error: unexpected {type(exc).__name__}{': ' + text if text else ''} (likely a bug in "
                       "edgenas or an input it does not check yet; EDGENAS_DEBUG=1 shows the traceback)", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgenas")
def cli() -> None:
    """edgenas: hardware-aware NAS that ends in deployable models.

    Stages, in data-flow order: data, space, profile, train, eval, search, extract, finetune, export, check;
    `run` chains them, `baseline` trains a hand-designed network to compare.
    """


class RegistryName(click.ParamType):
    """A name in one of the registries (``module:ATTR``), checked when the option is parsed, so the
    command's choices are the registry's, a newly registered entry included; the registry is imported
    only then (the built-in spaces need torch)."""

    name = "name"

    def __init__(self, where: str) -> None:
        self.where = where

    def registry(self) -> Any:
        import importlib

        module, attr = self.where.split(":")
        return getattr(importlib.import_module(module), attr)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is not None:
            self.registry().get(value)  # an unknown name: one line listing the known ones
        return value

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        from click.shell_completion import CompletionItem

        return [CompletionItem(n) for n in self.registry().names() if n.startswith(incomplete)]


SPACE_NAME = RegistryName("edgenas.space:SPACES")
STRATEGY_NAME = RegistryName("edgenas.search.strategies:STRATEGIES")
SCORER_NAME = RegistryName("edgenas.search.scoring:SCORERS")
BASELINE_NAME = RegistryName("edgenas.baselines:BASELINES")


def _load_option_file(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """``--config FILE.yaml``: the file's keys (option names, with - or _) become the command's
    defaults, so options given on the command line override the file; an unknown key is an error."""
    if value is None:
        return None
    from edgenas.config import load_yaml, short

    names: dict[str, str] = {}
    for param in ctx.command.params:
        if param.name in (None, "config_file"):
            continue
        names[param.name.replace("_", "-")] = param.name
        for flag in getattr(param, "opts", []) + getattr(param, "secondary_opts", []):
            names[flag.lstrip("-")] = param.name
    values: dict[str, Any] = {}
    for key, item in load_yaml(value).items():
        name = names.get(str(key).replace("_", "-"))
        if name is None:
            known = ", ".join(sorted(k for k in names if "_" not in k and not k.startswith("no-")))
            raise ConfigError(f"{value}: unknown option {short(key)} for `{ctx.command_path}` (known: {known})")
        values[name] = item
    ctx.default_map = {**(ctx.default_map or {}), **values}
    return value


def _config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, is_eager=True,
                        expose_value=False, callback=_load_option_file,
                        help="YAML of this command's options (names as here, with - or _); options given here "
                             "override it.")(fn)


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


def _console(quiet: bool = False, epochs: int = 0, generations: int = 0) -> Any:
    """The CLI's :class:`edgenas.pipeline.Progress`: stderr lines, a bar for training on a terminal;
    ``quiet`` (``--json``) keeps only warnings."""
    from edgenas.pipeline.progress import Progress

    class Console(Progress):
        def __init__(self) -> None:
            self.bar: Any = None
            self.task: Any = None
            self.seconds: list[float] = []

        def message(self, text: str) -> None:
            if not quiet:
                click.echo(text, err=True)

        def warning(self, text: str) -> None:
            click.echo(f"warning: {text}", err=True)

        def stage(self, key: str, title: str, skipped: bool) -> None:
            click.echo(f"== {title}{': done, skipped' if skipped else ''}", err=True)

        def train_step(self, epoch: int, step: int, total: int, loss: float) -> None:
            if quiet or not sys.stderr.isatty():
                return
            if self.bar is None:
                from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

                self.bar = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                                    TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.3f}"),
                                    TimeRemainingColumn(), transient=True)
                self.bar.start()
            if self.task is None or step == 1:
                if self.task is not None:
                    self.bar.remove_task(self.task)
                self.task = self.bar.add_task("train", total=total, epoch=f"{epoch + 1}/{epochs}", loss=loss)
            self.bar.update(self.task, completed=step, loss=loss)
            if step == total:
                self.bar.stop()
                self.bar, self.task = None, None

        def train_epoch(self, stats: Any) -> None:
            val = f" | val acc (sampled subnets) {stats.val_mean:.2%}" if stats.val_accuracy else ""
            self.message(f"epoch {stats.epoch + 1}/{epochs} lr {stats.lr:.4f} | train loss {stats.train_loss:.4f} "
                         f"acc {stats.train_accuracy:.2%} | {stats.images_per_s:.0f} img/s{val}")

        def search_generation(self, record: Any) -> None:
            self.seconds.append(float(getattr(record, "seconds", 0.0)))
            eta = (generations - record.generation - 1) * sum(self.seconds) / len(self.seconds)
            best = record.topk[0] if record.topk else None
            text = "no legal candidate"
            if best is not None:
                text = f"best {best.score:.2%} {best.arch} ({best.metrics.get('latency_ms', float('nan')):.3f} ms)"
            self.message(f"generation {record.generation + 1}/{generations} | {text} | ETA {eta:.0f} s")

        def finetune_epoch(self, stats: Any) -> None:
            self.seconds.append(stats.seconds)
            eta = (epochs - stats.epoch - 1) * sum(self.seconds) / len(self.seconds)
            kd = f" (kd {stats.kd_loss:.4f})" if stats.kd_loss is not None else ""
            self.message(f"epoch {stats.epoch + 1}/{epochs} | loss {stats.train_loss:.4f}{kd} acc "
                         f"{stats.train_accuracy:.2%} | val acc {stats.val_accuracy:.2%}"
                         f"{' *' if stats.improved else ''} | lr {stats.lr:.4g} | {stats.images_per_s:.0f} img/s | "
                         f"ETA {eta:.0f} s")

        def rank_arch(self, index: int, total: int, entry: Any) -> None:
            self.message(f"[{index}/{total}] {entry.arch}  {entry.macs / 1e6:.2f} M MACs  inherited (val) "
                         f"{entry.inherited:.2%}  alone (test) {entry.standalone:.2%}")

    return Console()
