"""The edgenas device agent: times ONNX models on the board it runs on, for an edgenas elsewhere.

This one file is the whole agent, and it imports only the standard library, numpy and onnxruntime,
so a board needs no torch and no edgenas::

    pip install onnxruntime numpy            # on the board
    export EDGENAS_AGENT_TOKEN=$(python3 -c "import secrets; print(secrets.token_urlsafe(24))")
    python3 server.py serve --port 8765      # this file, copied from edgenas/agent/server.py

(``edgenas agent serve`` runs the same server where edgenas is installed.) A profile with
``runtime: remote`` and the agent's ``url`` then makes the latency table, its validation, a search's
end-to-end measurements and the CI check time their models here (:mod:`edgenas.hardware.remote`).

Protocol (version :data:`PROTOCOL`, plain HTTP, JSON answers):

* ``GET /v1/health`` -- the agent's versions, host facts (CPU, cores, OS, onnxruntime, providers)
  and limits, so the client can plan requests and record where a table was measured.
* ``POST /v1/measure`` -- a body of a 4-byte big-endian header length, a JSON header (the protocol
  settings, the session settings, each model's input shape and which blob it is) and the ONNX blobs
  back to back. Every model gets its own session; then, for each trial, every model in turn (starting
  one later in each trial) runs ``warmup`` untimed inferences and ``repeats`` inferences each timed
  with ``perf_counter_ns`` on I/O-bound inputs and outputs, with the garbage collector off -- the
  protocol of ``edgenas.hardware.measure``, so a table measured here and one measured locally mean the
  same. All models of one request are interleaved this way, so drift hits them alike. The answer
  holds every model's samples and per-trial medians in milliseconds, and the host facts.

Security (the agent runs models for whoever holds the token, on a board that may sit on a shared
network): it listens on 127.0.0.1 unless ``--host`` says otherwise (a warning names the exposure; an
ssh tunnel is the better way in); every request needs ``Authorization: Bearer <token>``, the token
read from an environment variable and compared in constant time, and the agent refuses to start
without one (``--insecure-no-token`` is allowed on loopback only); requests are rate limited (429
with Retry-After); the body's size is checked from Content-Length before a byte of it is read, each
model against ``--max-model-mb``; a body is parsed by onnxruntime as ONNX and nothing else (the
session is told the format is ONNX, and a model that refers to external data files is refused before
onnxruntime sees it, since it would read files of the board); protocol settings are capped and a
request that runs past ``--max-request-s`` is stopped between models; one measurement runs at a time
(others get 503 and retry), so two clients never slow each other's timings down.
"""

from __future__ import annotations

import argparse
import gc
import hmac
import ipaddress
import json
import math
import os
import platform
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

__all__ = ["PROTOCOL", "AgentConfig", "AgentConfigError", "create_server", "host_facts", "main", "serve"]

PROTOCOL = 1
DEFAULT_PORT = 8765
DEFAULT_TOKEN_ENV = "EDGENAS_AGENT_TOKEN"
# Caps on one request's protocol: far above any real table, far below "runs for days".
MAX_WARMUP, MAX_REPEATS, MAX_TRIALS, MAX_THREADS = 1000, 10_000, 100, 256
MAX_HEADER_BYTES = 1 << 20
MAX_FEED_ELEMENTS = 1 << 26  # per input: a declared shape cannot make the agent allocate gigabytes
READ_TIMEOUT_S = 60.0  # a client that stops sending mid-request does not hold a thread forever
MAX_CONNECTIONS = 16
_LEVELS = ("disable", "basic", "extended", "all")
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
           "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
           "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class AgentConfigError(ValueError):
    """The agent cannot start with these settings (one line; the CLI exits 2)."""


