"""The device agent: a small HTTP server that times ONNX models on a board for an edgenas elsewhere.

Everything is in :mod:`edgenas.agent.server`, one file that needs only the standard library, numpy
and onnxruntime, so it can be copied to a board that has no torch (see that module's docstring).
The client side is :mod:`edgenas.hardware.remote`; ``edgenas agent serve`` starts the server.
"""

from __future__ import annotations

__all__: list[str] = []
