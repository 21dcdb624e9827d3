"""Fixtures of the server tests: a CPU bundle of the tiny model, and one server shared by the route tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serve.server_process import ServerProcess, running_server


@pytest.fixture(scope="session")
def served_bundle(cpu_bundle: Path) -> Path:
    """A cpu-x86_64 bundle of the tiny model (int8 by default), calibrated on real photographs."""
    return cpu_bundle


@pytest.fixture(scope="module")
def server(served_bundle: Path) -> Iterator[ServerProcess]:
    """One server for the route tests: a 100 ms batching window, a 1 MiB body limit."""
    with running_server(
        str(served_bundle), "--max-queue-delay-ms", "100", "--max-batch-size", "8", "--max-body-mb", "4"
    ) as started:
        yield started