class _Refused(Exception):
    """A request the agent answers with an error status and a one-line JSON message."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


@dataclass(frozen=True)
class AgentConfig:
    """How the agent listens and what it accepts (``edgenas agent serve --help`` explains each)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token_env: str = DEFAULT_TOKEN_ENV
    insecure_no_token: bool = False
    max_model_mb: float = 64.0
    max_request_mb: float = 256.0
    max_models: int = 2000
    rate_per_minute: int = 60
    max_request_s: float = 600.0
    debug_delay_s: float = 0.0  # tests only: sleep this long before measuring (a slow board)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise AgentConfigError(f"--port must be 0-65535, not {self.port}")
        if not _ENV_NAME.match(self.token_env):
            raise AgentConfigError(f"--token-env must be an environment variable name, not {self.token_env!r}")
        for name, value in (("--max-model-mb", self.max_model_mb), ("--max-request-mb", self.max_request_mb),
                            ("--max-request-s", self.max_request_s)):
            if not (value > 0 and math.isfinite(value)):
                raise AgentConfigError(f"{name} must be a positive number, not {value}")
        if self.max_request_mb < self.max_model_mb:
            raise AgentConfigError(f"--max-request-mb ({self.max_request_mb:g}) must be at least --max-model-mb "
                                   f"({self.max_model_mb:g}): a request carries at least one model")
        if self.max_models < 1:
            raise AgentConfigError(f"--max-models must be >= 1, not {self.max_models}")
        if self.rate_per_minute < 1:
            raise AgentConfigError(f"--rate-limit must be >= 1 request per minute, not {self.rate_per_minute}")
        if self.debug_delay_s < 0:
            raise AgentConfigError(f"the debug delay must be >= 0 s, not {self.debug_delay_s}")

    def limits(self) -> dict[str, Any]:
        """What a client must respect, as /v1/health reports it."""
        return {"max_model_bytes": int(self.max_model_mb * 2**20),
                "max_request_bytes": int(self.max_request_mb * 2**20),
                "max_models": self.max_models, "max_warmup": MAX_WARMUP, "max_repeats": MAX_REPEATS,
                "max_trials": MAX_TRIALS, "max_threads": MAX_THREADS, "max_request_s": self.max_request_s,
                "rate_per_minute": self.rate_per_minute, "max_header_bytes": MAX_HEADER_BYTES}


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ----- host facts ------------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def host_facts() -> dict[str, Any]:
    """What a latency measured here depends on besides the model (no hostname: boards are interchangeable)."""
    import onnxruntime as ort

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"protocol": PROTOCOL, "cpu": _cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": usable,
            "machine": platform.machine(), "os": platform.platform(terse=True),
            "versions": {"python": platform.python_version(), "numpy": np.__version__, "onnxruntime": ort.__version__},
            "providers": list(ort.get_available_providers())}


# ----- what a body may contain -------------------------------------------------------------------------------------
class _Malformed(Exception):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Malformed
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message: ints for varints, sub-views for bytes."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
            continue
        if wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise _Malformed
            yield number, wire, buf[pos:pos + size]
            pos += size
            continue
        if wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:  # groups (3, 4) and invalid wire types: no ONNX message uses them
            raise _Malformed
        if pos > end:
            raise _Malformed


# Field numbers of onnx.proto that can hold a TensorProto, directly or through a subgraph.
_MODEL = {7: "graph", 20: "training", 25: "function"}
_TRAINING = {1: "graph", 2: "graph"}
_FUNCTION = {7: "node", 11: "attribute"}
_GRAPH = {1: "node", 5: "tensor", 15: "sparse"}
_NODE = {5: "attribute"}
_ATTRIBUTE = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
_SPARSE = {1: "tensor", 2: "tensor"}
_MESSAGES = {"graph": _GRAPH, "training": _TRAINING, "function": _FUNCTION, "node": _NODE, "attribute": _ATTRIBUTE,
             "sparse": _SPARSE}
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 13, 14, 1
_MAX_DEPTH = 64


def external_data_refs(model: bytes | memoryview) -> bool:
    """Whether an ONNX model (serialized ModelProto) has a tensor stored in an external file.

    Walks the protobuf wire format itself (the board has no ``onnx`` package): every initializer,
    sparse initializer, tensor attribute and nested subgraph or function. Raises ``_Malformed`` for
    bytes that are not a protobuf message or a ModelProto without a graph.
    """
    view = memoryview(model)
    has_graph = False
    stack: list[tuple[str, memoryview, int]] = []
    for number, wire, value in _fields(view):
        if wire == 2 and number in _MODEL:
            has_graph |= number == 7
            stack.append((_MODEL[number], value, 1))
    if not has_graph:
        raise _Malformed
    while stack:
        kind, buf, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise _Malformed
        for number, wire, value in _fields(buf):
            if kind == "tensor":
                if (number == _TENSOR_EXTERNAL_DATA and wire == 2) or (
                        number == _TENSOR_DATA_LOCATION and wire == 0 and value == _EXTERNAL):
                    return True
                continue
            child = _MESSAGES[kind].get(number)
            if child is not None and wire == 2:
                stack.append((child, value, depth + 1))
    return False


