"""The run report: every step's result, timings and findings, passed along by the pipeline."""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnx_pipeline.errors import PipelineError
from onnx_pipeline.files import to_jsonable

SCHEMA = "onnx-pipeline/report/1"


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

    def record(self, step: str, result: Any, seconds: float | None = None) -> None:
        """Keep a step's result (as JSON), its time and its findings."""
        self.steps[step] = to_jsonable(result)
        if seconds is not None:
            self.timings[step] = round(seconds, 3)
        self.findings += list(getattr(result, "findings", None) or [])

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
            "config": to_jsonable(self.config),
            "provenance": self.provenance,
            "steps": self.steps,
        }


@contextlib.contextmanager
def reported(report: RunReport, step: str | None = None) -> Iterator[RunReport]:
    """Run a command's body: on a ``PipelineError`` mark the report failed, keep the error's result under
    ``step`` (when given and not recorded yet) and attach the report to the error before it propagates."""
    try:
        yield report
    except PipelineError as exc:
        report.status = "failed"
        report.error = exc.message
        if step is not None and exc.result is not None and not isinstance(exc.result, RunReport):
            report.steps.setdefault(step, to_jsonable(exc.result))
        exc.result = report
        raise
    if report.status == "running":
        report.status = "passed"


def tool_versions() -> dict[str, str]:
    """Versions of the tools that shaped an output (missing ones say so)."""
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
