"""The one exception family users see.

Every failure caused by bad input (a malformed file, a missing dataset, an unknown name, a budget
that cannot be met) raises an :class:`EdgenasError` with a one-line message. The CLI turns it into
``error: <message>`` and a non-zero exit, so users never see a traceback for their own mistakes;
anything else that escapes is a bug in edgenas.
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "EdgenasError",
    "InfeasibleBudgetError",
    "SearchError",
    "SpaceError",
    "TableError",
]


class EdgenasError(Exception):
    """Base for errors caused by user input or environment, reported as one line."""

    exit_code: int = 2


class ConfigError(EdgenasError):
    """A config or profile file is malformed, has unknown keys or wrong types."""


class DataError(EdgenasError):
    """A dataset is missing, malformed or unknown."""


class CheckpointError(EdgenasError):
    """A checkpoint is corrupt, missing, or does not match the space it is loaded into."""


class SpaceError(EdgenasError):
    """An architecture or space config is invalid (unknown space, wrong length, choice out of range)."""


class TableError(ConfigError):
    """A latency table file is missing, corrupt, or was built for another space or profile."""


class SearchError(EdgenasError):
    """The search cannot run: a missing capability, or no architecture meets the constraints."""


class InfeasibleBudgetError(SearchError):
    """No architecture of the space can meet a budget; the message gives the space's floor."""


class BundleError(EdgenasError):
    """A bundle directory or manifest is missing, malformed or would be overwritten."""