def _int(header: dict[str, Any], key: str, low: int, high: int) -> int:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _Refused(400, f"'{key}' must be an integer from {low} to {high}, not {str(value)[:40]}")
    return value


@dataclass(frozen=True)
class _Settings:
    provider: str
    threads: int
    inter_op_threads: int
    graph_optimization: str
    batch_size: int
    warmup: int
    repeats: int
    trials: int


_SETTING_KEYS = frozenset(_Settings.__dataclass_fields__)


def parse_header(header: Any, sizes_total: int, limits: dict[str, Any]
                 ) -> tuple[_Settings, list[int], list[tuple[int, list[int] | None]]]:
    """The request header: settings, blob sizes, and per model (blob index, input shape or None)."""
    if not isinstance(header, dict) or set(header) != {"protocol", "settings", "blobs", "models"}:
        raise _Refused(400, "the header must have exactly the keys protocol, settings, blobs, models")
    if type(header["protocol"]) is not int or header["protocol"] != PROTOCOL:
        raise _Refused(400, f"this agent speaks protocol {PROTOCOL}, the client {str(header['protocol'])[:20]}; "
                            "use the same edgenas version on both ends")
    s = header["settings"]
    if not isinstance(s, dict) or set(s) != _SETTING_KEYS:
        raise _Refused(400, f"'settings' must have exactly the keys {', '.join(sorted(_SETTING_KEYS))}")
    if s["graph_optimization"] not in _LEVELS:
        raise _Refused(400, f"'graph_optimization' must be one of {', '.join(_LEVELS)}")
    if not isinstance(s["provider"], str):
        raise _Refused(400, "'provider' must be a string")
    settings = _Settings(provider=s["provider"], threads=_int(s, "threads", 1, MAX_THREADS),
                         inter_op_threads=_int(s, "inter_op_threads", 1, MAX_THREADS),
                         graph_optimization=s["graph_optimization"], batch_size=_int(s, "batch_size", 1, 1 << 16),
                         warmup=_int(s, "warmup", 0, MAX_WARMUP), repeats=_int(s, "repeats", 1, MAX_REPEATS),
                         trials=_int(s, "trials", 1, MAX_TRIALS))
    blobs, models = header["blobs"], header["models"]
    if not isinstance(blobs, list) or not blobs or not isinstance(models, list) or not models:
        raise _Refused(400, "'blobs' and 'models' must be non-empty lists")
    if len(blobs) > len(models):
        raise _Refused(400, f"{len(blobs)} blobs for {len(models)} models; send each distinct model once")
    if len(models) > limits["max_models"]:
        raise _Refused(413, f"{len(models)} models in one request; this agent takes at most {limits['max_models']} "
                            "(--max-models)")
    sizes = []
    for k, size in enumerate(blobs):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise _Refused(400, f"blob {k}: its size must be a positive integer")
        if size > limits["max_model_bytes"]:
            raise _Refused(413, f"model blob {k} is {size / 2**20:.1f} MB; this agent takes models up to "
                                f"{limits['max_model_bytes'] / 2**20:g} MB (--max-model-mb)")
        sizes.append(size)
    if sum(sizes) != sizes_total:
        raise _Refused(400, f"the blobs' sizes add up to {sum(sizes)} bytes but the body holds {sizes_total}")
    out: list[tuple[int, list[int] | None]] = []
    for k, m in enumerate(models):
        if not isinstance(m, dict) or set(m) != {"blob", "input_shape"}:
            raise _Refused(400, f"model {k} must have exactly the keys blob, input_shape")
        blob = m["blob"]
        if isinstance(blob, bool) or not isinstance(blob, int) or not 0 <= blob < len(sizes):
            raise _Refused(400, f"model {k}: 'blob' must index 'blobs'")
        shape = m["input_shape"]
        if shape is not None and (not isinstance(shape, list) or not 1 <= len(shape) <= 8 or any(
                isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= 1 << 20 for d in shape)):
            raise _Refused(400, f"model {k}: 'input_shape' must be a list of positive sizes or null")
        out.append((blob, shape))
    return settings, sizes, out


