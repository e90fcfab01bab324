"""Search spaces behind one interface, created by name through the ``SPACES`` registry.

The built-in spaces (and torch, which they need to build modules) load on first use: importing
this package for :class:`Arch` alone, as a numpy-only search over a custom space does, stays
cheap. Unknown names fail loudly, listing the ones that exist. ``space_from_dict``/``space_to_dict``
are the form in which a space travels inside checkpoint sidecars, latency tables and manifests.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgenas.errors import SpaceError
from edgenas.registry import Registry
from edgenas.space.arch import Arch

if TYPE_CHECKING:
    from edgenas.space.base import LayerSpec, SearchSpace, Subnet
    from edgenas.space.mbv3 import Mbv3Config, Mbv3Space, StageConfig
    from edgenas.space.spos import SposConfig, SposSpace

_LAZY = {"LayerSpec": "base", "SearchSpace": "base", "Subnet": "base", "Mbv3Config": "mbv3", "Mbv3Space": "mbv3",
         "StageConfig": "mbv3", "SposConfig": "spos", "SposSpace": "spos"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"edgenas.space.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'edgenas.space' has no attribute {name!r}")

__all__ = [
    "SPACES",
    "Arch",
    "LayerSpec",
    "Mbv3Config",
    "Mbv3Space",
    "SearchSpace",
    "SposConfig",
    "SposSpace",
    "StageConfig",
    "Subnet",
    "create_space",
    "default_preset",
    "list_spaces",
    "space_from_dict",
    "space_to_dict",
]


def _builtin_spaces(registry: Registry[tuple[type[SearchSpace], Callable[..., Any]]]) -> None:
    from edgenas.space.mbv3 import Mbv3Config, Mbv3Space
    from edgenas.space.spos import SposConfig, SposSpace

    registry.register("mbv3", (Mbv3Space, Mbv3Config.preset))
    registry.register("spos", (SposSpace, SposConfig.preset))


SPACES: Registry[tuple[type[SearchSpace], Callable[..., Any]]] = Registry("search space", SpaceError,
                                                                          builtins=_builtin_spaces)
"""Space name -> (space class, ``preset(name, **overrides) -> config``)."""


def list_spaces() -> list[str]:
    return sorted(SPACES.names())


def default_preset(input_hw: tuple[int, int]) -> str:
    """``imagenet`` for inputs of 112 px and more, else ``small``: keeps the final feature map a few pixels wide."""
    return "imagenet" if min(input_hw) >= 112 else "small"


def create_space(name: str, preset: str = "small", **overrides: Any) -> SearchSpace:
    """Build a space by registry name from a preset, with config fields overridden by keyword."""
    cls, make_config = SPACES.get(name)
    try:
        return cls(make_config(preset, **overrides))
    except TypeError as exc:
        raise SpaceError(f"bad config for space '{name}': {exc}") from None


def space_to_dict(space: SearchSpace) -> dict[str, Any]:
    return {"name": space.name, "version": space.version, "config": space.config_dict(),
            "hash": space.config_hash()}


def space_from_dict(data: dict[str, Any]) -> SearchSpace:
    """Rebuild a space saved by :func:`space_to_dict`; the stored hash must match the rebuilt one."""
    try:
        name, version, config = data["name"], int(data["version"]), dict(data["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SpaceError(f"malformed space description: missing {exc}") from None
    cls, make_config = SPACES.get(name)
    if version != cls.version:
        raise SpaceError(f"space '{name}' is version {cls.version} here, the file was made with version {version}")
    try:
        space = cls(make_config("small", **config))
    except TypeError as exc:
        raise SpaceError(f"bad config for space '{name}': {exc}") from None
    if "hash" in data and data["hash"] != space.config_hash():
        raise SpaceError(f"space '{name}' config hash mismatch ({data['hash']} != {space.config_hash()})")
    return space
