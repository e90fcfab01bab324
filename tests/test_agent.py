"""The device agent and the `remote` runtime over loopback, both ends in the test.

Most tests run the agent in a thread of this process (``create_server`` on port 0), which lets a test
swap the rate limiter's clock; the standalone test and the end-to-end test run it as a subprocess
from a copy of ``edgenas/agent/server.py`` with torch, onnx and edgenas imports blocked, as on a
board that has only onnxruntime and numpy. No assertion is about how fast anything ran: the slow
agent sleeps far past the client's timeout, and figures are only checked for their counts.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from click.testing import CliRunner
from onnx import TensorProto, helper
from torch import nn

from edgenas.agent import server as agent_server
from edgenas.agent.server import AgentConfig, AgentConfigError, create_server, external_data_refs, is_loopback
from edgenas.check import BASELINE_KEY, Baseline
from edgenas.cli import cli
from edgenas.errors import ConfigError
from edgenas.hardware.measure import create_measurer, export_onnx_bytes
from edgenas.hardware.profile import MeasureSettings, Profile, RemoteSettings, load_profile
from edgenas.hardware.remote import AgentError, Journal, RemoteMeasurer, graph_key, plan_parts

TOKEN_ENV = "EDGENAS_AGENT_TOKEN"
TOKEN = "loopback-test-token-0123456789"
FAST = MeasureSettings(warmup=1, repeats=4, trials=3)
BLOCKER = """
import runpy, sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "edgenas", "onnx"):
            raise ImportError(f"{name} is blocked: the agent must run with onnxruntime and numpy only")
        return None
sys.meta_path.insert(0, _Block())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _conv(channels: int = 4) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU())


def _onnx(model: nn.Module | None = None) -> bytes:
    return export_onnx_bytes(model or _conv(), (1, 1, 8, 8))


def _profile(url: str, measure: MeasureSettings = FAST, **remote: object) -> Profile:
    return Profile(name="board", device="cpu", runtime="remote", input_shape=(1, 8, 8), measure=measure,
                   remote=RemoteSettings(url=url, **remote))  # type: ignore[arg-type]