# ----- measuring ---------------------------------------------------------------------------------------------------
def _session(model: bytes, settings: _Settings, label: str) -> Any:
    """An InferenceSession configured like edgenas's OrtMeasurer; the bytes are read as ONNX only."""
    import onnxruntime as ort

    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[settings.graph_optimization]
    options.intra_op_num_threads = settings.threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.add_session_config_entry("session.load_model_format", "ONNX")  # never the ORT flatbuffer format
    try:
        sess = ort.InferenceSession(model, sess_options=options, providers=[settings.provider])
    except Exception as exc:  # onnxruntime raises its own types (Fail, InvalidGraph, InvalidProtobuf, ...)
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise _Refused(400, f"onnxruntime cannot load {label}: {text}") from None
    if not sess.get_providers() or sess.get_providers()[0] != settings.provider:
        raise _Refused(400, f"onnxruntime fell back from {settings.provider} to {', '.join(sess.get_providers())}")
    return sess


def _feeds(sess: Any, input_shape: Sequence[int] | None, batch_size: int, label: str) -> dict[str, np.ndarray]:
    """Random inputs as edgenas's ``_onnx_feeds`` makes them: the first input shaped by ``input_shape``
    (a missing batch dimension gets ``batch_size``), others from the model, a dynamic first axis read
    as the batch size; floats from ``default_rng(0)``, other types zeros."""
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for k, meta in enumerate(sess.get_inputs()):
        dtype = _DTYPES.get(meta.type)
        if dtype is None:
            raise _Refused(400, f"{label}: input '{meta.name}' has type {meta.type}, which the agent cannot feed")
        dims = list(meta.shape)
        if k == 0 and input_shape is not None:
            shape = [int(d) for d in input_shape]
            if len(shape) == len(dims) - 1:
                shape = [batch_size, *shape]
            if len(shape) != len(dims):
                raise _Refused(400, f"{label}: input '{meta.name}' has {len(dims)} dimensions, the given input "
                                    f"shape {list(input_shape)} has {len(shape)}")
        else:
            shape = []
            for axis, d in enumerate(dims):
                if isinstance(d, int) and d > 0:
                    shape.append(d)
                elif axis == 0:
                    shape.append(batch_size)
                else:
                    raise _Refused(400, f"{label}: input '{meta.name}' has dynamic dimension '{d}' (axis {axis}); "
                                        "give an input shape")
        if math.prod(shape) > MAX_FEED_ELEMENTS:
            raise _Refused(413, f"{label}: input '{meta.name}' of shape {shape} is over the agent's "
                                f"{MAX_FEED_ELEMENTS} elements per input")
        if np.issubdtype(dtype, np.floating):
            feeds[meta.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[meta.name] = np.zeros(shape, dtype=dtype)
    if not feeds:
        raise _Refused(400, f"{label} has no inputs")
    return feeds


class _Runner:
    """One session with inputs and outputs bound once (I/O binding): ``run`` is exactly one inference,
    as in edgenas's ``_OrtRunner`` (plain ``sess.run`` would time Python glue and fresh allocations)."""

    def __init__(self, sess: Any, feeds: dict[str, np.ndarray], provider: str) -> None:
        import onnxruntime as ort

        kind = "cuda" if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"
        binding = sess.io_binding()
        self._values = []
        for name, arr in feeds.items():
            value = ort.OrtValue.ortvalue_from_numpy(arr, kind, 0)
            binding.bind_ortvalue_input(name, value)
            self._values.append(value)
        try:
            outputs = sess.run(None, feeds)  # learns the output shapes; also the first (untimed) run
        except Exception as exc:
            text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise _Refused(400, f"the model does not run: {text}") from None
        for meta, out in zip(sess.get_outputs(), outputs):
            value = ort.OrtValue.ortvalue_from_shape_and_type(list(out.shape), out.dtype, kind, 0)
            binding.bind_ortvalue_output(meta.name, value)
            self._values.append(value)
        if kind == "cuda":
            binding.synchronize_inputs()
        self.sess, self.binding = sess, binding
        self.run: Callable[[], Any] = lambda: sess.run_with_iobinding(binding)

    def timed(self, repeats: int) -> list[float]:
        run, clock = self.run, time.perf_counter_ns
        ticks = [0] * repeats
        for i in range(repeats):
            t0 = clock()
            run()
            ticks[i] = clock() - t0
        return [t / 1e6 for t in ticks]


def measure(blobs: Sequence[bytes], models: Sequence[tuple[int, list[int] | None]], settings: _Settings,
            deadline: float) -> list[dict[str, list[float]]]:
    """Every model timed with the protocol, interleaved round robin; stopped past ``deadline`` (monotonic)."""
    import onnxruntime as ort

    if settings.provider not in ort.get_available_providers():
        raise _Refused(400, f"onnxruntime {ort.__version__} here has no {settings.provider} (available: "
                            f"{', '.join(ort.get_available_providers())})")
    for k, blob in enumerate(blobs):
        try:
            external = external_data_refs(blob)
        except _Malformed:
            raise _Refused(400, f"model blob {k} is not an ONNX model (no ModelProto with a graph)") from None
        if external:
            raise _Refused(400, f"model blob {k} refers to external data files; send a self-contained ONNX model "
                                "(the agent reads no files)")
    runners = []
    for k, (blob, shape) in enumerate(models):
        label = f"model {k}"
        sess = _session(blobs[blob], settings, label)
        runners.append(_Runner(sess, _feeds(sess, shape, settings.batch_size, label), settings.provider))
        if time.monotonic() > deadline:
            raise _Refused(503, f"stopped at the agent's request time limit while loading model {k}; send fewer "
                                "models per request or raise --max-request-s")
    samples: list[list[float]] = [[] for _ in runners]
    medians: list[list[float]] = [[] for _ in runners]
    count = len(runners)
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for trial in range(settings.trials):
            for k in range(count):
                i = (trial + k) % count
                runner = runners[i]
                for _ in range(settings.warmup):
                    runner.run()
                times = runner.timed(settings.repeats)
                samples[i].extend(times)
                medians[i].append(float(np.median(times)))
                if time.monotonic() > deadline:
                    raise _Refused(503, f"stopped at the agent's request time limit in trial {trial + 1} of "
                                        f"{settings.trials}; send fewer models or timed runs per request, or raise "
                                        "--max-request-s")
    finally:
        if was_enabled:
            gc.enable()
    return [{"samples_ms": s, "trial_medians_ms": m} for s, m in zip(samples, medians)]


# ----- the server --------------------------------------------------------------------------------------------------
class _Bucket:
    """Token bucket: ``rate`` requests per minute, bursts up to ``rate``."""

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.clock = rate, clock
        self.tokens, self.stamp = float(rate), clock()
        self.lock = threading.Lock()

    def take(self) -> float:
        """0 when a request may go ahead, else the seconds until one may."""
        with self.lock:
            now = self.clock()
            self.tokens = min(float(self.rate), self.tokens + (now - self.stamp) * self.rate / 60.0)
            self.stamp = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return 0.0
            return (1.0 - self.tokens) * 60.0 / self.rate


class AgentServer(ThreadingHTTPServer):
    """The HTTP server with the agent's state: settings, token, rate limit, the one-at-a-time lock, counters."""

    daemon_threads = True

    def __init__(self, config: AgentConfig, token: str | None, log: Callable[[str], None]) -> None:
        self.config, self.token, self.log = config, token, log
        self.bucket = _Bucket(config.rate_per_minute)
        self.busy = threading.Lock()
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.counters = {"measure_requests": 0, "models_measured": 0, "refused": 0}
        self.counters_lock = threading.Lock()
        self.facts = host_facts()
        if ":" in config.host:
            self.address_family = socket.AF_INET6
        super().__init__((config.host, config.port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):  # too many open connections: drop this one
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line instead of socketserver's traceback (e.g. a client that timed out and left)."""
        exc = sys.exc_info()[1]
        self.log(f"{client_address[0]} request failed: {type(exc).__name__}: {str(exc)[:200]}")

    def count(self, **increments: int) -> None:
        with self.counters_lock:
            for key, n in increments.items():
                self.counters[key] += n

    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in str(host) else host}:{port}"


_DRAIN_BYTES, _DRAIN_TIMEOUT_S = 16 << 20, 2.0


class _Handler(BaseHTTPRequestHandler):
    server: AgentServer
    timeout = READ_TIMEOUT_S
    _body_read = False
    server_version = f"edgenas-agent/{PROTOCOL}"

    def log_message(self, format: str, *args: Any) -> None:
        self.server.log(f"{self.client_address[0]} {format % args}")

    def _reply(self, status: int, body: dict[str, Any], retry_after: float | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if retry_after is not None:
            self.send_header("Retry-After", str(max(1, math.ceil(retry_after))))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="edgenas-agent"')
        self.end_headers()
        self.wfile.write(data)

    def _fail(self, refused: _Refused) -> None:
        self.server.count(refused=1)
        self.close_connection = True
        self._reply(refused.status, {"protocol": PROTOCOL, "error": refused.message}, refused.retry_after)
        if self.command == "POST" and not self._body_read:
            self._drain()

    def _drain(self) -> None:
        """Read (and drop) a bounded part of a refused body, so a client still sending it gets to read the
        answer instead of a connection reset; a larger body is cut off, and its client learns the limits
        from /v1/health before sending."""
        text = self.headers.get("Content-Length", "") if self.headers is not None else ""
        left = min(int(text), _DRAIN_BYTES) if text.isdigit() else 0
        try:
            self.connection.settimeout(_DRAIN_TIMEOUT_S)
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def _gate(self) -> None:
        """Rate limit, then the token: before anything of the body is read."""
        wait = self.server.bucket.take()
        if wait > 0:
            raise _Refused(429, f"rate limit of {self.server.config.rate_per_minute} requests per minute reached",
                           retry_after=wait)
        token = self.server.token
        if token is None:
            return
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise _Refused(401, "missing or wrong token (send 'Authorization: Bearer <token>', the agent's token)")

    def do_GET(self) -> None:
        try:
            self._gate()
            if self.path != "/v1/health":
                raise _Refused(404, f"no such endpoint {self.path[:60]!r} (GET /v1/health, POST /v1/measure)")
            self._reply(200, {**self.server.facts, "status": "ok", "limits": self.server.config.limits(),
                              "served": self._counters(), "busy": self.server.busy.locked()})
        except _Refused as refused:
            self._fail(refused)

    def _counters(self) -> dict[str, int]:
        with self.server.counters_lock:
            return dict(self.server.counters)

    def do_POST(self) -> None:
        try:
            self._gate()
            if self.path != "/v1/measure":
                raise _Refused(404, f"no such endpoint {self.path[:60]!r} (GET /v1/health, POST /v1/measure)")
            body = self._body()
            if not self.server.busy.acquire(blocking=False):
                raise _Refused(503, "the agent is measuring another request", retry_after=2.0)
            try:
                answer = self._measure(body)
            except _Refused:
                raise
            except Exception as exc:  # a failure no check foresaw: one line to the client, the agent keeps serving
                text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                raise _Refused(500, f"the agent failed: {type(exc).__name__}{': ' + text if text else ''}") from None
            finally:
                self.server.busy.release()
            self._reply(200, answer)
        except _Refused as refused:
            self._fail(refused)

    def do_PUT(self) -> None:
        self._fail(_Refused(405, "method not allowed (GET /v1/health, POST /v1/measure)"))

    do_DELETE = do_PATCH = do_PUT

    def _body(self) -> bytes:
        """The body, after its size was checked against the limits from Content-Length alone."""
        limits = self.server.config.limits()
        text = self.headers.get("Content-Length")
        if text is None:
            raise _Refused(411, "Content-Length is required")
        if not text.isdigit():
            raise _Refused(400, "Content-Length must be a non-negative integer")
        length = int(text)
        if length > limits["max_request_bytes"]:
            raise _Refused(413, f"a request of {length / 2**20:.1f} MB is over this agent's limit of "
                                f"{limits['max_request_bytes'] / 2**20:g} MB (--max-request-mb)")
        if length < 4:
            raise _Refused(400, "the body is too short to hold a header")
        body = self.rfile.read(length)
        self._body_read = True
        if len(body) != length:
            raise _Refused(400, f"the body ended after {len(body)} of {length} bytes")
        return body

    def _measure(self, body: bytes) -> dict[str, Any]:
        start = time.monotonic()
        config = self.server.config
        (size,) = struct.unpack(">I", body[:4])
        if size > MAX_HEADER_BYTES or 4 + size > len(body):
            raise _Refused(400, f"header of {size} bytes does not fit the body or the {MAX_HEADER_BYTES}-byte limit")
        try:
            header = json.loads(body[4:4 + size])
        except (ValueError, UnicodeDecodeError):
            raise _Refused(400, "the header is not JSON") from None
        settings, sizes, models = parse_header(header, len(body) - 4 - size, config.limits())
        blobs, pos = [], 4 + size
        for n in sizes:
            blobs.append(body[pos:pos + n])
            pos += n
        if config.debug_delay_s:
            time.sleep(config.debug_delay_s)
        results = measure(blobs, models, settings, start + config.max_request_s)
        self.server.count(measure_requests=1, models_measured=len(models))
        return {"protocol": PROTOCOL, "environment": self.server.facts, "results": results,
                "seconds": time.monotonic() - start}


def _token(config: AgentConfig) -> str | None:
    token = os.environ.get(config.token_env, "")
    if config.insecure_no_token:
        if not is_loopback(config.host):
            raise AgentConfigError(f"--insecure-no-token is only allowed on a loopback address, not {config.host}: "
                                   f"anyone on the network could run models here; set ${config.token_env} instead")
        return None
    if not token.strip():
        raise AgentConfigError(f"set the agent's token in ${config.token_env} (e.g. export {config.token_env}="
                               "$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')), the same value on "
                               "the machine that runs edgenas; or --insecure-no-token on loopback")
    token = token.strip()
    if not (token.isascii() and token.isprintable()):
        raise AgentConfigError(f"${config.token_env} must be printable ASCII (clients send it in an HTTP header)")
    return token


def create_server(config: AgentConfig, log: Callable[[str], None] | None = None) -> AgentServer:
    """A bound, not yet serving agent (``serve_forever`` runs it); refuses to start without a token."""
    token = _token(config)
    try:
        import onnxruntime  # noqa: F401  (fail here, not on the first request)
    except ImportError:
        raise AgentConfigError("onnxruntime is not installed here: pip install onnxruntime numpy") from None
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        return AgentServer(config, token, say)
    except OSError as exc:
        raise AgentConfigError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None


def serve(config: AgentConfig, log: Callable[[str], None] | None = None) -> None:
    """Run the agent until interrupted; prints the URL it listens on (port 0 picks a free one)."""
    server = create_server(config, log)
    say = server.log
    facts = server.facts
    if not is_loopback(config.host):
        say(f"warning: listening on {config.host}, not loopback: anyone who can reach this port and has the token "
            "can run models here, and plain HTTP shows the token to the network; prefer the default 127.0.0.1 and "
            f"an ssh tunnel (ssh -N -L {server.server_address[1]}:127.0.0.1:{server.server_address[1]} this-board)")
    if server.token is None:
        say("warning: --insecure-no-token: any local process can run models on this agent")
    elif len(server.token) < 16:
        say(f"warning: ${config.token_env} is {len(server.token)} characters; use 16 or more random ones")
    print(f"edgenas agent listening on {server.url()} (protocol {PROTOCOL}, onnxruntime "
          f"{facts['versions']['onnxruntime']}, {', '.join(facts['providers'])}; {facts['cpu']})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgenas-agent", description="The edgenas device agent (see its docstring).")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="time ONNX models sent by edgenas on this machine")
    d = AgentConfig()
    s.add_argument("--host", default=d.host, help="address to listen on (default loopback only)")
    s.add_argument("--port", type=int, default=d.port, help="port (0: any free one, printed)")
    s.add_argument("--token-env", default=d.token_env, help="environment variable holding the token")
    s.add_argument("--insecure-no-token", action="store_true", help="accept requests without a token (loopback only)")
    s.add_argument("--max-model-mb", type=float, default=d.max_model_mb, help="largest ONNX model accepted")
    s.add_argument("--max-request-mb", type=float, default=d.max_request_mb, help="largest request body accepted")
    s.add_argument("--max-models", type=int, default=d.max_models, help="most models in one request")
    s.add_argument("--rate-limit", type=int, default=d.rate_per_minute, help="requests per minute (429 beyond)")
    s.add_argument("--max-request-s", type=float, default=d.max_request_s, help="stop a measurement after this long")
    s.add_argument("--debug-delay-s", type=float, default=0.0, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        serve(AgentConfig(host=args.host, port=args.port, token_env=args.token_env,
                          insecure_no_token=args.insecure_no_token, max_model_mb=args.max_model_mb,
                          max_request_mb=args.max_request_mb, max_models=args.max_models,
                          rate_per_minute=args.rate_limit, max_request_s=args.max_request_s,
                          debug_delay_s=args.debug_delay_s))
    except AgentConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
