"""The run report: every step's result, timings and findings, passed along by the pipeline."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "onnx-pipeline/run/1"


@dataclass
class RunReport:
    """Collected as the pipeline runs; serialised to report.json and printed by the CLI."""

    command: str
    status: str = "running"  # "passed", "failed", "error"
    output: Path | None = None
    steps: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    started: float = field(default_factory=time.perf_counter)

    def record(self, step: str, result: Any, seconds: float) -> None:
        self.steps[step] = result.to_dict() if hasattr(result, "to_dict") else result
        self.timings[step] = round(seconds, 3)
        self.findings += list(getattr(result, "findings", []) or [])

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "command": self.command,
            "status": self.status,
            "output": str(self.output) if self.output else None,
            "error": self.error,
            "seconds": round(self.seconds, 3),
            "timings": self.timings,
            "findings": self.findings,
            "config": self.config,
            "provenance": self.provenance,
            "steps": self.steps,
        }


def tool_versions() -> dict[str, str]:
    """Versions of the tools that shaped the output (imported lazily; missing ones say so)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in (
        "onnx-pipeline",
        "torch",
        "torchvision",
        "onnx",
        "onnxruntime",
        "onnxsim",
        "onnxslim",
        "onnxscript",
        "numpy",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions
