"""Hardware profiles: the target a latency is measured on, and the budgets a search must meet.

A profile is one YAML file in ``hardware_profiles/`` named after the profile (``cpu-ort.yaml`` holds
``name: cpu-ort``); users add a device by copying a file and editing it. Files are validated on load
with the same strict rules as every config (unknown keys, wrong types and missing fields are one-line
errors naming the key and the file), plus the semantic rules below (an ONNX Runtime profile names
its execution provider, int8 needs ONNX Runtime or OpenVINO, fp16 needs CUDA, ...), because a profile that loads
but cannot be measured would only fail minutes later inside a latency-table build.

:meth:`Profile.latency_hash` covers exactly the fields that change a measured latency, so a latency
table built for one profile is recognised as stale when the target changes, but not when only a
budget, the description or the measurement protocol does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgenas.config import from_mapping, load_yaml, short, to_mapping
from edgenas.errors import ConfigError

__all__ = ["Budgets", "MeasureSettings", "Profile", "RemoteSettings", "list_profiles", "load_profile", "profile_dirs"]

ENV_PROFILES = "EDGENAS_PROFILES"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Execution providers that only run on an NVIDIA GPU: a profile naming one must say device: cuda.
_CUDA_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
# Runtimes that time an int8 profile's models: both run the QDQ graph edgenas.quantize writes.
_INT8_RUNTIMES = ("onnxruntime", "openvino")
# Opsets torch's TorchScript ONNX exporter can write (edgenas exports with it; see measure.py).
_MIN_OPSET, _MAX_OPSET = 11, 20


@dataclass(frozen=True)
class MeasureSettings:
    """The latency protocol: each trial is its own warm-up plus ``repeats`` timed runs.

    Statistics pool the samples of all trials; the per-trial medians are kept as well, so drift
    between trials (thermal, other jobs) is visible instead of averaged away.
    """

    warmup: int = 20
    repeats: int = 100
    trials: int = 3
    statistic: Literal["median", "mean", "p90"] = "median"

    def __post_init__(self) -> None:
        _check(self.warmup >= 0, f"'warmup' must be >= 0, not {self.warmup}")
        _check(self.repeats >= 1, f"'repeats' must be >= 1, not {self.repeats}")
        _check(self.trials >= 1, f"'trials' must be >= 1, not {self.trials}")
        _check(self.statistic in ("median", "mean", "p90"),
               f"'statistic' must be one of median, mean, p90, not {short(self.statistic)}")


@dataclass(frozen=True)
class Budgets:
    """Upper limits a searched architecture must respect; ``None`` means unconstrained.

    ``mflops`` follows the fvcore convention used everywhere in edgenas: one multiply-add is one
    FLOP (see :data:`edgenas.hardware.flops.FLOPS_CONVENTION`).
    """

    latency_ms: float | None = None
    mflops: float | None = None
    params_m: float | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            _check(value is None or value > 0, f"'{f.name}' must be positive, not {value}")


@dataclass(frozen=True)
class RemoteSettings:
    """How to reach a board's device agent (``edgenas agent serve``, :mod:`edgenas.hardware.remote`)
    and what the agent runs the models with (``runtime: remote`` profiles only).

    The token is never written in a profile: ``token_env`` names the environment variable that holds
    it, here as on the board. ``url``, ``token_env``, ``timeout_s``, ``retries`` and
    ``max_models_per_request`` say how the board is reached, not what it is, so they stay out of the
    latency hash (an agent moved to another port or behind an ssh tunnel still has the same tables);
    ``runtime`` and ``provider`` change what is timed and are in it. ``timeout_s`` bounds one request
    (a whole interleaved measurement, or one part of it when it is split); ``max_models_per_request``
    splits large measurements into parts that a killed agent loses one at a time (``None``: as many as
    the agent takes, so all models are interleaved).
    """

    url: str
    token_env: str = "EDGENAS_AGENT_TOKEN"
    runtime: Literal["onnxruntime"] = "onnxruntime"
    provider: str = "CPUExecutionProvider"
    timeout_s: float = 900.0
    retries: int = 3
    max_models_per_request: int | None = None

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        _check(parts.username is None and parts.password is None,
               f"'url' must not hold credentials: the agent's token is read from ${self.token_env} ('token_env')")
        _check(parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query and not parts.fragment,
               f"'url' must be the agent's http://HOST:PORT (`edgenas agent serve` prints it), not {short(self.url)}")
        try:
            parts.port  # noqa: B018  (parsing the port is the check)
        except ValueError:
            _check(False, f"'url' has an invalid port: {short(self.url)}")
        _check(bool(re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", self.token_env)),
               f"'token_env' must be an environment variable name, not {short(self.token_env)}")
        _check(self.runtime == "onnxruntime", f"'runtime' must be onnxruntime (what the agent runs), "
                                              f"not {short(self.runtime)}")
        _check(self.provider.endswith("ExecutionProvider"),
               f"'provider' must name an onnxruntime execution provider such as CPUExecutionProvider, "
               f"not {short(self.provider)}")
        _check(self.timeout_s > 0, f"'timeout_s' must be positive, not {self.timeout_s}")
        _check(self.retries >= 0, f"'retries' must be >= 0, not {self.retries}")
        _check(self.max_models_per_request is None or self.max_models_per_request >= 1,
               f"'max_models_per_request' must be >= 1 (or left out), not {self.max_models_per_request}")

    def latency_fields(self) -> dict[str, str]:
        """The part of the block that changes a measured latency (see the class docstring)."""
        return {"runtime": self.runtime, "provider": self.provider}


@dataclass(frozen=True)
class Profile:
    """One measurement target: device, runtime and its settings, input shape, protocol, budgets."""

    name: str
    device: Literal["cpu", "cuda"]
    runtime: str  # a name in edgenas.hardware.measure.RUNTIMES
    input_shape: tuple[int, int, int]
    description: str = ""
    provider: str | None = None
    threads: int = 1
    inter_op_threads: int = 1
    batch_size: int = 1
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    opset: int = 17
    measure: MeasureSettings = field(default_factory=MeasureSettings)
    budgets: Budgets = field(default_factory=Budgets)
    source: str | None = None
    remote: RemoteSettings | None = None  # runtime remote: the board's device agent

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        from edgenas.hardware.measure import RUNTIMES

        for key, allowed in (("device", ("cpu", "cuda")), ("runtime", tuple(RUNTIMES.names())),
                             ("precision", ("fp32", "fp16", "int8")),
                             ("graph_optimization", ("disable", "basic", "extended", "all"))):
            value = getattr(self, key)
            _check(value in allowed, f"'{key}' must be one of {', '.join(allowed)}, not {short(value)}")
        _check(bool(_NAME_RE.match(self.name)),
               f"'name' must be letters, digits, '.', '_' or '-' (it is the file name), not {short(self.name)}")
        _check(len(self.input_shape) == 3 and all(int(d) >= 1 for d in self.input_shape),
               f"'input_shape' must be three positive sizes [C, H, W], not {list(self.input_shape)}")
        _check(self.threads >= 1, f"'threads' must be >= 1, not {self.threads}")
        _check(self.inter_op_threads >= 1, f"'inter_op_threads' must be >= 1, not {self.inter_op_threads}")
        _check(self.batch_size >= 1, f"'batch_size' must be >= 1, not {self.batch_size}")
        _check(_MIN_OPSET <= self.opset <= _MAX_OPSET,
               f"'opset' must be between {_MIN_OPSET} and {_MAX_OPSET}, not {self.opset}")
        _check(self.runtime != "remote" or self.provider is None,
               "'provider' of a remote profile goes in its 'remote' block (the agent's onnxruntime execution "
               f"provider: remote: {{url: ..., provider: {self.provider}}})")
        if self.runtime == "onnxruntime":
            _check(self.provider is not None,
                   "'provider' is required for runtime onnxruntime (e.g. CPUExecutionProvider)")
            assert self.provider is not None
            _check(self.provider.endswith("ExecutionProvider"),
                   f"'provider' must name an onnxruntime execution provider such as CPUExecutionProvider, "
                   f"not {short(self.provider)}")
            if self.provider in _CUDA_PROVIDERS:
                _check(self.device == "cuda", f"'provider' {self.provider} needs device cuda, not {self.device}")
            if self.provider == "CPUExecutionProvider":
                _check(self.device == "cpu", f"'provider' CPUExecutionProvider needs device cpu, not {self.device}")
        else:
            _check(self.provider is None,
                   f"'provider' must be left out for runtime {self.runtime} (it is an onnxruntime setting), "
                   f"not {short(self.provider)}")
        _check(self.precision != "int8" or self.runtime in _INT8_RUNTIMES,
               f"'precision' int8 needs runtime {' or '.join(_INT8_RUNTIMES)} (they run the QDQ graph of "
               f"onnxruntime.quantization), not {self.runtime}")
        _check(self.runtime != "openvino" or self.device == "cpu",
               f"runtime openvino measures on device cpu (its CPU plugin), not {self.device}")
        _check(self.runtime != "executorch" or self.device == "cpu",
               f"runtime executorch measures on device cpu (XNNPACK), not {self.device}")
        _check(self.precision != "int8" or self.opset >= 13,
               f"'precision' int8 needs 'opset' >= 13 (per-channel QDQ), not {self.opset}")
        _check(self.precision != "fp16" or self.device == "cuda",
               "'precision' fp16 needs device cuda (half precision is not fast on CPU runtimes)")
        # runtime remote: the `remote` block is required with it and meaningless without it
        _check(self.runtime != "remote" or self.remote is not None,
               "runtime remote needs a 'remote' block with the agent's url (remote: {url: 'http://127.0.0.1:8765'})")
        _check(self.remote is None or self.runtime == "remote",
               f"'remote' (the device agent's block) is for runtime remote only, not {self.runtime}")
        if self.remote is not None and self.remote.provider in _CUDA_PROVIDERS:
            _check(self.device == "cuda", f"'remote.provider' {self.remote.provider} needs device cuda, "
                                          f"not {self.device}")
        if self.remote is not None and self.remote.provider == "CPUExecutionProvider":
            _check(self.device == "cpu", f"'remote.provider' CPUExecutionProvider needs device cpu, not {self.device}")

    def with_input_shape(self, shape: tuple[int, int, int] | list[int]) -> Profile:
        """The same target at another input size (the ``--input-shape`` override); re-validated."""
        return dataclasses.replace(self, input_shape=tuple(int(d) for d in shape))

    def with_budgets(self, **budgets: float | None) -> Profile:
        """Override budgets by keyword (``latency_ms``, ``mflops``, ``params_m``); ``None`` keeps the
        profile's value, so CLI options can be passed through unconditionally."""
        known = {f.name for f in dataclasses.fields(Budgets)}
        unknown = sorted(set(budgets) - known)
        if unknown:
            raise ConfigError(f"unknown budget '{unknown[0]}' (known: {', '.join(sorted(known))})")
        given = {k: float(v) for k, v in budgets.items() if v is not None}
        return dataclasses.replace(self, budgets=dataclasses.replace(self.budgets, **given))

    def latency_hash(self) -> str:
        """16 hex digits over everything that changes a measured latency.

        Budgets, description, source and measurement settings are left out: changing them does not
        make a latency table built for this target stale.
        """
        keys = ("device", "runtime", "provider", "threads", "inter_op_threads", "batch_size", "input_shape",
                "precision", "graph_optimization", "opset")
        values = {k: _plain(getattr(self, k)) for k in keys}
        if self.remote is not None:  # what the board runs; where it is reached (url, token) is not the target
            values["remote"] = self.remote.latency_fields()
        blob = json.dumps(values, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        data = to_mapping(self)
        if self.remote is None:  # profiles without an agent keep the JSON they always had
            del data["remote"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "profile") -> Profile:
        """Inverse of :meth:`to_json` (e.g. for a profile stored inside a latency table or manifest)."""
        return from_mapping(cls, data, where=where)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def profile_dirs() -> list[Path]:
    """Directories searched for ``NAME.yaml``, in order: ``$EDGENAS_PROFILES`` (``os.pathsep``
    separated), ``./hardware_profiles``, then the ``hardware_profiles`` shipped next to the package.

    A user's own directory comes first so a copied and edited ``cpu-ort.yaml`` shadows the shipped
    one. Directories are listed whether or not they exist (error messages show where we looked).
    """
    import edgenas

    dirs = [Path(p) for p in os.environ.get(ENV_PROFILES, "").split(os.pathsep) if p.strip()]
    dirs += [Path.cwd() / "hardware_profiles", Path(edgenas.__file__).resolve().parents[1] / "hardware_profiles"]
    out: list[Path] = []
    seen: set[Path] = set()
    for d in dirs:
        key = d.resolve()
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def list_profiles() -> dict[str, Path]:
    """Profile name -> file, sorted by name; the first directory of :func:`profile_dirs` that has a
    name wins."""
    found: dict[str, Path] = {}
    for d in profile_dirs():
        if not d.is_dir():
            continue
        for path in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def load_profile(name_or_path: str | Path, input_shape: tuple[int, int, int] | None = None) -> Profile:
    """Load a profile by registry name (``cpu-ort``) or by path, optionally at another input shape.

    A value ending in ``.yaml``/``.yml`` or naming an existing file is a path; anything else is looked
    up in :func:`list_profiles`, and an unknown name is an error that lists the known ones.
    """
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        path = Path(text)
    else:
        known = list_profiles()
        if text not in known:
            where = ", ".join(str(d) for d in profile_dirs())
            raise ConfigError(
                f"unknown hardware profile '{text}'; known: {', '.join(known) or 'none'} "
                f"(searched {where}; add your own as NAME.yaml there or in ${ENV_PROFILES})"
            )
        path = known[text]
    data = load_yaml(path)
    where = str(path)
    if "source" in data:
        raise ConfigError(f"{where}: unknown key 'source' (it is set to the file a profile is loaded from)")
    profile = from_mapping(Profile, data, where=where)
    if profile.name != path.stem:
        raise ConfigError(
            f"{where}: 'name' is '{profile.name}' but the file is named {path.name}; "
            f"they must match (rename one of them)"
        )
    profile = dataclasses.replace(profile, source=str(path))
    if input_shape is not None:
        try:
            profile = profile.with_input_shape(input_shape)
        except ConfigError as exc:
            raise ConfigError(f"--input-shape override for {where}: {exc}") from None
    return profile
