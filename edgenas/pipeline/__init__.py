"""The pipeline as Python: one typed function per arrow of the data flow.

Each stage takes a frozen job dataclass and an optional :class:`Progress` and returns a result
object; the CLI only parses options into jobs and prints results, and ``run`` calls the same
functions in sequence. A whole run from Python::

    from edgenas import pipeline

    outcome = pipeline.run(pipeline.RunJob(profile="cpu-ort", train_limit=2000, out="runs/py"))
    print(outcome.bundle, outcome.verdict)

or stage by stage (``train`` -> ``build_table`` -> ``search`` -> ``extract`` -> ``finetune`` ->
``export`` -> ``check``), each reading the previous stage's files. The config types the jobs take
(``DataConfig``, ``TrainConfig``, ``FinetuneConfig``, ``ExportConfig``, ``CheckConfig``) are
re-exported here, so one import is enough.
"""

from __future__ import annotations

from edgenas.check import CheckConfig
from edgenas.data import DataConfig
from edgenas.export import ExportConfig
from edgenas.finetune import FinetuneConfig
from edgenas.pipeline.baseline import BaselineJob, BaselineOutcome, baseline
from edgenas.pipeline.check import CheckJob, CheckOutcome, check
from edgenas.pipeline.evaluate import EvalJob, EvalOutcome, RankCheckJob, evaluate, rank_check
from edgenas.pipeline.export import ExportJob, export
from edgenas.pipeline.extract import ExtractJob, ExtractOutcome, extract, extract_pareto
from edgenas.pipeline.finetune import FinetuneJob, FinetuneOutcome, finetune
from edgenas.pipeline.progress import Progress
from edgenas.pipeline.run import RunJob, RunOutcome, run
from edgenas.pipeline.search import SearchJob, SearchOutcome, search
from edgenas.pipeline.table import TableJob, TableOutcome, ValidateJob, build_table, find_table, validate_table
from edgenas.pipeline.train import TrainJob, TrainOutcome, train
from edgenas.train import TrainConfig

__all__ = [
    "BaselineJob",
    "BaselineOutcome",
    "CheckConfig",
    "CheckJob",
    "CheckOutcome",
    "DataConfig",
    "EvalJob",
    "EvalOutcome",
    "ExportConfig",
    "ExportJob",
    "ExtractJob",
    "ExtractOutcome",
    "FinetuneConfig",
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
    "TrainConfig",
    "TrainJob",
    "TrainOutcome",
    "ValidateJob",
    "baseline",
    "build_table",
    "check",
    "evaluate",
    "export",
    "extract",
    "extract_pareto",
    "find_table",
    "finetune",
    "rank_check",
    "run",
    "search",
    "train",
    "validate_table",
]
