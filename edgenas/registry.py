"""One small registry for every extension point: spaces, datasets, runtimes, baselines, strategies, scorers.

A :class:`Registry` maps names to entries (a class, a factory, a loader). ``register`` refuses a
name that is taken (pass ``replace=True`` to override on purpose), ``get`` of an unknown name is a
one-line :class:`~edgenas.errors.EdgenasError` that lists the known names, and the CLI's choices
and the tests' parametrisations are read from ``names()``, so a new entry appears in both without
editing them. Each registry lives beside the code it serves and holds only that module's own
entries; registering your own is one call::

    from edgenas.space import SPACES
    SPACES.register("myspace", (MySpace, MyConfig.preset))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

from edgenas.errors import ConfigError, EdgenasError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind; ``kind`` appears in error messages ("unknown search space 'x'")."""

    def __init__(self, kind: str, error: type[EdgenasError] = ConfigError,
                 builtins: Callable[[Registry[T]], None] | None = None) -> None:
        """``builtins(registry)`` registers the built-in entries on first use, so a module whose
        entries import heavy libraries (torch) costs nothing until one of them is asked for."""
        self.kind = kind
        self.error = error
        self._entries: dict[str, T] = {}
        self._builtins = builtins

    def _load(self) -> None:
        if self._builtins is not None:
            load, self._builtins = self._builtins, None
            load(self)

    @overload
    def register(self, name: str, entry: T, *, replace: bool = False) -> T: ...

    @overload
    def register(self, name: str, entry: None = None, *, replace: bool = False) -> Callable[[T], T]: ...

    def register(self, name: str, entry: T | None = None, *, replace: bool = False) -> T | Callable[[T], T]:
        """Add ``entry`` under ``name``; without ``entry``, a decorator that registers what it decorates."""
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise self.error(f"a {self.kind} name must be a non-empty string without surrounding spaces, "
                             f"not {_short(name)}")

        self._load()

        def add(item: T) -> T:
            if name in self._entries and not replace:
                raise self.error(f"{self.kind} '{name}' is already registered; choose another name "
                                 "(or pass replace=True)")
            self._entries[name] = item
            return item

        return add if entry is None else add(entry)

    def unregister(self, name: str) -> T:
        """Remove and return an entry (for tests and plug-ins that undo themselves)."""
        entry = self.get(name)
        del self._entries[name]
        return entry

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            known = ", ".join(self.names()) or "none"
            raise self.error(f"unknown {self.kind} {_short(name)}; known: {known}") from None

    def names(self) -> list[str]:
        """Registered names, in registration order (built-ins first)."""
        self._load()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"


def _short(value: Any) -> str:
    """A name as an error quotes it: bounded, however long the input (config is imported lazily:
    the registry sits below everything)."""
    from edgenas.config import short

    return short(value)
