"""The Python API: the registry, the stage functions, the extension points (strategy, scorer, runtime),
the score cache, `--config` for every command, and the README's pipeline script run verbatim."""

from __future__ import annotations

import contextlib
import io
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgenas.cli import cli
from edgenas.errors import ConfigError, EdgenasError, SpaceError
from edgenas.registry import Registry
from edgenas.search import EvolutionarySearch, EvolutionConfig, ScoreConfig, make_budget_constraints, run_search
from edgenas.search.scoring import SCORERS, CachedScorer, SupernetScorer
from edgenas.search.strategies import STRATEGIES
from edgenas.space import SPACES, create_space
from edgenas.supernet import Supernet

REPO = Path(__file__).resolve().parents[1]


# ----- Registry ---------------------------------------------------------------------------------------------
def test_registry_registers_gets_and_refuses_duplicates_and_unknown_names():
    reg: Registry[int] = Registry("widget", SpaceError)
    assert reg.register("a", 1) == 1
    assert reg.register("b")(2) == 2  # decorator form returns what it decorates
    assert reg.names() == ["a", "b"] and "a" in reg and len(reg) == 2 and reg.get("b") == 2
    with pytest.raises(SpaceError, match="widget 'a' is already registered"):
        reg.register("a", 3)
    assert reg.register("a", 3, replace=True) == 3 and reg.get("a") == 3
    with pytest.raises(SpaceError, match=r"unknown widget 'zz'; known: a, b$"):
        reg.get("zz")
    for bad in ("", " a", None):
        with pytest.raises(SpaceError, match="non-empty string"):
            reg.register(bad, 4)  # type: ignore[arg-type]
    assert reg.unregister("a") == 3 and reg.names() == ["b"]


def test_every_extension_point_is_a_registry_with_its_builtins():
    from edgenas.baselines import BASELINES
    from edgenas.bundle_formats import FORMATS
    from edgenas.data import DATASETS
    from edgenas.hardware.measure import RUNTIMES

    expected = {FORMATS: {"openvino"}, SPACES: {"mbv3", "spos"}, DATASETS: {"fashion-mnist", "digits", "npz:PATH"},
                RUNTIMES: {"onnxruntime", "torch", "openvino", "remote"}, BASELINES: {"lcnet", "mobilenetv3-small"},
                STRATEGIES: {"evolution", "random"}, SCORERS: {"supernet", "params"}}
    for registry, names in expected.items():
        assert isinstance(registry, Registry) and names <= set(registry.names()), registry


# ----- strategies and scorers, parametrized over the registries ------------------------------------------------
EVO = EvolutionConfig(population=4, generations=2, topk=2, mutations=1, crossovers=1, seed=0)
SCORE = ScoreConfig(recal_batches=1, batch_size=72)


@pytest.fixture(scope="module")
def small_space():
    return create_space("mbv3", "small", width_mult=0.25, head_channels=32, kernels=(3, 5), expansions=(3,))


def _supernet(space) -> Supernet:
    torch.manual_seed(0)
    return Supernet(space, 10, 1, "shared")


@pytest.mark.parametrize("scorer", SCORERS.names())
@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_every_strategy_and_scorer_searches_within_the_budget(strategy, scorer, small_space, digits, tmp_path):
    budgets = make_budget_constraints(small_space, input_hw=(8, 8), in_channels=1, num_classes=10, mflops=0.105)
    result = run_search(_supernet(small_space), digits, tmp_path, budgets, evolution=EVO, shift=None,
                        scoring=SCORE, strategy=strategy, scorer=scorer)
    assert all(c.metrics["mflops"] <= 0.105 for c in result.candidates)
    assert result.best.score == max(c.score for c in result.topk)
    doc = json.loads((tmp_path / "search.json").read_text())
    assert doc["strategy"] == strategy and doc["scorer"]["name"] == scorer
    if strategy == "random":
        assert {c.origin for c in result.candidates} <= {"random", "rescore"}


