"""Latency measured on another machine through its device agent: the ``remote`` runtime.

A profile with ``runtime: remote`` and a ``remote: {url: ...}`` block
(:class:`~edgenas.hardware.profile.RemoteSettings`) times its models on the board where
``edgenas agent serve`` (:mod:`edgenas.agent.server`) runs. Everything
that builds on a measurer works unchanged -- the latency table and its validation, a search's
end-to-end measurement of its finalists, export and the CI check -- because :class:`RemoteMeasurer`
answers ``measure_many`` (PyTorch modules, exported here with :func:`~edgenas.hardware.measure.export_onnx_bytes`)
and ``measure_onnx_many`` (ONNX files) like a local measurer, with the same :class:`LatencyStats`.

All models of one call go to the agent in one request, and the agent interleaves them with the
profile's protocol, so drift on the board hits them alike, as it does locally. Only a call larger than
the agent takes (``--max-models``, ``--max-request-mb``) or than ``remote.max_models_per_request`` is
split into several requests. Each finished part of a split call is kept in a journal
(:class:`Journal`, under ``$EDGENAS_CACHE_DIR``, default ``~/.cache/edgenas``) until the whole call
is done, so an agent killed in the middle of a latency-table build costs the part in flight: the build
fails with one line, and rerunning it measures only the parts that are missing. Parts are recognised
by the structure of their models (the ONNX graph without its weight values, which a rebuilt block
draws afresh), the shapes, the settings and the board's facts -- not by the URL, which may change.
Models of different parts are not interleaved with each other; a latency table's speed-reference
copies still correct drift inside each part, but the few models at a seam between two parts are
divided by a reference copy timed in the other part.

Every failure is one line naming the URL: the agent unreachable or gone mid-request, a wrong or
missing token (401), a model or request over the agent's limits (refused here from the limits the
agent reports, before sending), rate limiting (429, retried after the agent's Retry-After up to
``remote.retries`` times), a request that takes longer than ``remote.timeout_s``, and a malformed answer.
The token is read from the environment variable ``remote.token_env`` when the measurer is made and
is sent only in the Authorization header.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import math
import os
import shutil
import struct
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgenas.agent.server import PROTOCOL, is_loopback
from edgenas.errors import ConfigError, EdgenasError
from edgenas.hardware.measure import LatencyMeasurer, LatencyStats, export_onnx_bytes
from edgenas.hardware.profile import Profile, RemoteSettings

__all__ = ["AgentClient", "AgentError", "Journal", "RemoteMeasurer", "create_remote_measurer", "default_journal_dir",
           "graph_key", "plan_parts", "remote_environment"]

ENV_CACHE = "EDGENAS_CACHE_DIR"
JOURNAL_MAX_AGE_S = 24 * 3600.0
_HEADER_SLACK = 1 << 16  # bytes a part's JSON header may take, on top of its models
_log = logging.getLogger(__name__)


class AgentError(EdgenasError):
    """The agent cannot be reached, refused a request or answered nonsense (one line naming its URL)."""


# ----- the HTTP client ---------------------------------------------------------------------------------------
class AgentClient:
    """Requests to one agent: authentication, retries on 429/503 with Retry-After, one-line errors."""

    def __init__(self, url: str, token: str | None, timeout_s: float, retries: int, token_env: str,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.url = url.rstrip("/")
        self.token, self.token_env, self.sleep = token, token_env, sleep
        self.timeout_s, self.retries = timeout_s, retries
        parts = urllib.parse.urlsplit(self.url)
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname or "", parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")

    def health(self) -> dict[str, Any]:
        """The agent's facts and limits (``GET /v1/health``)."""
        answer = self._request("GET", "/v1/health", None, max_bytes=1 << 20)
        for key in ("protocol", "limits", "versions", "cpu"):
            if key not in answer:
                raise AgentError(f"agent at {self.url} sent a malformed health answer (no '{key}'); is it an "
                                 "edgenas agent?")
        if answer["protocol"] != PROTOCOL:
            raise AgentError(f"agent at {self.url} speaks protocol {answer['protocol']}, this edgenas {PROTOCOL}; "
                             "run the same edgenas version on both ends")
        return answer

    def measure(self, body: bytes, max_bytes: int) -> dict[str, Any]:
        """One measurement request (``POST /v1/measure``); the answer as parsed JSON."""
        return self._request("POST", "/v1/measure", body, max_bytes=max_bytes)

    def _request(self, method: str, path: str, body: bytes | None, max_bytes: int) -> dict[str, Any]:
        waited = 0.0
        for attempt in range(self.retries + 1):
            status, retry_after, payload = self._once(method, path, body, max_bytes)
            if status == 200:
                return payload
            message = str(payload.get("error", "")).strip().splitlines()[0][:300] if payload.get("error") else ""
            if status in (429, 503) and retry_after is not None and attempt < self.retries:
                wait = max(retry_after, 0.5 * 2 ** attempt)
                if waited + wait <= self.timeout_s:
                    self.sleep(wait)
                    waited += wait
                    continue
            raise AgentError(self._explain(status, message, attempt, waited))
        raise AssertionError("unreachable")  # the loop returns or raises

    def _explain(self, status: int, message: str, attempt: int, waited: float) -> str:
        where = f"agent at {self.url}"
        if status == 401:
            if self.token is None:
                return f"{where} needs a token (401): set ${self.token_env} to the agent's token"
            return f"{where} refused the token in ${self.token_env} (401): set it to the agent's token"
        if status in (429, 503) and attempt:
            return (f"{where} is still refusing after {attempt} retr{'y' if attempt == 1 else 'ies'} over "
                    f"{waited:.0f} s ({status}): {message or 'busy'}")
        return f"{where} refused the request ({status}): {message or http.client.responses.get(status, '?')}"

    def _once(self, method: str, path: str, body: bytes | None, max_bytes: int
              ) -> tuple[int, float | None, dict[str, Any]]:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.timeout_s)
        headers = {"Accept": "application/json"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        where = f"the agent at {self.url}"
        try:
            conn.request(method, self._prefix + path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read(max_bytes + 1)
            retry = response.getheader("Retry-After")
            status = response.status
        except TimeoutError:
            raise AgentError(f"{where} did not answer within {self.timeout_s:g} s (remote.timeout_s): the agent is "
                             "stuck or the request needs longer (raise timeout_s or send fewer models per request)"
                             ) from None
        except ConnectionRefusedError:
            raise AgentError(f"cannot reach {where}: connection refused (is `edgenas agent serve` running there, "
                             "on that port?)") from None
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected, http.client.IncompleteRead):
            raise AgentError(f"the connection to {where} was lost during the request (the agent stopped or was "
                             "killed?); rerun to continue where it stopped") from None
        except http.client.HTTPException as exc:
            raise AgentError(f"{where} sent a malformed HTTP answer ({type(exc).__name__})") from None
        except OSError as exc:
            raise AgentError(f"cannot reach {where}: {exc.strerror or type(exc).__name__}") from None
        finally:
            conn.close()
        if len(data) > max_bytes:
            raise AgentError(f"{where} sent an answer larger than the {max_bytes} bytes expected")
        try:
            payload = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            payload = None
        if not isinstance(payload, dict):
            raise AgentError(f"{where} sent a malformed answer (HTTP {status}, not a JSON object); is it an "
                             "edgenas agent?")
        retry_after = None
        if retry is not None:
            try:
                retry_after = max(0.0, float(retry))
            except ValueError:
                retry_after = None
        return status, retry_after, payload


# ----- splitting a measurement and remembering its parts ----------------------------------------------------
def plan_parts(blob_of: Sequence[int], blob_sizes: Sequence[int], max_models: int, max_bytes: int
               ) -> list[list[int]]:
    """Model positions in order, cut into requests of at most ``max_models`` models and ``max_bytes``
    of body (each distinct blob counted once per request); as few requests as that allows."""
    parts: list[list[int]] = []
    current: list[int] = []
    blobs: set[int] = set()
    size = _HEADER_SLACK
    for i, blob in enumerate(blob_of):
        extra = 0 if blob in blobs else blob_sizes[blob]
        if current and (len(current) >= max_models or size + extra > max_bytes):
            parts.append(current)
            current, blobs, size = [], set(), _HEADER_SLACK
            extra = blob_sizes[blob]
        current.append(i)
        blobs.add(blob)
        size += extra
    if current:
        parts.append(current)
    return parts


def graph_key(model: bytes) -> str:
    """A hash of an ONNX model without its initializers' values: what its latency depends on.

    A table's blocks are built with fresh random weights in every process, so a rebuilt block has other
    bytes but the same graph, shapes and types; the journal recognises it by this key."""
    import onnx

    proto = onnx.load_model_from_string(model)
    for tensor in proto.graph.initializer:
        for name in ("raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data",
                     "uint64_data"):
            tensor.ClearField(name)  # type: ignore[arg-type]
    return hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()


def default_journal_dir() -> Path:
    """``$EDGENAS_CACHE_DIR`` (else ``$XDG_CACHE_HOME/edgenas``, else ``~/.cache/edgenas``) / agent-journal."""
    base = os.environ.get(ENV_CACHE)
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = str(Path(xdg) / "edgenas")
    return Path(base) / "agent-journal"


class Journal:
    """The finished parts of split measurements, one directory per measurement, removed when it is done.

    A part is kept only until its measurement completes, or at most ``max_age_s``: an old part would
    mix timings from another day into a fresh table. A part that cannot be read is measured again.
    """

    def __init__(self, root: Path, max_age_s: float = JOURNAL_MAX_AGE_S) -> None:
        self.root, self.max_age_s = Path(root), max_age_s

    def load(self, key: str, part: int, count: int) -> list[dict[str, Any]] | None:
        path = self.root / key / f"part-{part:04d}.json"
        try:
            data = json.loads(path.read_text())
            fresh = time.time() - float(data["at"]) <= self.max_age_s
            results = data["results"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not fresh or not isinstance(results, list) or len(results) != count:
            return None
        return results

    def save(self, key: str, part: int, results: list[dict[str, Any]]) -> None:
        from edgenas.io import atomic_write_text

        path = self.root / key / f"part-{part:04d}.json"
        atomic_write_text(path, json.dumps({"at": time.time(), "results": results}))

    def finish(self, key: str) -> None:
        shutil.rmtree(self.root / key, ignore_errors=True)

    def prune(self) -> None:
        """Drop measurements left unfinished longer than ``max_age_s`` ago."""
        if not self.root.is_dir():
            return
        now = time.time()
        for entry in self.root.iterdir():
            try:
                if entry.is_dir() and now - entry.stat().st_mtime > self.max_age_s:
                    shutil.rmtree(entry, ignore_errors=True)
            except OSError:
                continue


# ----- the measurer -----------------------------------------------------------------------------------------
class RemoteMeasurer(LatencyMeasurer):
    """Times models on the board of ``profile.remote`` with the profile's protocol (see the module docstring).

    Making one reads the token but does not contact the agent: commands check that a profile can
    time ONNX files before any work, and must not need the board for that.
    """

    def __init__(self, profile: Profile, journal: Journal | None = None) -> None:
        super().__init__(profile)
        self._check_profile("remote")
        remote = profile.remote
        if remote is None:  # Profile validation requires the block for runtime remote
            raise ConfigError(f"profile '{profile.name}' has runtime remote but no 'remote' block")
        self.remote: RemoteSettings = remote
        token = os.environ.get(remote.token_env, "").strip() or None
        host = urllib.parse.urlsplit(remote.url).hostname or ""
        if token is not None and not (token.isascii() and token.isprintable()):
            raise ConfigError(f"${remote.token_env} must be printable ASCII (it is sent in an HTTP header)")
        if token is None and not is_loopback(host):
            raise ConfigError(f"profile '{profile.name}' reaches its agent at {remote.url} with the token in "
                              f"${remote.token_env}, which is not set here; export it (the agent's token)")
        self.client = AgentClient(remote.url, token, remote.timeout_s, remote.retries, remote.token_env)
        self.journal = journal if journal is not None else Journal(default_journal_dir())
        self._health: dict[str, Any] | None = None
        self.facts: dict[str, Any] | None = None  # the board's, from its last answer
        self.requests = 0  # sent by this measurer (tests and progress)
        self.resumed = 0  # parts taken from the journal

    # -- the measurer API --
    def measure_module(self, model: nn.Module, input_shape: tuple[int, ...] | None = None) -> LatencyStats:
        return self.measure_many([model], [input_shape])[0]

    def measure_many(self, models: Sequence[nn.Module], input_shapes: Sequence[tuple[int, ...] | None]
                     ) -> list[LatencyStats]:
        """Modules exported here (each distinct module and shape once) and timed interleaved on the agent."""
        if len(models) != len(input_shapes):
            raise ValueError(f"{len(models)} models but {len(input_shapes)} input shapes")
        p = self.profile
        dtype = torch.float16 if p.precision == "fp16" else torch.float32
        exported: dict[tuple[int, tuple[int, ...]], bytes] = {}
        blobs, shapes = [], []
        for model, shape in zip(models, input_shapes):
            full = self._full_shape(shape)
            key = (id(model), full)
            if key not in exported:
                exported[key] = export_onnx_bytes(model, full, opset=p.opset, dtype=dtype)
            blobs.append(exported[key])
            shapes.append(list(full))
        return self._measure(blobs, shapes)

    def measure_onnx(self, model: bytes | str | Path, input_shape: tuple[int, ...] | None = None) -> LatencyStats:
        return self.measure_onnx_many([model], [input_shape])[0]

    def measure_onnx_many(self, models: Sequence[bytes | str | Path],
                          input_shapes: Sequence[tuple[int, ...] | None] | None = None) -> list[LatencyStats]:
        """ONNX models (bytes or files) timed interleaved on the agent, as they are. The first input's
        shape is ``input_shape`` (N, C, H, W or C, H, W) or the model's, with a dynamic first axis read
        as the profile's batch size; the agent reports any other dynamic axis."""
        shapes = list(input_shapes) if input_shapes is not None else [None] * len(models)
        if len(shapes) != len(models):
            raise ValueError(f"{len(models)} models but {len(shapes)} input shapes")
        blobs = []
        for model in models:
            if isinstance(model, bytes):
                blobs.append(model)
                continue
            path = Path(model)
            if not path.is_file():
                raise EdgenasError(f"ONNX file not found: {path}")
            blobs.append(path.read_bytes())
        return self._measure(blobs, [None if s is None else [int(d) for d in s] for s in shapes])

    def environment(self) -> dict[str, Any]:
        """Where the models are timed, in the layout of :func:`edgenas.hardware.table.environment_of`:
        the board's CPU, cores, OS and versions as its agent reports them, and the profile's settings."""
        import datetime as dt

        facts = self.facts or self.health()
        p, remote = self.profile, self.remote
        versions = {str(k): str(v) for k, v in dict(facts.get("versions") or {}).items()}
        return {"cpu": facts.get("cpu"), "logical_cores": facts.get("logical_cores"),
                "usable_cores": facts.get("usable_cores"), "gpu": None, "device": p.device, "runtime": p.runtime,
                "runtime_versions": {**versions, "agent_protocol": str(facts.get("protocol"))},
                "provider": remote.provider, "threads": p.threads, "inter_op_threads": p.inter_op_threads,
                "batch_size": p.batch_size, "precision": p.precision, "graph_optimization": p.graph_optimization,
                "os": facts.get("os"), "machine": facts.get("machine"),
                "date": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()}

    def health(self) -> dict[str, Any]:
        """The agent's facts and limits, asked once per measurer."""
        if self._health is None:
            self._health = self.client.health()
            self.facts = self._health
        return self._health

    # -- one measurement --
    def _settings(self) -> dict[str, Any]:
        p, m = self.profile, self.profile.measure
        return {"provider": self.remote.provider, "threads": p.threads, "inter_op_threads": p.inter_op_threads,
                "graph_optimization": p.graph_optimization, "batch_size": p.batch_size, "warmup": m.warmup,
                "repeats": m.repeats, "trials": m.trials}

    def _measure(self, models: Sequence[bytes], shapes: Sequence[list[int] | None]) -> list[LatencyStats]:
        if not models:
            return []
        limits = self.health()["limits"]
        try:
            max_model, max_request = int(limits["max_model_bytes"]), int(limits["max_request_bytes"])
            max_models = int(limits["max_models"])
        except (KeyError, TypeError, ValueError):
            raise AgentError(f"agent at {self.client.url} reported malformed limits") from None
        if self.remote.max_models_per_request is not None:
            max_models = min(max_models, self.remote.max_models_per_request)
        unique: dict[bytes, int] = {}
        blob_of = [unique.setdefault(m, len(unique)) for m in models]
        blobs = list(unique)
        for k, blob in enumerate(blobs):
            if len(blob) > max_model or len(blob) + _HEADER_SLACK > max_request:
                first = blob_of.index(k)
                raise AgentError(f"model {first} is {len(blob) / 2**20:.2f} MB; the agent at {self.client.url} takes "
                                 f"models up to {max_model / 2**20:.3g} MB (its --max-model-mb)")
        parts = plan_parts(blob_of, [len(b) for b in blobs], max_models, max_request)
        settings = self._settings()
        key = self._journal_key(blobs, blob_of, shapes, parts, settings) if len(parts) > 1 else None
        if key is not None:
            self.journal.prune()
        results: list[dict[str, Any] | None] = [None] * len(models)
        resumed = 0
        for k, part in enumerate(parts):
            saved = self.journal.load(key, k, len(part)) if key is not None else None
            if saved is not None and self._valid(saved, len(part), settings):
                resumed += 1
            else:
                saved = self._request_part(part, blob_of, blobs, shapes, settings)
                if key is not None:
                    self.journal.save(key, k, saved)
            for i, result in zip(part, saved):
                results[i] = result
        if resumed:
            self.resumed += resumed
            _log.warning(f"agent at {self.client.url}: {resumed} of {len(parts)} requests of this measurement were "
                         "measured before an interruption and are reused")
        if key is not None:
            self.journal.finish(key)
        done = [r for r in results if r is not None]
        assert len(done) == len(models), "every model is in exactly one part"
        return [LatencyStats.from_samples(r["samples_ms"], r["trial_medians_ms"]) for r in done]

    def _journal_key(self, blobs: Sequence[bytes], blob_of: Sequence[int], shapes: Sequence[list[int] | None],
                     parts: Sequence[Sequence[int]], settings: dict[str, Any]) -> str:
        facts = self.health()
        board = {k: facts.get(k) for k in ("cpu", "logical_cores", "usable_cores", "machine", "os", "versions")}
        graphs = [graph_key(b) for b in blobs]
        doc = {"protocol": PROTOCOL, "board": board, "settings": settings, "models": [graphs[b] for b in blob_of],
               "shapes": list(shapes), "parts": [len(p) for p in parts]}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]

    def _request_part(self, part: Sequence[int], blob_of: Sequence[int], blobs: Sequence[bytes],
                      shapes: Sequence[list[int] | None], settings: dict[str, Any]) -> list[dict[str, Any]]:
        local: dict[int, int] = {}
        for i in part:
            local.setdefault(blob_of[i], len(local))
        order = sorted(local, key=local.__getitem__)
        header = {"protocol": PROTOCOL, "settings": settings, "blobs": [len(blobs[b]) for b in order],
                  "models": [{"blob": local[blob_of[i]], "input_shape": shapes[i]} for i in part]}
        head = json.dumps(header).encode()
        body = b"".join([struct.pack(">I", len(head)), head, *(blobs[b] for b in order)])
        samples = len(part) * settings["trials"] * (settings["repeats"] + 1)
        answer = self.client.measure(body, max_bytes=(8 << 20) + 40 * samples)
        self.requests += 1
        results = answer.get("results")
        if not isinstance(results, list) or not self._valid(results, len(part), settings):
            raise AgentError(f"agent at {self.client.url} sent a malformed measurement (expected {len(part)} results "
                             f"of {settings['trials']} x {settings['repeats']} samples)")
        if isinstance(answer.get("environment"), dict):
            self.facts = answer["environment"]
        return [{"samples_ms": [float(x) for x in r["samples_ms"]],
                 "trial_medians_ms": [float(x) for x in r["trial_medians_ms"]]} for r in results]

    @staticmethod
    def _valid(results: Sequence[Any], count: int, settings: dict[str, Any]) -> bool:
        """Each result has trials x repeats finite, non-negative samples and one median per trial."""
        if len(results) != count:
            return False
        trials, n = settings["trials"], settings["trials"] * settings["repeats"]
        for r in results:
            if not isinstance(r, dict):
                return False
            samples, medians = r.get("samples_ms"), r.get("trial_medians_ms")
            if not isinstance(samples, list) or not isinstance(medians, list) or len(samples) != n or len(
                    medians) != trials:
                return False
            for x in (*samples, *medians):
                if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
                    return False
        return True


def create_remote_measurer(profile: Profile) -> RemoteMeasurer:
    """The ``remote`` entry of :data:`edgenas.hardware.measure.RUNTIMES`."""
    return RemoteMeasurer(profile)


def remote_environment(profile: Profile) -> dict[str, Any]:
    """The board's facts for a table built through its agent (asks the agent)."""
    return RemoteMeasurer(profile).environment()
