"""MkDocs hook: publish the benchmark plot from benchmarks/results/ (one copy, in the repo)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
PLOT = ROOT / "benchmarks" / "results" / "throughput.png"


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "assets/throughput.png", abs_src_path=str(PLOT)))
    return files
