"""The one architecture value passed through every stage.

An :class:`Arch` is immutable and self-describing: it carries the space's name and version next to
the per-layer choice indices, so an architecture string found in a log, a manifest or ONNX metadata
can always be checked against the space it is loaded into instead of silently meaning something
else.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from edgenas.errors import SpaceError

__all__ = ["Arch"]

_STR_RE = re.compile(r"^(?P<space>[a-z0-9_]+)(?:@v(?P<version>\d+))?:(?P<choices>\d+(?:-\d+)*)$")


@dataclass(frozen=True, order=True)
class Arch:
    """A point of a search space: ``choices[i]`` is the index of the choice taken at layer ``i``."""

    space: str
    version: int
    choices: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.choices, tuple):
            object.__setattr__(self, "choices", tuple(int(c) for c in self.choices))
        if any(c < 0 for c in self.choices):
            raise SpaceError(f"negative choice index in architecture {self.choices}")

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
