"""`onnx-pipeline serve` as a subprocess for the server tests (not a test module: imported by them).

Every server listens on 127.0.0.1 on a port it picks itself (``--port 0``; the ready line says
which), every wait is bounded, and every server started here is stopped (SIGTERM, then kill).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90.0


class ServerProcess:
    """A running ``onnx-pipeline serve --json``: its URL, its stdout lines (one JSON record each)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.records: list[dict[str, Any]] = []
        self.ready: dict[str, Any] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            record = json.loads(line)
            if record.get("event") == "ready":
                self.ready = record
                return
        self.stop()
        raise AssertionError(f"the server did not start: {self.stderr()}")

    @property
    def url(self) -> str:
        return str(self.ready["url"])

    @property
    def model(self) -> str:
        return str(self.ready["models"][0]["name"])

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, wait (bounded), kill if needed; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError("the server did not stop within the timeout after SIGTERM") from None

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def request_records(self, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """The per-request log records printed so far (once the process has ended: all of them)."""
        deadline = time.monotonic() + timeout_s
        while True:
            ended = self.proc.poll() is not None
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()) if ended else 0.2)
            except queue.Empty:
                break
            if line is None:
                self.lines.put(None)  # the end stays marked for the next call
                break
            self.records.append(json.loads(line))
        return self.records


def server_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "onnx_pipeline", "serve", *arguments, "--host", "127.0.0.1", "--port", "0", "--json"]


def server_env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


@contextmanager
def running_server(*arguments: str) -> Iterator[ServerProcess]:
    """``onnx-pipeline serve ARGUMENTS --port 0 --json`` until the block ends."""
    proc = subprocess.Popen(
        server_command(*arguments),
        cwd=REPO,
        env=server_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = ServerProcess(proc)
    try:
        server.wait_ready()
        yield server
    finally:
        if proc.poll() is None:
            server.stop()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
