"""Scoped torch thread count, shared by the measurers, the ONNX export and the FLOPs counter."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` and restore the previous count.

    Tracing and exporting batch-1 models gains nothing from intra-op threads, and on a shared
    machine two OpenMP threads contending with other jobs made one traced forward pass 10-100x
    slower (0.03 s vs up to 4 s for an spos subnet), so those steps run single-threaded.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