def test_unknown_strategy_or_scorer_is_refused_with_the_known_names(small_space, digits, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown search strategy 'nope'; known: evolution, random"):
        run_search(_supernet(small_space), digits, tmp_path, shift=None, evolution=EVO, strategy="nope")
    with pytest.raises(ConfigError, match=r"unknown scorer 'nope'; known: supernet, params"):
        run_search(_supernet(small_space), digits, tmp_path, shift=None, evolution=EVO, scorer="nope")
    assert not any(tmp_path.iterdir())


@pytest.fixture
def toy_strategy():
    """A new strategy is one class and one register call: local search (mutations only)."""
    calls: list[EvolutionConfig] = []

    class LocalSearch(EvolutionarySearch):
        def __init__(self, space, scorer, constraints=(), config=None, hooks=(), sampler=None):
            config = EvolutionConfig(**{**vars(config or EvolutionConfig()), "crossovers": 0})
            calls.append(config)
            super().__init__(space, scorer, constraints, config, hooks, sampler)

    STRATEGIES.register("toy-local", LocalSearch)
    yield calls
    STRATEGIES.unregister("toy-local")


def test_a_registered_strategy_is_used_by_name_and_recorded(toy_strategy, small_space, digits, tmp_path):
    result = run_search(_supernet(small_space), digits, tmp_path, shift=None, evolution=EVO, scoring=SCORE,
                        strategy="toy-local")
    assert len(toy_strategy) == 1 and toy_strategy[0].crossovers == 0
    assert "crossover" not in {c.origin for c in result.candidates}
    assert json.loads((tmp_path / "search.json").read_text())["config"]["strategy"] == "toy-local"
    # the CLI's choices are the registry's: the new name parses, an unknown one is refused with the list
    runner = CliRunner()
    known = runner.invoke(cli, ["search", "--profile", "cpu-ort", "--strategy", "toy-local"])
    assert known.exit_code == 2 and "exactly one of --supernet" in known.stderr
    unknown = runner.invoke(cli, ["search", "--profile", "cpu-ort", "--strategy", "nope"])
    assert unknown.exit_code == 2
    known_names = ", ".join(STRATEGIES.names())
    assert "toy-local" in known_names
    assert unknown.stderr.strip() == f"error: unknown search strategy 'nope'; known: {known_names}"


def test_the_score_cache_scores_each_architecture_once_and_changes_nothing(small_space, digits, tmp_path):
    calls: list[object] = []

    class Uncached(SupernetScorer):
        deterministic = False  # the search then calls it for every proposal and re-score

        def __call__(self, arch):
            calls.append(arch)
            return super().__call__(arch)

    SCORERS.register("test-uncached", Uncached)
    try:
        plain = run_search(_supernet(small_space), digits, tmp_path / "a", shift=None, evolution=EVO, scoring=SCORE,
                           scorer="test-uncached")
    finally:
        SCORERS.unregister("test-uncached")
    cached = run_search(_supernet(small_space), digits, tmp_path / "b", shift=None, evolution=EVO, scoring=SCORE)
    assert [(c.arch, c.score) for c in cached.candidates] == [(c.arch, c.score) for c in plain.candidates]
    assert len(calls) == len(plain.candidates) > len(set(calls))  # re-scoring the top-k repeats architectures
    info = cached.info["scorer"]
    assert info["evaluations_this_session"] == len(set(calls))
    assert info["cache_hits_this_session"] == len(calls) - len(set(calls))


def test_cached_scorer_passes_values_through():
    seen: list[str] = []

    def score(arch):
        seen.append(arch)
        return 0.5, {"accuracy": 0.5}

    cache = CachedScorer(score)
    assert cache("x") == (0.5, {"accuracy": 0.5}) == cache("x") and seen == ["x"] and cache.hits == 1


# ----- a new runtime: one class and one register call ------------------------------------------------------------
@pytest.fixture
def torchscript_runtime():
    from edgenas.hardware.measure import RUNTIMES, LatencyMeasurer, TorchCpuMeasurer

    class TorchScriptMeasurer(TorchCpuMeasurer):
        """Times the model traced and frozen by TorchScript (a real runtime, timed for real)."""

        def __init__(self, profile):
            LatencyMeasurer.__init__(self, profile)

        def _prepare(self, model, input_shape):
            eager = super()._prepare(model, input_shape)
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, and still a runtime
                frozen = torch.jit.freeze(torch.jit.trace(eager.model, eager.x))
            return type(eager)(frozen, eager.x)

    RUNTIMES.register("torchscript", TorchScriptMeasurer)
    yield TorchScriptMeasurer
    RUNTIMES.unregister("torchscript")


def test_a_registered_runtime_loads_in_a_profile_and_times_models(torchscript_runtime, tmp_path, tiny_mbv3):
    from edgenas.hardware.measure import create_measurer
    from edgenas.hardware.profile import load_profile

    path = tmp_path / "cpu-ts.yaml"
    path.write_text("name: cpu-ts\ndevice: cpu\nruntime: torchscript\ninput_shape: [1, 8, 8]\n"
                    "measure: {warmup: 1, repeats: 3, trials: 2}\n")
    profile = load_profile(path)
    measurer = create_measurer(profile)
    assert isinstance(measurer, torchscript_runtime)
    rng = np.random.default_rng(0)
    models = [tiny_mbv3.build_subnet(tiny_mbv3.sample(rng), 10, 1) for _ in range(2)]
    stats = measurer.measure_many(models, [None, None])
    assert all(s.n == 6 and 0 < s.median_ms < 1000 for s in stats)
    path.write_text(path.read_text().replace("torchscript", "tflite"))
    with pytest.raises(ConfigError, match=r"'runtime' must be one of onnxruntime, torch, .*torchscript, not 'tflite'"):
        load_profile(path)


# ----- the stage functions and --config -----------------------------------------------------------------------
def test_search_job_refuses_bad_combinations_before_loading_anything(tmp_path):
    from edgenas import pipeline

    for job, message in (
        (pipeline.SearchJob(profile="cpu-ort"), "exactly one of --supernet"),
        (pipeline.SearchJob(profile="cpu-ort", supernet="x.pt", latency_ms=1, latency_quantile=0.2), "not both"),
        (pipeline.SearchJob(profile="cpu-ort", transfer_from="x.pt", shift=False, data="digits"), "needs shifting"),
        (pipeline.SearchJob(profile="cpu-ort", supernet="x.pt", freeze_backbone=True), "only applies"),
        (pipeline.SearchJob(profile="cpu-ort", supernet="x.pt", strategy="nope"), "unknown search strategy"),
    ):
        with pytest.raises(EdgenasError, match=message):
            pipeline.search(job)


def test_train_job_from_sections_checks_sections_and_space_keys(tmp_path):
    from edgenas.pipeline import TrainJob

    job = TrainJob.from_sections({"space": {"name": "mbv3", "preset": "small", "width_mult": 0.25},
                                  "data": {"name": "digits"}, "train": {"epochs": 1}}, out=str(tmp_path))
    assert (job.space, job.preset, job.space_options, job.train.epochs) == ("mbv3", "small", {"width_mult": 0.25}, 1)
    with pytest.raises(ConfigError, match="unknown section 'model'"):
        TrainJob.from_sections({"model": {}})
    with pytest.raises(ConfigError, match="train: unknown key 'epoch'"):
        TrainJob.from_sections({"train": {"epoch": 1}})


def test_every_command_reads_options_from_config_and_the_command_line_wins(tmp_path):
    config = tmp_path / "sample.yaml"
    config.write_text("count: 3\nseed: 4\n")
    runner = CliRunner()
    from_file = runner.invoke(cli, ["space", "sample", "mbv3", "--config", str(config)])
    assert from_file.exit_code == 0 and len(from_file.stdout.splitlines()) == 3
    overridden = runner.invoke(cli, ["space", "sample", "mbv3", "--config", str(config), "-n", "1"])
    assert overridden.stdout.splitlines() == from_file.stdout.splitlines()[:1]
    config.write_text("colour: red\n")
    bad = runner.invoke(cli, ["space", "sample", "mbv3", "--config", str(config)])
    assert bad.exit_code == 2 and "unknown option 'colour' for `cli space sample`" in bad.stderr
    config.write_text("profile: cpu-ort\nrecal: [1\n")
    bad = runner.invoke(cli, ["extract", "somewhere", "--config", str(config)])
    assert bad.exit_code == 2 and "malformed YAML" in bad.stderr


# ----- the README's script, verbatim ---------------------------------------------------------------------------
FAST_CPU_ORT = """\
name: cpu-ort
device: cpu
runtime: onnxruntime
provider: CPUExecutionProvider
threads: 1
input_shape: [1, 28, 28]
measure: {warmup: 2, repeats: 5, trials: 2, statistic: median}
budgets: {latency_ms: 1.0}
"""


def _readme_pipeline_script() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- pipeline-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README has no pipeline example"
    return match.group(1)


@pytest.mark.slow
def test_readme_pipeline_script_runs_verbatim(tmp_path, monkeypatch):
    script = _readme_pipeline_script()
    assert len([line for line in script.splitlines() if line.strip()]) <= 15
    # the shipped cpu-ort profile, with a short timing protocol: a user's directory shadows it by name
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "cpu-ort.yaml").write_text(FAST_CPU_ORT)
    monkeypatch.setenv("EDGENAS_PROFILES", str(tmp_path / "profiles"))
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(script, "README pipeline example", "exec"), {})
    arch, accuracy, bundle = re.fullmatch(r"(mbv3@v1:[\d-]+) test accuracy (\d+\.\d\d)% (\S+)\n",
                                          out.getvalue()).groups()
    manifest = json.loads((tmp_path / bundle / "manifest.json").read_text())
    assert manifest["arch"] == arch and "baseline" in manifest
    assert 20.0 < float(accuracy) <= 100.0  # well above chance (10%) on digits
    assert json.loads((tmp_path / "runs/py/search/search.json").read_text())["strategy"] == "evolution"


