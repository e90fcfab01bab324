"""Command line: one thin command per pipeline stage.

Each command parses options (or ``--config FILE.yaml``) into a job of :mod:`edgenas.pipeline`, calls
that stage and prints the result. Errors caused by input (:class:`~edgenas.errors.EdgenasError`)
become ``error: <one line>`` on stderr and exit 2; progress goes to stderr so ``--json`` output on
stdout stays machine-readable. The commands are grouped by stage in the modules of this package.
"""

from __future__ import annotations

from edgenas.cli import agent, deploy, inspect, profile, run, search, train  # noqa: F401  (they register the commands)
from edgenas.cli._app import cli

__all__ = ["cli", "main"]


def main() -> None:
    cli(prog_name="edgenas")
