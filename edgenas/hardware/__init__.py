"""Hardware side of the search: profiles, latency measurers, FLOPs/params counting, latency tables.

Import from the submodules (``edgenas.hardware.profile``, ``.measure``, ``.flops``, ``.table``):
this package module imports nothing, so loading a profile does not pull in torch, onnxruntime or
fvcore.
"""

from __future__ import annotations
