"""``benchmarks/_report.write_section``: each benchmark rewrites only its own part of BENCHMARKS.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

REPORT_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "_report.py"


@pytest.fixture(scope="module")
def report() -> ModuleType:
    """Loaded from its file: ``benchmarks`` is a folder of scripts, not an installed package."""
    spec = importlib.util.spec_from_file_location("edgenas_bench_report", REPORT_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_creates_missing_file_with_title(report: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "docs" / "BENCHMARKS.md"
    report.write_section(path, "alpha", "Alpha", "| a |\n|---|\n| 1 |")
    assert path.read_text() == (
        "# edgenas benchmarks\n\n<!-- BEGIN alpha -->\n## Alpha\n\n| a |\n|---|\n| 1 |\n<!-- END alpha -->\n"
    )


def test_replaces_only_its_own_section(report: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# edgenas benchmarks\n\nHand-written intro.\n")
    report.write_section(path, "alpha", "Alpha", "old alpha")
    report.write_section(path, "beta", "Beta", "beta body")
    with path.open("a") as fh:
        fh.write("\nHand-written outro.\n")
    before = path.read_text()

    report.write_section(path, "alpha", "Alpha", "new alpha\n\nsecond paragraph")
    after = path.read_text()
    assert "old alpha" not in after and "new alpha\n\nsecond paragraph\n<!-- END alpha -->" in after
    # Everything outside the alpha markers is byte-for-byte what it was.
    def outside(text: str) -> tuple[str, str]:
        return text.split("<!-- BEGIN alpha -->")[0], text.split("<!-- END alpha -->")[1]

    assert outside(after) == outside(before)
    assert after.index("Hand-written intro.") < after.index("## Alpha") < after.index("## Beta")
    assert after.endswith("<!-- END beta -->\n\nHand-written outro.\n")


def test_idempotent(report: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    report.write_section(path, "alpha", "Alpha", "body")
    report.write_section(path, "beta", "Beta", "other")
    once = path.read_text()
    report.write_section(path, "alpha", "Alpha", "body")
    report.write_section(path, "beta", "Beta", "other")
    assert path.read_text() == once
    assert once.count("<!-- BEGIN alpha -->") == once.count("<!-- END alpha -->") == 1


BEGIN, END = "<!-- BEGIN alpha -->\n", "<!-- END alpha -->\n"


@pytest.mark.parametrize("text", [BEGIN + "no end\n", END + BEGIN, BEGIN + END + BEGIN + END])
def test_broken_markers_are_refused_not_guessed(report: ModuleType, tmp_path: Path, text: str) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(text)
    with pytest.raises(ValueError, match="markers"):
        report.write_section(path, "alpha", "Alpha", "body")
    assert path.read_text() == text


def test_machine_info_describes_the_machine(report: ModuleType) -> None:
    info = report.machine_info()
    assert info["cpu"] and info["torch"] and info["torch_threads"] >= 1 and info["logical_cores"] >= 1
    assert "CPU:" in report.machine_markdown(info)