# ----- a custom space, from the README, verbatim -----------------------------------------------------------------
def test_readme_custom_space_example_runs_verbatim_without_torch():
    import subprocess
    import sys

    text = (REPO / "README.md").read_text()
    script = re.search(r"<!-- custom-space-example -->\n```python\n(.*?)```", text, re.S).group(1)
    probe = ("\nimport json, sys\nresult = search.run()\n"
             "state = len(json.dumps(search.state_dict()))\n"
             "print(json.dumps({'torch': 'torch' in sys.modules, 'score': result.best.score,\n"
             "                  'mflops': result.best.metrics['mflops'], 'state': state}))\n")
    proc = subprocess.run([sys.executable, "-c", script + probe], capture_output=True, text=True, check=True,
                          cwd=REPO)
    arch_line, report = proc.stdout.splitlines()
    assert re.fullmatch(r"cell@v1:[0-4](-[0-4]){5}", arch_line)
    figures = json.loads(report)
    assert figures["torch"] is False  # the numpy-only search does not import torch
    assert figures["mflops"] <= 20 and figures["score"] == 22  # the optimum under the budget
    assert figures["state"] > 0  # numpy integers in the space's Arch values did not break the JSON state


def test_a_space_method_returning_a_tuple_is_a_one_line_error():
    from edgenas.errors import SearchError

    class TupleSpace:
        def sample(self, rng):
            return tuple(int(c) for c in rng.integers(3, size=4))

        def mutate(self, arch, rng, prob):
            return arch

        def crossover(self, a, b, rng):
            return a

        def validate(self, arch):
            return arch

    with pytest.raises(SearchError, match=r"TupleSpace.sample returned tuple, not an edgenas Arch"):
        EvolutionarySearch(TupleSpace(), lambda a: 0.0, (), EVO).run()


