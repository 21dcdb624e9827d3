"""An interrupted export leaves nothing behind: no temporary folder, the previous output as it was, no PyTorch worker.

The export runs as a real CLI process in its own process group (as a shell runs a job), and the
signal goes to the whole group, as Ctrl-C (SIGINT) or a service manager (SIGTERM) sends it, while
the PyTorch worker is alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _group(pgid: int) -> list[int]:
    """Processes still in process group ``pgid`` (zombies excluded)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def _wait(condition, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("delay", [0.0, 2.0], ids=["worker-starting", "worker-working"])
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 130)])
def test_signal_during_export_removes_the_temporary_folder_and_the_worker(
    tmp_path: Path, sig: signal.Signals, code: int, delay: float
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "previous.txt").write_text("the previous run", encoding="utf-8")
    command = [sys.executable, "-m", "onnx_pipeline", "export", "-m", "tiny-vgg", "-w", "random", "-o", str(out),
               "--force", "--isolate"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        started = _wait(lambda: list(tmp_path.glob(".run.tmp-*")) and len(_group(proc.pid)) >= 2, 120)
        assert started, f"the export never reached its PyTorch stage: {proc.communicate(timeout=60)}"
        time.sleep(delay)
        assert proc.poll() is None, "the export ended before it could be interrupted"
        os.killpg(proc.pid, sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == code, stderr.decode(errors="replace")[-2000:]
    assert b"interrupted" in stderr and b"Traceback" not in stderr
    assert _wait(lambda: not _group(proc.pid), 10), "a process of the export (the PyTorch worker?) survived"
    assert not [p for p in tmp_path.iterdir() if p.name != "run"], "a temporary folder was left behind"
    assert sorted(p.name for p in out.iterdir()) == ["previous.txt"]
    assert (out / "previous.txt").read_text(encoding="utf-8") == "the previous run"
