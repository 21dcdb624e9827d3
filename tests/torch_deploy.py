"""Helpers of the torchscript and torchserve tests (and benchmarks/torchscript_serving.py): build the C++
program of a torchscript bundle, run TorchServe on a torchserve bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def build_classify(bundle: Path, build_dir: Path) -> Path:
    """Build the torchscript bundle's C++ program with CMake as its cpp/README.md says; its path.

    A failed configure or build fails with the tool's stderr (the compiler's errors) in the message.
    """
    import shutil
    import subprocess
    import sys

    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    steps = (
        [
            "cmake",
            "-S",
            str(bundle / "cpp"),
            "-B",
            str(build_dir),
            *generator,
            f"-DPython3_EXECUTABLE={sys.executable}",
        ],
        ["cmake", "--build", str(build_dir), "-j", "2"],
    )
    for command in steps:
        done = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False)
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stderr[-6000:]}\n{done.stdout[-3000:]}"
    return build_dir / "classify"


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (free when asked: a server binds them right after)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def torchserve_running(bundle: Path, workdir: Path, timeout: float = 180.0) -> Any:
    """A context manager: TorchServe serving the torchserve bundle on free loopback ports, stopped on exit.

    It runs in the foreground in its own process group (killed as a group on exit: the Java frontend and
    its Python workers), from ``workdir`` (its logs go there), with the bundle's config.properties but free
    ports. Yields ``{"inference": url, "management": url, "metrics": url, "log": path}``.
    """
    import contextlib
    import json
    import os
    import re
    import shutil
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    @contextlib.contextmanager
    def running() -> Any:
        workdir.mkdir(parents=True, exist_ok=True)
        ports = free_ports(3)
        config = (bundle / "config.properties").read_text(encoding="utf-8")
        urls = {}
        for key, port in zip(("inference", "management", "metrics"), ports, strict=True):
            config = re.sub(rf"^{key}_address=.*$", f"{key}_address=http://127.0.0.1:{port}", config, flags=re.M)
            urls[key] = f"http://127.0.0.1:{port}"
        (workdir / "config.properties").write_text(config, encoding="utf-8")
        log = workdir / "torchserve.out"
        command = [str(Path(sys.executable).parent / "torchserve"), "--start", "--foreground", "--ncs"]
        command += ["--model-store", str(bundle), "--ts-config", str(workdir / "config.properties")]
        # TMPDIR: TorchServe keeps its pid file there (one per machine otherwise: another TorchServe would block it)
        env = {**os.environ, "LOG_LOCATION": str(workdir / "logs"), "METRICS_LOCATION": str(workdir / "logs")}
        env["TMPDIR"] = str(workdir)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            deadline = time.monotonic() + timeout
            while True:
                assert process.poll() is None, f"TorchServe exited:\n{log.read_text(errors='replace')[-4000:]}"
                try:
                    with urllib.request.urlopen(f"{urls['inference']}/ping", timeout=5) as answer:
                        if json.loads(answer.read()).get("status") == "Healthy":
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, (
                    f"TorchServe not healthy:\n{log.read_text(errors='replace')[-4000:]}"
                )
                time.sleep(1.0)
            yield {**urls, "log": log}
        finally:
            _stop_group(process, signal.SIGTERM, 30.0) or _stop_group(process, signal.SIGKILL, 30.0)
            shutil.rmtree(workdir / "logs", ignore_errors=True)

    return running()


def _stop_group(process: Any, sig: int, timeout: float) -> bool:
    """Send ``sig`` to the process group ``process`` leads (it was started in a session of its own) and wait,
    at most ``timeout`` seconds, until no process of the group is left; whether none is."""
    import os
    import time

    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        process.poll()  # reap the leader
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False