def test_arch_names_and_numpy_integers_and_zero_budgets():
    from edgenas.search import Budget
    from edgenas.space import Arch

    arch = Arch("NB-201.v2", np.int64(1), np.array([0, 4, 2]))
    assert Arch.from_str(arch.to_str()) == arch and json.dumps(arch.to_json())
    assert type(arch.choices[0]) is int and type(arch.version) is int
    for bad, message in ((("nb 201", 1, (0,)), "space name must be"), (("x", 1, (1.5,)), "must be an integer"),
                         (("x", 1, (-1,)), "negative")):
        with pytest.raises(SpaceError, match=message):
            Arch(*bad)
    zero = Budget("mflops", lambda a: float(sum(a.choices)), limit=0)
    assert zero(Arch("x", 1, (0, 0)))[0] and not zero(Arch("x", 1, (0, 1)))[0]
    with pytest.raises(ConfigError, match="finite number >= 0"):
        Budget("mflops", lambda a: 0.0, limit=-1)


def test_budget_sampler_steers_a_custom_space_into_a_tight_budget():
    from edgenas.search import AdditiveCost, Budget, budget_sampler
    from edgenas.space import Arch

    class Plain:  # no sample_in_range: the generic steering is used
        def sample(self, rng):
            return Arch("plain", 1, rng.integers(5, size=8))

        def validate(self, arch):
            return arch

    cost = AdditiveCost(0.0, tuple((0.0, 1.0, 2.0, 3.0, 4.0) for _ in range(8)))
    sampler = budget_sampler(Plain(), [Budget("cost", cost, limit=3.0, floor=0.0)])
    assert sampler is not None
    rng = np.random.default_rng(0)
    draws = [sampler(rng) for _ in range(50)]
    assert all(cost(a) <= 3.0 for a in draws) and len(set(draws)) > 10


# ----- bad outputs and usage errors: one line, exit 2, before any work ---------------------------------------------
@pytest.mark.parametrize("args", [
    ["train", "--data", "digits", "--epochs", "1", "--out", "{file}/run"],
    ["baseline", "--family", "lcnet", "--width", "0.5", "--data", "digits", "--out", "{file}/run"],
    ["profile", "build", "--profile", "cpu-ort", "--out", "{file}/table.json"],
])
def test_an_unwritable_output_is_refused_before_any_work(args, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    res = CliRunner().invoke(cli, [a.replace("{file}", str(blocker)) for a in args])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1 and "cannot write --out" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing made, nothing measured


def test_usage_errors_are_one_line():
    runner = CliRunner()
    for args, message in ((["space", "sample", "mbv3", "-n", "-1"], "-1 is not in the range x>=1"),
                          (["space", "sample", "mbv3", "--colour"], "No such option '--colour'"),
                          (["search", "--supernet", "x.pt"], "Missing option '--profile'")):
        res = runner.invoke(cli, args)
        assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.output
        assert res.stderr.startswith("error: ") and message in res.stderr and "--help)" in res.stderr
