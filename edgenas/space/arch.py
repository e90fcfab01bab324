"""The one architecture value passed through every stage.

An :class:`Arch` is immutable and self-describing: it carries the space's name and version next to
the per-layer choice indices, so an architecture string found in a log, a manifest or ONNX metadata
can always be checked against the space it is loaded into instead of silently meaning something
else.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import re
from dataclasses import dataclass
from typing import Any

from edgenas.errors import SpaceError

__all__ = ["Arch"]

_NAME = r"[A-Za-z0-9_.-]+"
_NAME_RE = re.compile(rf"^{_NAME}$")
_STR_RE = re.compile(rf"^(?P<space>{_NAME})(?:@v(?P<version>\d+))?:(?P<choices>\d+(?:-\d+)*)$")


def _index(value: Any, what: str) -> int:
    """An integer (Python or numpy) as a plain ``int``: numpy integers would break ``json.dumps`` later."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SpaceError(f"{what} must be an integer, not {value!r}")
    return int(value)


@dataclass(frozen=True, order=True)
class Arch:
    """A point of a search space: ``choices[i]`` is the index of the choice taken at layer ``i``."""

    space: str
    version: int
    choices: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.space, str) or not _NAME_RE.match(self.space):
            raise SpaceError(f"an architecture's space name must be letters, digits, '_', '.' or '-' (it is part "
                             f"of the architecture string), not {self.space!r}")
        object.__setattr__(self, "version", _index(self.version, "an architecture's version"))
        try:
            choices = tuple(_index(c, "a choice index") for c in self.choices)
        except TypeError:
            raise SpaceError(f"an architecture's choices must be a sequence of integers, "
                             f"not {self.choices!r}") from None
        object.__setattr__(self, "choices", choices)
        if self.version < 0 or any(c < 0 for c in choices):
            raise SpaceError(f"negative version or choice index in architecture {self.space}@v{self.version}:{choices}")

    def __str__(self) -> str:
        return self.to_str()

    def __len__(self) -> int:
        return len(self.choices)

    def to_str(self) -> str:
        """Short form, e.g. ``mbv3@v1:3-1-0-2``; readable in logs and round-trips exactly."""
        return f"{self.space}@v{self.version}:" + "-".join(str(c) for c in self.choices)

    @classmethod
    def from_str(cls, text: str) -> Arch:
        match = _STR_RE.match(text.strip())
        if match is None:
            raise SpaceError(
                f"cannot parse architecture {text!r}: expected 'SPACE@vN:C-C-...', e.g. 'mbv3@v1:0-3-9'"
            )
        version = int(match["version"]) if match["version"] is not None else 1
        return cls(match["space"], version, tuple(int(c) for c in match["choices"].split("-")))

    @property
    def arch_id(self) -> str:
        """Stable 12-hex-digit id: the same architecture gets the same id on every machine."""
        return hashlib.sha1(self.to_str().encode()).hexdigest()[:12]

    def to_json(self) -> dict[str, Any]:
        return {"space": self.space, "version": self.version, "choices": list(self.choices)}

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> Arch:
        if isinstance(data, str):
            data = json.loads(data)
        try:
            return cls(str(data["space"]), int(data["version"]), tuple(int(c) for c in data["choices"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise SpaceError(f"malformed architecture JSON {data!r}: {exc}") from None
