"""Benchmark: `onnx-pipeline serve` against a seed-style Flask server, both serving the VGG16 CPU bundle.

One run, on loopback, a bounded number of requests, stops by itself:

1. export VGG16 (random weights) with the cpu-x86_64 bundle, calibrated on scikit-image's photographs
   (or take ``--bundle``);
2. start both servers, each in its own process: ``onnx-pipeline serve`` (dynamic batching, at most 8
   per batch) and ``benchmarks/flask_seed_server.py`` (the seed's Flask app: one ``session.run`` per
   request); only one is loaded at a time;
3. in ``--rounds`` rounds (the machine's load drifts; rounds put both sides under the same drift):
   ``bench``'s throughput of the bundle's default model at batch sizes 1, 4, 8 and 16 (onnxruntime
   alone, no HTTP), then each server at concurrency 1, 8 and 32 (which server goes first alternates)
   with the seed's multipart upload of real photographs. Per server and concurrency, the rounds add
   up to: requests/s, p50/p99 latency, errors (a non-200 answer, a wrong ``class_id`` or a failed
   connection). bench's figure per batch size is its median over the rounds; the best is the reference.

Goals (issue 10): at concurrency 8, serve ≥ 0.9× bench's best throughput, p99 ≤ 2.5× p50, zero
errors over 1,000 requests, and ahead of Flask.

    python benchmarks/serve.py [--bundle DIR] [--requests 1000] [--rounds 4] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = (1, 8, 32)
BENCH_BATCHES = (1, 4, 8, 16)
BOUNDARY = "onnxpipelinebenchmarkboundary"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def _cli(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "onnx_pipeline", *arguments]


def _export(folder: Path, photos: Path) -> Path:
    run = folder / "vgg16"
    subprocess.run(
        _cli("export", "-m", "vgg16", "-w", "random", "-o", str(run), "-t", "cpu-x86_64",
             "--calibration-images", str(photos)),
        check=True, env=_env(), stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return run / "bundles" / "cpu-x86_64"


def _bench(bundle: Path, model: str, seconds: float) -> dict[int, float]:
    """bench's images/s per batch size for ``model`` (the one both servers serve)."""
    from onnx_pipeline.bench import BenchConfig, benchmark_bundle

    config = BenchConfig(batch_sizes=BENCH_BATCHES, min_seconds=seconds, eager=False, models=(model,))
    return {r.batch_size: r.throughput_ips for r in benchmark_bundle(bundle, config).rows if r.backend == "onnxruntime"}


