"""MkDocs hook: publish the benchmark plots from benchmarks/results/ (one copy, in the repo)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PLOTS = ["throughput.png", "payload_throughput.png", "payload.png"]


def on_files(files: Files, config: Any) -> Files:
    for name in PLOTS:
        path = RESULTS / name
        if path.exists():
            files.append(File.generated(config, f"assets/{name}", abs_src_path=str(path)))
    return files
