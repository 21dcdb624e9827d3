"""The server's life: a tampered bundle refused at start, overload answered with 503, SIGTERM under load
losing no accepted request, the in-process server of the API, and no torch anywhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

from tests.serve.server_process import REPO, running_server, server_command, server_env

TIMEOUT = 30


def _photo_bytes(photos: Path) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted(photos.iterdir())]


def test_tampered_bundle_does_not_start(served_bundle: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(served_bundle, tampered)
    model = tampered / "model.int8.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    done = subprocess.run(
        server_command(str(tampered)), cwd=REPO, env=server_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "model.int8.onnx" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_overload_answers_503_with_retry_after(served_bundle: Path, photos: Path) -> None:
    # Two slots, and each admitted request waits up to 500 ms for a batch that cannot fill: the rest are refused.
    arguments = ("--max-queue-size", "2", "--max-batch-size", "8", "--max-queue-delay-ms", "500")
    with running_server(str(served_bundle), *arguments) as server:
        name, data = _photo_bytes(photos)[0]
        answers: list[requests.Response] = []
        barrier = threading.Barrier(24)

        def call() -> None:
            barrier.wait(timeout=TIMEOUT)
            answers.append(requests.post(f"{server.url}/predict", files={"file": (name, data)}, timeout=TIMEOUT))

        threads = [threading.Thread(target=call) for _ in range(24)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        statuses = sorted(r.status_code for r in answers)
        assert len(answers) == 24 and set(statuses) <= {200, 503}, statuses
        refused = [r for r in answers if r.status_code == 503]
        assert refused and statuses.count(200) >= 1, statuses
        for response in refused:
            assert int(response.headers["Retry-After"]) >= 1
            assert "retry later" in response.json()["error"]
        again = requests.post(f"{server.url}/predict", files={"file": (name, data)}, timeout=TIMEOUT)
        assert again.status_code == 200, again.text  # the queue drained: nothing is stuck
        metrics = requests.get(f"{server.url}/metrics", timeout=TIMEOUT).text
        assert f'onnx_pipeline_rejected_total{{model="{server.model}"}} {float(len(refused))}' in metrics


def test_sigterm_during_load_answers_every_accepted_request(served_bundle: Path, photos: Path) -> None:
    arguments = ("--max-queue-delay-ms", "20", "--max-queue-size", "256")
    with running_server(str(served_bundle), *arguments) as server:
        uploads = _photo_bytes(photos)
        results: list[tuple[float, Any]] = []  # (time answered, status code or exception name)
        stop = threading.Event()

        def client(index: int) -> None:
            session = requests.Session()
            for n in range(300):
                if stop.is_set():
                    return
                name, data = uploads[(index + n) % len(uploads)]
                try:
                    response = session.post(f"{server.url}/predict", files={"file": (name, data)}, timeout=TIMEOUT)
                    results.append((time.monotonic(), response.status_code))
                except requests.ConnectionError as exc:  # refused or closed before the server read it
                    results.append((time.monotonic(), type(exc).__name__))
                    return

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + TIMEOUT
        while len(results) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        signalled = time.monotonic()
        exit_code = server.stop()
        stop.set()
        for thread in threads:
            thread.join(TIMEOUT)
        assert exit_code == 0, server.stderr()
        answered = [status for _, status in results if isinstance(status, int)]
        assert answered and set(answered) == {200}, sorted(set(map(str, answered)))
        assert any(t > signalled and s == 200 for t, s in results), "no request was in flight at SIGTERM"
        logged = [r for r in server.request_records() if r.get("endpoint") == "/predict"]
        # every request the server answered reached its client: none accepted was lost
        assert len(logged) == len(answered) and {r["status"] for r in logged} == {200}
        assert {r["model"] for r in logged} == {server.model} and all(r["ms"] > 0 for r in logged)


def test_background_server_of_the_api_without_torch(served_bundle: Path, photos: Path) -> None:
    image = sorted(photos.iterdir())[0]
    code = (
        "import sys, json, urllib.request\n"
        "from onnx_pipeline import api\n"
        f"with api.serve_in_background([{str(served_bundle)!r}], port=0) as server:\n"
        f"    data = open({str(image)!r}, 'rb').read()\n"
        "    request = urllib.request.Request(server.url + '/predict', data=data, method='POST')\n"
        "    answer = json.load(urllib.request.urlopen(request, timeout=30))\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'onnx', 'onnxscript') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "print(answer['class_name'])\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from onnx_pipeline.runtime import Bundle

    assert done.stdout.strip() == Bundle.load(served_bundle).predict(image).class_name


def test_cli_refuses_bad_options_in_one_line(served_bundle: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from onnx_pipeline.cli import app

    runner = CliRunner()
    for arguments, words in (
        ([str(served_bundle), "--max-batch-size", "0"], "--max-batch-size must be a positive integer"),
        ([str(served_bundle), "--max-body-mb", "0"], "--max-body-mb"),
        ([str(tmp_path / "missing")], "does not exist"),
    ):
        result = runner.invoke(app, ["serve", *arguments])
        assert result.exit_code == 2, result.output
        assert words in result.output and "Traceback" not in result.output
    assert "max-queue-delay-ms" in runner.invoke(app, ["serve", "--help"]).output


def test_several_bundles_and_a_fixed_batch_run_folder(served_bundle: Path, photos: Path, tmp_path: Path) -> None:
    from onnx_pipeline import api
    from onnx_pipeline.runtime import Bundle
    from tests.helpers import make_run_folder

    fixed = make_run_folder(tmp_path / "fixed", dynamic_batch=False)  # a run folder serves too
    image = sorted(photos.iterdir())[3]
    with api.serve_in_background([f"a={served_bundle}", f"b={served_bundle}", str(fixed)], port=0) as server:
        listed = requests.get(f"{server.url}/models", timeout=TIMEOUT).json()["models"]
        assert [m["modelName"] for m in listed] == ["a", "b", "tiny-vgg"]
        assert [m.dynamic_batch for m in server.info.models] == [True, True, False]
        answer = requests.post(f"{server.url}/predict?model=b", data=image.read_bytes(), timeout=TIMEOUT).json()
        assert answer["model"] == "b" and answer["class_id"] == Bundle.load(served_bundle).predict(image).class_id
        metadata = requests.get(f"{server.url}/v2/models/tiny-vgg", timeout=TIMEOUT).json()
        assert metadata["inputs"][0]["shape"] == [1, 3, 32, 32]
        answer = requests.post(f"{server.url}/predict?model=tiny-vgg", data=image.read_bytes(), timeout=TIMEOUT)
        assert answer.json()["class_id"] == Bundle.load(fixed).predict(image).class_id
        two = {"name": "input", "datatype": "FP32", "shape": [2, 3, 32, 32], "data": [0.0] * (2 * 3 * 32 * 32)}
        refused = requests.post(f"{server.url}/v2/models/tiny-vgg/infer", json={"inputs": [two]}, timeout=TIMEOUT)
        assert refused.status_code == 400 and "the model takes [1, 3, 32, 32]" in refused.json()["error"]


def test_accepted_connections_have_tcp_nodelay() -> None:
    """Without TCP_NODELAY a response written in two parts waits for a delayed ACK (~40 ms per request)."""
    import asyncio
    import socket

    from onnx_pipeline.serve.server import _bind

    async def main() -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        listening = _bind("127.0.0.1", 0)
        server = await asyncio.get_running_loop().create_server(Probe, sock=listening)
        port = listening.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(accepted, TIMEOUT)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(main()) != 0
