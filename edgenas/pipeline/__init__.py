"""The pipeline as Python: one typed function per arrow of the data flow.

Each stage takes a frozen job dataclass and an optional :class:`Progress` and returns a result
object; the CLI only parses options into jobs and prints results, and ``run`` calls the same
functions in sequence. A whole run from Python::

    from edgenas import pipeline

    outcome = pipeline.run(pipeline.RunJob(profile="cpu-ort", train_limit=2000, out="runs/py"))
    print(outcome.bundle, outcome.verdict)

or stage by stage (``train`` -> ``build_table`` -> ``search`` -> ``extract`` -> ``finetune`` ->
``export`` -> ``check``), each reading the previous stage's files.
"""

from __future__ import annotations

from edgenas.pipeline.baseline import BaselineJob, BaselineOutcome, baseline
from edgenas.pipeline.check import CheckJob, CheckOutcome, check
from edgenas.pipeline.evaluate import EvalJob, EvalOutcome, RankCheckJob, evaluate, rank_check
from edgenas.pipeline.export import ExportJob, export
from edgenas.pipeline.extract import ExtractJob, ExtractOutcome, extract
from edgenas.pipeline.finetune import FinetuneJob, FinetuneOutcome, finetune
from edgenas.pipeline.progress import Progress
from edgenas.pipeline.run import RunJob, RunOutcome, run
from edgenas.pipeline.search import SearchJob, SearchOutcome, search
from edgenas.pipeline.table import TableJob, TableOutcome, ValidateJob, build_table, find_table, validate_table
from edgenas.pipeline.train import TrainJob, TrainOutcome, train

__all__ = [
    "BaselineJob",
    "BaselineOutcome",
    "CheckJob",
    "CheckOutcome",
    "EvalJob",
    "EvalOutcome",
    "ExportJob",
    "ExtractJob",
    "ExtractOutcome",
    "FinetuneJob",
    "FinetuneOutcome",
    "Progress",
    "RankCheckJob",
    "RunJob",
    "RunOutcome",
    "SearchJob",
    "SearchOutcome",
    "TableJob",
    "TableOutcome",
    "TrainJob",
    "TrainOutcome",
    "ValidateJob",
    "baseline",
    "build_table",
    "check",
    "evaluate",
    "export",
    "extract",
    "find_table",
    "finetune",
    "rank_check",
    "run",
    "search",
    "train",
    "validate_table",
]
