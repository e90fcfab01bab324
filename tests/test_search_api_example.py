"""The README's library example, run verbatim: if this test passes, the snippet users copy works."""

from __future__ import annotations

import contextlib
import io
import re

EXAMPLE = """\
from edgenas.space import create_space
from edgenas.search import Budget, EvolutionConfig, EvolutionarySearch

space = create_space("mbv3", "small", width_mult=0.5)   # or any object with sample/mutate/crossover/validate

def mflops(arch):        # any cheap cost model, e.g. LatencyTable.load(...).predict
    return space.macs(arch, (28, 28), in_channels=1, num_classes=10) / 1e6

def score(arch):         # any scorer (higher is better): a supernet, an accuracy predictor, ...
    return mflops(arch)                                     # toy: pretend bigger is more accurate

config = EvolutionConfig(population=20, generations=5, topk=5, mutations=8, crossovers=8, seed=0)
search = EvolutionarySearch(space, score, [Budget("mflops", mflops, limit=4.5)], config)
result = search.run()    # over-budget candidates are never scored; the top-k is re-scored at the end
print(result.best.arch, f"score {result.best.score:.2f}", f"{result.best.metrics['mflops']:.2f} MFLOPs")
"""


def test_readme_example_runs():
    assert len(EXAMPLE.strip().splitlines()) <= 15
    namespace: dict[str, object] = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(EXAMPLE, "README example", "exec"), namespace)
    result = namespace["result"]
    best = result.best  # type: ignore[attr-defined]
    assert 4.0 < best.metrics["mflops"] <= 4.5  # pushed up against the budget, never over it
    assert all(c.metrics["mflops"] <= 4.5 for c in result.candidates)  # type: ignore[attr-defined]
    assert re.fullmatch(r"mbv3@v1:[\d-]+ score \d\.\d\d \d\.\d\d MFLOPs\n", out.getvalue())