def _multipart(name: str, data: bytes) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def _load(url: str, uploads: list[tuple[bytes, int]], concurrency: int, total: int) -> dict[str, Any]:
    """``total`` POST /predict over ``concurrency`` keep-alive connections; each answer checked against ``class_id``."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors: list[str] = []
    issued = iter(range(total))
    lock = threading.Lock()

    def worker() -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=120)
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        while True:
            with lock:
                index = next(issued, None)
            if index is None:
                break
            body, class_id = uploads[index % len(uploads)]
            start = time.perf_counter()
            try:
                connection.request("POST", "/predict", body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                seconds = time.perf_counter() - start
                if response.status != 200:
                    errors.append(f"HTTP {response.status}")
                elif json.loads(payload)["class_id"] != class_id:
                    errors.append("wrong class_id")
                else:
                    latencies.append(seconds)
            except (OSError, http.client.HTTPException) as exc:
                errors.append(type(exc).__name__)
                connection.close()
                connection = http.client.HTTPConnection(host, int(port), timeout=120)
        connection.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"wall_s": time.perf_counter() - start, "latencies": latencies, "errors": errors}


def _summary(concurrency: int, parts: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [x for p in parts for x in p["latencies"]]
    errors = [x for p in parts for x in p["errors"]]
    wall = sum(p["wall_s"] for p in parts)
    ms = np.array(latencies) * 1000.0 if latencies else np.array([float("nan")])
    return {
        "concurrency": concurrency,
        "requests": len(latencies) + len(errors),
        "wall_s": round(wall, 2),
        "rps": round(len(latencies) / wall, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
    }


@contextmanager
def _server(command: list[str], ready: re.Pattern[str], log: Path) -> Iterator[str]:
    """Start a server process, wait (bounded) for the line that gives its URL, stop it with SIGTERM."""
    with open(log, "w") as errors:
        proc = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=errors, text=True)
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 300
            url = None
            while url is None and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"{command[2:4]} did not start: see {log}: {log.read_text()[-2000:]}")
                match = ready.search(line)
                url = match.group(1) if match else None
            if url is None:
                raise RuntimeError(f"{command} did not start within 300 s")
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _uploads(bundle: Path, photos: Path) -> list[tuple[bytes, int]]:
    from onnx_pipeline.runtime import Bundle

    loaded = Bundle.load(bundle)
    files = sorted(photos.glob("*.jpg"))
    return [(_multipart(p.name, p.read_bytes()), loaded.predict(p).class_id) for p in files]


def _goals(bench: dict[str, Any], serve: list[dict[str, Any]], flask: list[dict[str, Any]]) -> list[str]:
    at8 = next(r for r in serve if r["concurrency"] == 8)
    flask8 = next(r for r in flask if r["concurrency"] == 8)
    ratio = at8["rps"] / bench["best_ips"]
    tail = at8["p99_ms"] / at8["p50_ms"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    return [
        f"serve at concurrency 8: {at8['rps']:.1f} req/s = {ratio:.2f}x bench's best "
        f"({bench['best_ips']:.1f} img/s at batch {bench['best_batch']}); goal >= 0.9x: {verdict(ratio >= 0.9)}",
        f"serve p99/p50 at concurrency 8: {tail:.2f}; goal <= 2.5: {verdict(tail <= 2.5)}",
        f"serve errors at concurrency 8 over {at8['requests']} requests: {at8['errors']}; goal 0: "
        f"{verdict(at8['errors'] == 0 and at8['requests'] >= 1000)}",
        f"serve vs Flask at concurrency 8: {at8['rps'] / max(flask8['rps'], 1e-9):.2f}x; goal > 1: "
        f"{verdict(at8['rps'] > flask8['rps'])}",
    ]


def _rounds(
    bundle: Path, model: str, urls: dict[str, str], uploads: list[tuple[bytes, int]], args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    counts = {1: max(20, args.requests // 5), 8: args.requests, 32: args.requests}
    for url in urls.values():
        _load(url, uploads, 2, 16)  # warm-up: sessions, arenas, connections
    benches: list[dict[int, float]] = []
    parts: dict[str, dict[int, list[dict[str, Any]]]] = {name: {c: [] for c in CONCURRENCY} for name in urls}
    for index in range(args.rounds):
        benches.append(_bench(bundle, model, args.bench_seconds))
        order = list(urls) if index % 2 == 0 else list(reversed(urls))
        for concurrency in CONCURRENCY:
            for name in order:
                share = counts[concurrency] // args.rounds + (index < counts[concurrency] % args.rounds)
                parts[name][concurrency].append(_load(urls[name], uploads, concurrency, share))
        print(f"round {index + 1}/{args.rounds}: bench {benches[-1]}", file=sys.stderr, flush=True)
    by_batch = {b: float(np.median([r[b] for r in benches])) for b in BENCH_BATCHES}
    best = max(by_batch, key=lambda b: by_batch[b])
    bench = {
        "model": model,
        "by_batch": {b: round(v, 2) for b, v in by_batch.items()},
        "best_batch": best,
        "best_ips": by_batch[best],
        "rounds_best_ips": [round(max(r.values()), 2) for r in benches],
    }
    return bench, {name: [_summary(c, parts[name][c]) for c in CONCURRENCY] for name in urls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="a VGG16 cpu-x86_64 bundle (default: export one)")
    parser.add_argument("--requests", type=int, default=1000, help="requests at concurrency 8 and 32, per server")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--bench-seconds", type=float, default=2.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from onnx_pipeline.runtime import Bundle

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        folder = Path(tmp)
        photos = folder / "photos"
        subprocess.run([sys.executable, str(REPO / "scripts" / "sample_photos.py"), str(photos)], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        bundle = args.bundle or _export(folder, photos)
        model = Bundle.load(bundle).model.file
        uploads = _uploads(bundle, photos)
        serve_cmd = _cli("serve", str(bundle), "--host", "127.0.0.1", "--port", "0", "--max-queue-size", "256")
        flask_cmd = [sys.executable, str(REPO / "benchmarks" / "flask_seed_server.py"), str(bundle)]
        with (
            _server(serve_cmd, re.compile(r"serving at (http://\S+)"), folder / "serve.log") as serve_url,
            _server(flask_cmd, re.compile(r'"url": "(http://[^"]+)"'), folder / "flask.log") as flask_url,
        ):
            bench, results = _rounds(bundle, model, {"serve": serve_url, "flask": flask_url}, uploads, args)
    report = {"bench": bench, **results, "goals": _goals(bench, results["serve"], results["flask"])}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"bench ({model}), img/s by batch size (median of {args.rounds} rounds): {bench['by_batch']}; "
          f"best per round: {bench['rounds_best_ips']}")  # fmt: skip
    print("| server | concurrency | requests | req/s | p50 ms | p99 ms | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in ("serve", "flask"):
        for row in results[name]:
            print(f"| {name} | {row['concurrency']} | {row['requests']} | {row['rps']} | {row['p50_ms']} | "
                  f"{row['p99_ms']} | {row['errors']} {' '.join(row['error_kinds'])} |")  # fmt: skip
    for name in ("serve", "flask"):
        by_c = {r["concurrency"]: r["rps"] for r in results[name]}
        print(f"{name}: req/s at 1, 8 and 32 ÷ bench's best: "
              + ", ".join(f"{by_c[c] / bench['best_ips']:.2f}x" for c in CONCURRENCY))  # fmt: skip
    for line in report["goals"]:
        print(line)


if __name__ == "__main__":
    main()
