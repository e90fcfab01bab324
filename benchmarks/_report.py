"""Shared plumbing of the benchmark scripts: describe the machine, write one section of the report.

Every benchmark owns one delimited section of ``docs/BENCHMARKS.md`` and rewrites only that, so
benchmarks can be re-run one at a time (on different days, even different machines) without
clobbering each other's figures or hand-written text around them. Figures are meaningless without
the machine they came from, hence :func:`machine_info` next to it.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from edgenas.io import atomic_write_text

__all__ = ["DOC_TITLE", "command_line", "machine_info", "machine_markdown", "provenance", "publish", "write_section"]

DOC_TITLE = "# edgenas benchmarks"
_KEY = re.compile(r"[A-Za-z0-9_.-]+")


def _cpu_model() -> str:
    """One definition of the CPU name for reports and latency tables alike."""
    from edgenas.hardware.table import cpu_model

    return cpu_model()


def machine_info() -> dict[str, Any]:
    """What a reader needs to judge a figure: CPU, cores this process may use, threads, torch, GPU, load.

    The load average is included because these benchmarks are often run on shared machines; a
    number taken under load is still useful when the settings were compared in the same run.
    """
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onednn": bool(torch.backends.mkldnn.is_available()),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "cuda": None,
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["cuda"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                        "count": torch.cuda.device_count(), "runtime": torch.version.cuda}
    return info


def machine_markdown(info: dict[str, Any]) -> str:
    """:func:`machine_info` as a short bullet list, the same wording in every benchmark section."""
    lines = [
        f"- CPU: {info['cpu']} ({info['logical_cores']} logical cores, {info['usable_cores']} usable by this process)",
        f"- torch {info['torch']}, {info['torch_threads']} intra-op thread{'' if info['torch_threads'] == 1 else 's'}, "
        f"oneDNN {'available' if info['onednn'] else 'not available'}; "
        f"Python {info['python']} on {info['platform']}",
    ]
    cuda = info.get("cuda")
    lines.append(
        f"- GPU: {cuda['name']} ({cuda['memory_gib']} GiB, CUDA {cuda['runtime']})" if cuda else "- GPU: none"
    )
    if info.get("load_avg") is not None:
        loads = " / ".join(f"{x:.2f}" for x in info["load_avg"])
        lines.append(f"- load average (1/5/15 min) at the end of the run: {loads}")
    return "\n".join(lines)


def _markers(key: str) -> tuple[str, str]:
    return f"<!-- BEGIN {key} -->", f"<!-- END {key} -->"


def write_section(path: str | os.PathLike[str], key: str, title: str, body_markdown: str) -> Path:
    """Create or replace the section ``key`` of the markdown file ``path``; everything else is kept.

    The section is ``<!-- BEGIN key -->``, ``## title``, the body and ``<!-- END key -->``. A missing
    file is created with the report title; a missing section is appended. A file with a broken
    pair of markers (one without the other, or several) is refused rather than guessed at, because
    guessing could delete someone's text. Writing the same content twice gives the same file.
    """
    if not _KEY.fullmatch(key):
        raise ValueError(f"section key {key!r} must be letters, digits, '_', '-' or '.' (it goes into HTML comments)")
    if "\n" in title or not title.strip():
        raise ValueError("section title must be one non-empty line")
    path = Path(path)
    begin, end = _markers(key)
    if begin in body_markdown or end in body_markdown:
        raise ValueError(f"the body of section {key!r} must not contain its own markers")
    section = f"{begin}\n## {title.strip()}\n\n{body_markdown.strip()}\n{end}\n"
    text = path.read_text() if path.exists() else f"{DOC_TITLE}\n"

    n_begin, n_end = text.count(begin), text.count(end)
    if (n_begin, n_end) == (0, 0):
        new = text.rstrip("\n") + "\n\n" + section
    elif (n_begin, n_end) == (1, 1) and text.index(begin) < text.index(end):
        start = text.index(begin)
        stop = text.index(end) + len(end)
        if text[stop : stop + 1] == "\n":
            stop += 1
        new = text[:start] + section + text[stop:]
    else:
        raise ValueError(
            f"{path} has {n_begin} '{begin}' and {n_end} '{end}' markers (in that order?); "
            "fix them by hand so there is exactly one pair"
        )
    if new != text:
        atomic_write_text(path, new)
    return path


def provenance(info: dict[str, Any] | None = None) -> list[str]:
    """The opening lines of every section: when, the exact command, and the machine."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [f"Measured {now} with", "", "```", command_line(), "```", "", machine_markdown(info or machine_info())]


def publish(out: str, key: str, title: str, body_markdown: str) -> None:
    """Write the section into ``out`` (a markdown file), or print it when ``out`` is ``-``."""
    if out == "-":
        print(f"\n## {title}\n\n{body_markdown}")
    else:
        print(f"wrote section '{key}' of {write_section(out, key, title, body_markdown)}")


def command_line() -> str:
    """The command as typed (interpreter shown relative to the current directory when inside it)."""
    exe = Path(sys.executable)
    try:
        exe = exe.relative_to(Path.cwd())
    except ValueError:
        pass
    return shlex.join([str(exe), *sys.argv])
