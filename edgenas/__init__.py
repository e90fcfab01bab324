"""edgenas: hardware-aware neural architecture search that ends in deployable models."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