def _profile_file(folder: Path, url: str, measure: dict | None = None, **remote: object) -> Path:
    data = {"name": "board", "device": "cpu", "runtime": "remote", "input_shape": [1, 8, 8],
            "measure": measure or {"warmup": 1, "repeats": 4, "trials": 3}, "remote": {"url": url, **remote}}
    path = folder / "board.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _raw(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None
         ) -> tuple[int, dict]:
    """A request that bypasses the client (and its checks); the status and the JSON answer."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.setenv("EDGENAS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture
def agent(env):
    """Start agents in threads of this process: ``agent(**AgentConfig fields)`` -> the server."""
    servers = []

    def start(**config: object) -> agent_server.AgentServer:
        server = create_server(AgentConfig(port=0, **config), log=lambda line: None)  # type: ignore[arg-type]
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _spawn(folder: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """The agent as a board runs it: one copied file, torch/onnx/edgenas imports blocked."""
    script = folder / "edgenas_agent.py"
    shutil.copy(agent_server.__file__, script)
    log = open(folder / f"agent-{time.monotonic_ns()}.log", "w")  # the child keeps its own copy
    proc = subprocess.Popen([sys.executable, "-c", BLOCKER, str(script), "serve", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=log, text=True, cwd=folder,
                            env={**os.environ, TOKEN_ENV: TOKEN})
    log.close()
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("edgenas agent listening on "):
        proc.kill()
        raise AssertionError(f"agent did not start: {line!r} {Path(log.name).read_text()}")
    return proc, line.split()[4]


# ----- the protocol ---------------------------------------------------------------------------------------------
def test_standalone_agent_needs_no_torch_and_follows_the_protocol(env):
    proc, url = _spawn(env)
    try:
        meter = create_measurer(_profile(url))
        assert isinstance(meter, RemoteMeasurer)
        small, big = _onnx(_conv(2)), _onnx(_conv(16))
        stats = meter.measure_onnx_many([small, big, small], [None, (1, 8, 8), (1, 1, 8, 8)])
        assert meter.requests == 1  # all three in one request: interleaved on the agent
        for st in stats:
            assert st.n == FAST.trials * FAST.repeats and len(st.trial_medians_ms) == FAST.trials
            per_trial = np.reshape(st.samples_ms, (FAST.trials, FAST.repeats))
            assert np.allclose(np.median(per_trial, axis=1), st.trial_medians_ms)
            assert st.median_ms > 0
        env_doc = meter.environment()
        assert env_doc["runtime"] == "remote" and env_doc["provider"] == "CPUExecutionProvider"
        assert env_doc["runtime_versions"]["onnxruntime"] and env_doc["cpu"]
        health = meter.health()
        assert health["served"] == {"measure_requests": 0, "models_measured": 0, "refused": 0}
        _, after = _raw(url, "GET", "/v1/health", headers=_auth())
        assert after["served"]["measure_requests"] == 1 and after["served"]["models_measured"] == 3
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_modules_are_exported_once_and_measured_interleaved_in_one_request(agent):
    server = agent()
    meter = RemoteMeasurer(_profile(server.url()))
    shared, other = _conv(2), _conv(8)
    stats = meter.measure_many([shared, other, shared], [(1, 8, 8), None, (1, 8, 8)])
    assert [s.n for s in stats] == [FAST.trials * FAST.repeats] * 3
    assert meter.requests == 1 and server.counters["models_measured"] == 3
    assert meter.measure_module(other).n == FAST.trials * FAST.repeats


def test_a_split_measurement_plans_by_count_and_bytes():
    assert plan_parts([0, 1, 2, 3, 4], [10] * 5, max_models=2, max_bytes=1 << 30) == [[0, 1], [2, 3], [4]]
    # a blob repeated inside a part is sent once, so it counts once
    slack = 1 << 16
    assert plan_parts([0, 0, 0, 1], [100, 100], max_models=10, max_bytes=slack + 150) == [[0, 1, 2], [3]]
    assert plan_parts([0], [10], 1, 1) == [[0]]  # a lone model always gets its own request


def test_graph_key_ignores_weight_values_but_not_structure():
    a, b = _onnx(_conv(4)), _onnx(_conv(4))  # fresh random weights
    assert a != b and graph_key(a) == graph_key(b)
    assert graph_key(a) != graph_key(_onnx(_conv(8)))
    assert graph_key(a) != graph_key(export_onnx_bytes(_conv(4), (1, 1, 16, 16)))


# ----- security and bad input -------------------------------------------------------------------------------
def test_a_wrong_or_missing_token_is_refused_in_one_line(agent, monkeypatch):
    server = agent()
    url = server.url()
    monkeypatch.setenv(TOKEN_ENV, "not-the-token")
    with pytest.raises(AgentError) as err:
        RemoteMeasurer(_profile(url)).measure_onnx(_onnx())
    message = _one_line(str(err.value))
    assert f"agent at {url} refused the token in ${TOKEN_ENV} (401)" in message and "not-the-token" not in message
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(AgentError, match=r"needs a token \(401\): set \$EDGENAS_AGENT_TOKEN"):
        RemoteMeasurer(_profile(url)).measure_onnx(_onnx())
    with pytest.raises(ConfigError, match=r"with the token in \$EDGENAS_AGENT_TOKEN, which is not set here"):
        RemoteMeasurer(_profile("http://192.0.2.1:8765"))  # not loopback: refused before any request
    status, answer = _raw(url, "GET", "/v1/health", headers={"Authorization": "Bearer " + TOKEN[:-1]})
    assert status == 401 and "missing or wrong token" in answer["error"]
    assert server.counters["measure_requests"] == 0


def test_an_oversized_model_is_refused_before_the_body_is_read(agent):
    server = agent(max_model_mb=0.01, max_request_mb=0.05)
    url = server.url()
    big = _onnx(nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1)))  # ~37 KB
    assert 0.01 * 2**20 < len(big) < 0.05 * 2**20
    with pytest.raises(AgentError) as err:  # the client knows the limit from /v1/health and does not send it
        RemoteMeasurer(_profile(url)).measure_onnx(big)
    message = _one_line(str(err.value))
    assert re.search(rf"model 0 is 0\.\d+ MB; the agent at {url} takes models up to 0\.01 MB", message), message
    # a client that ignores the limits: 413 from Content-Length alone (no body is sent at all)
    status, answer = _raw(url, "POST", "/v1/measure", headers={**_auth(), "Content-Length": str(10**9)})
    assert status == 413 and "--max-request-mb" in answer["error"]
    # within the request limit, but one model over the model limit: 413 from the header
    head = json.dumps({"protocol": 1, "settings": RemoteMeasurer(_profile(url))._settings(), "blobs": [len(big)],
                       "models": [{"blob": 0, "input_shape": None}]}).encode()
    status, answer = _raw(url, "POST", "/v1/measure", body=struct.pack(">I", len(head)) + head + big, headers=_auth())
    assert status == 413 and "--max-model-mb" in answer["error"]
    assert server.counters["measure_requests"] == 0


def _external_model(nested: bool = False) -> bytes:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../../etc/passwd")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    if not nested:
        graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [weight])
    else:  # the tensor hides in a Constant node of an If branch
        branch = helper.make_graph([helper.make_node("Constant", [], ["y"], value=weight)], "b", [], [y])
        cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
        node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)
        graph = helper.make_graph([node], "g", [cond], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_only_self_contained_onnx_models_are_loaded(agent):
    url = agent().url()
    assert external_data_refs(_onnx()) is False
    assert external_data_refs(_external_model()) and external_data_refs(_external_model(nested=True))
    meter = RemoteMeasurer(_profile(url))
    cases = [(b"#!/bin/sh\nrm -rf /\n", "model blob 0 is not an ONNX model"),
             (onnx.helper.make_tensor("t", TensorProto.FLOAT, [1], [1.0]).SerializeToString(),
              "model blob 0 is not an ONNX model"),
             (_external_model(), "model blob 0 refers to external data files"),
             (_external_model(nested=True), "model blob 0 refers to external data files"),
             (helper.make_model(helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "g",
                                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
                                ).SerializeToString(), "onnxruntime cannot load model 0")]
    for body, reason in cases:
        with pytest.raises(AgentError) as err:
            meter.measure_onnx(body)
        message = _one_line(str(err.value))
        assert message.startswith(f"agent at {url} refused the request (400): ") and reason in message, message


def test_malformed_requests_are_400_with_a_reason(agent):
    url = agent().url()
    ok = RemoteMeasurer(_profile(url))._settings()
    model = _onnx()

    def send(header: object, blobs: bytes = model) -> tuple[int, str]:
        head = json.dumps(header).encode()
        status, answer = _raw(url, "POST", "/v1/measure", struct.pack(">I", len(head)) + head + blobs, _auth())
        return status, answer.get("error", "")

    base = {"protocol": 1, "settings": ok, "blobs": [len(model)], "models": [{"blob": 0, "input_shape": None}]}
    assert send({**base, "protocol": 2}) == (400, send({**base, "protocol": 2})[1])
    assert "speaks protocol 1" in send({**base, "protocol": 2})[1]
    assert "'repeats' must be an integer from 1 to 10000" in send({**base, "settings": {**ok, "repeats": 10**6}})[1]
    assert "'blob' must index 'blobs'" in send({**base, "models": [{"blob": 3, "input_shape": None}]})[1]
    assert "add up to" in send({**base, "blobs": [len(model) - 1]})[1]
    assert "exactly the keys" in send({**base, "extra": 1})[1]
    assert "has no CUDAExecutionProvider" in send({**base, "settings": {**ok, "provider": "CUDAExecutionProvider"}})[1]
    status, answer = _raw(url, "POST", "/v1/measure", struct.pack(">I", 10**8) + b"{}", _auth())
    assert status == 400 and "header of" in answer["error"]
    assert _raw(url, "GET", "/v1/nothing", headers=_auth())[0] == 404


def test_rate_limit_429_is_retried_after_the_agents_retry_after(agent):
    server = agent(rate_per_minute=2)
    now = [0.0]
    server.bucket = agent_server._Bucket(2, clock=lambda: now[0])
    meter = RemoteMeasurer(_profile(server.url()))
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # the agent's clock moves instead of the test waiting
        slept.append(seconds)
        now[0] += seconds

    meter.client.sleep = sleep
    meter.measure_onnx(_onnx())  # health + measure: the two requests of this minute
    assert meter.measure_onnx(_onnx()).n == FAST.trials * FAST.repeats  # 429, waits Retry-After, then served
    assert slept == [30.0]
    meter.client.retries = 0
    with pytest.raises(AgentError) as err:
        meter.measure_onnx(_onnx())
    assert "(429): rate limit of 2 requests per minute reached" in _one_line(str(err.value))


def test_a_slow_agent_times_out_in_one_line_and_a_long_request_is_stopped_by_the_agent(agent):
    slow = agent(debug_delay_s=5.0)
    meter = RemoteMeasurer(_profile(slow.url(), timeout_s=0.5))
    with pytest.raises(AgentError) as err:
        meter.measure_onnx(_onnx())
    assert _one_line(str(err.value)).startswith(f"the agent at {slow.url()} did not answer within 0.5 s "
                                                "(remote.timeout_s)")
    capped = agent(debug_delay_s=0.3, max_request_s=0.1)
    with pytest.raises(AgentError, match=r"\(503\): stopped at the agent's request time limit"):
        RemoteMeasurer(_profile(capped.url())).measure_onnx(_onnx())


def test_an_unreachable_agent_is_one_line(env):
    with pytest.raises(AgentError) as err:
        RemoteMeasurer(_profile("http://127.0.0.1:9")).measure_onnx(_onnx())
    assert "cannot reach the agent at http://127.0.0.1:9" in _one_line(str(err.value))


def test_the_agent_refuses_to_start_unprotected(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(AgentConfigError, match=r"set the agent's token in \$EDGENAS_AGENT_TOKEN"):
        create_server(AgentConfig(port=0))
    res = CliRunner().invoke(cli, ["agent", "serve", "--port", "0", "--host", "0.0.0.0", "--insecure-no-token"])
    assert res.exit_code == 2 and "only allowed on a loopback address" in _one_line(res.stderr)
    res = CliRunner().invoke(cli, ["agent", "serve", "--max-model-mb", "-1"])
    assert res.exit_code == 2 and "--max-model-mb must be a positive number" in res.stderr
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("board.local")


# ----- profiles -------------------------------------------------------------------------------------------------
def test_remote_profiles_validate_and_hash_what_changes_a_latency(tmp_path):
    base = _profile("http://127.0.0.1:8765")
    moved = _profile("http://10.0.0.7:9000", timeout_s=5.0, retries=0, max_models_per_request=8)
    assert base.latency_hash() == moved.latency_hash()  # where the board is reached is not what it is
    assert base.latency_hash() != _profile("http://127.0.0.1:8765", provider="XnnpackExecutionProvider").latency_hash()
    assert Profile.from_json(base.to_json()) == base
    assert "remote" not in load_profile("cpu-ort").to_json()  # other profiles' JSON is as it always was
    example = load_profile("remote-example")
    assert example.runtime == "remote" and example.remote is not None
    assert example.remote.url == "http://127.0.0.1:8765"
    meaningful = [ln for ln in Path(example.source).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(meaningful) == 6
    cases = [({"remote": None}, "runtime remote needs a 'remote' block with the agent's url"),
             ({"runtime": "torch"}, "'remote' (the device agent's block) is for runtime remote only"),
             ({"provider": "CPUExecutionProvider"}, "'provider' of a remote profile goes in its 'remote' block"),
             ({"remote": {"url": "http://user:hunter2@board:8765"}}, "must not hold credentials"),
             ({"remote": {"url": "ftp://board"}}, "'url' must be the agent's http://HOST:PORT"),
             ({"remote": {"url": "http://board:99999"}}, "'url' has an invalid port"),
             ({"remote": {"url": "http://board:1", "token_env": "1 2"}}, "'token_env' must be an environment"),
             ({"remote": {"url": "http://board:1", "timeout_s": 0}}, "'timeout_s' must be positive"),
             ({"remote": {"url": "http://board:1", "max_models_per_request": 0}}, "'max_models_per_request'"),
             ({"remote": {"url": "http://board:1", "provider": "CUDAExecutionProvider"}}, "needs device cuda")]
    for change, message in cases:
        data = {"name": "b", "device": "cpu", "runtime": "remote", "input_shape": [1, 8, 8],
                "remote": {"url": "http://127.0.0.1:8765"}, **change}
        path = tmp_path / "b.yaml"
        path.write_text(yaml.safe_dump(data))
        res = CliRunner().invoke(cli, ["profile", "show", str(path)])
        line = _one_line(res.stderr)
        assert res.exit_code == 2 and message in line and "hunter2" not in line, line
    assert CliRunner().invoke(cli, ["profile", "list"]).exit_code == 0


def test_journal_keeps_parts_until_done_and_ignores_stale_or_broken_ones(tmp_path):
    journal = Journal(tmp_path, max_age_s=60)
    part = [{"samples_ms": [1.0], "trial_medians_ms": [1.0]}]
    journal.save("k", 0, part)
    assert journal.load("k", 0, 1) == part and journal.load("k", 0, 2) is None and journal.load("k", 1, 1) is None
    (tmp_path / "k" / "part-0001.json").write_text("{not json")
    assert journal.load("k", 1, 1) is None
    old = Journal(tmp_path, max_age_s=-1)
    assert old.load("k", 0, 1) is None
    old.prune()
    assert not (tmp_path / "k").exists()


# ----- end to end -------------------------------------------------------------------------------------------------
def test_check_update_and_check_through_the_agent(agent, tmp_path):
    url = agent().url()
    bundle = tmp_path / "net"
    bundle.mkdir()
    data = export_onnx_bytes(_conv(8), (1, 1, 8, 8), dynamic_batch=True)
    (bundle / "model.onnx").write_bytes(data)
    import hashlib

    manifest = {"format": "edgenas-bundle/1", "name": "net", "arch": "test", "arch_id": "0" * 12, "space": {},
                "data": {"name": "synthetic", "input_size": [8, 8], "in_channels": 1},
                "input": {"name": "input", "shape": [None, 1, 8, 8]},
                "files": {"model.onnx": {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    profile = _profile_file(tmp_path, url, measure={"warmup": 2, "repeats": 10, "trials": 2})
    res = CliRunner().invoke(cli, ["check", str(bundle), "--profile", str(profile), "--update", "--max-seconds", "5"])
    assert res.exit_code == 0, res.output
    assert "wrote baseline for profile board" in res.stdout
    baseline = Baseline.from_json(json.loads((bundle / "manifest.json").read_text())[BASELINE_KEY])
    assert baseline.profile_hash == load_profile(str(profile)).latency_hash() and all(r > 0 for r in baseline.ratios)
    res = CliRunner().invoke(cli, ["check", str(bundle), "--profile", str(profile), "--json", "--max-seconds", "5"])
    assert res.exit_code in (0, 1, 3), res.output
    report = json.loads(res.stdout)
    assert report["latency"]["verdict"] in ("PASS", "IMPROVED", "REGRESSION", "INCONCLUSIVE")
    assert all(r > 0 for r in report["latency"]["ratios"])


SPACE_YAML = """\
space: {name: mbv3, width_mult: 0.25}
data: {name: digits}
train: {epochs: 1, batch_size: 32, steps_per_epoch: 2, val_archs: 0, device: cpu}
"""


@pytest.mark.slow
def test_a_board_through_the_agent_killed_mid_build_resumed_validated_and_searched(env, caplog):
    """`profile build` through a subprocess agent killed with SIGKILL after a few requests: one error
    line, exit 2, no table; a rerun against a new agent (another port) measures only the missing
    requests; then `profile validate` and `search --measure` through the same agent."""
    runner = CliRunner()
    journal = env / "cache" / "agent-journal"
    first, url = _spawn(env, "--debug-delay-s", "0.2")
    small = {"warmup": 1, "repeats": 2, "trials": 1}
    profile = _profile_file(env, url, measure=small, max_models_per_request=16)
    table = env / "tables" / "board.json"
    build = ["profile", "build", "--profile", str(profile), "--space", "mbv3", "--width-mult", "0.25", "--calib",
             "2", "--out", str(table)]
    killed: dict[str, int] = {}

    def kill_after_two_parts() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and first.poll() is None:
            if len(list(journal.glob("*/part-*.json"))) >= 2:
                first.send_signal(signal.SIGKILL)
                first.wait()
                killed["pid"] = first.pid
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_after_two_parts)
    killer.start()
    res = runner.invoke(cli, build)
    killer.join()
    first.stdout.close()
    assert killed, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and url in errors[0] and "Traceback" not in res.output, res.output
    kept = len(list(journal.glob("*/part-*.json")))  # counted once the build has stopped writing
    assert not table.exists() and kept >= 2

    second, url2 = _spawn(env)
    try:
        _profile_file(env, url2, measure=small, max_models_per_request=16)  # same board, reached on another port
        with caplog.at_level(logging.WARNING, logger="edgenas.hardware.remote"):
            res = runner.invoke(cli, build)
        assert res.exit_code == 0, res.output
        found = re.search(r"(\d+) of (\d+) requests of this measurement were measured before an interruption",
                          caplog.text)
        assert found and int(found[1]) == kept, caplog.text
        _, health = _raw(url2, "GET", "/v1/health", headers=_auth())
        assert health["served"]["measure_requests"] == int(found[2]) - kept
        assert not list(journal.glob("*/part-*.json"))  # done: the journal is cleared
        stored = json.loads(table.read_text())
        assert stored["environment"]["runtime"] == "remote" and stored["profile"]["remote"]["url"] == url2
        assert stored["environment"]["runtime_versions"]["agent_protocol"] == "1"

        res = runner.invoke(cli, ["profile", "validate", str(table), "--n", "4", "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["n"] == 4

        (env / "train.yaml").write_text(SPACE_YAML)
        res = runner.invoke(cli, ["train", "--config", str(env / "train.yaml"), "--out", str(env / "sn")])
        assert res.exit_code == 0, res.output
        res = runner.invoke(cli, ["search", "--profile", str(profile), "--supernet", str(env / "sn" / "supernet.pt"),
                                  "--tables-dir", str(table.parent), "--latency-ms", "100", "--population", "4",
                                  "--generations", "1", "--topk", "2", "--mutations", "1", "--crossovers", "1",
                                  "--val-limit", "32", "--shift-batches", "1", "--device", "cpu",
                                  "--out", str(env / "search"), "--json"])
        assert res.exit_code == 0, res.output
        measured = json.loads(res.stdout)["measured"]
        assert len(measured["finalists"]) == 2 and all(f["stats"]["n"] == 2 for f in measured["finalists"])
        _, after = _raw(url2, "GET", "/v1/health", headers=_auth())
        assert after["served"]["measure_requests"] > health["served"]["measure_requests"] + 1
    finally:
        second.kill()
        second.wait()
        second.stdout.close()
