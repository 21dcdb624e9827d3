"""Commands that use a bundle: predict, preprocess, bench, serve, report (no torch on this side)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from onnx_pipeline.cli.app import app
from onnx_pipeline.cli.options import DebugOpt, JsonOpt, TrustOpt, forward
from onnx_pipeline.cli.output import err, errors, out, progress_display
from onnx_pipeline.files import json_text, to_jsonable


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder (RUN/bundles/TARGET) or a run folder.")],
    images: Annotated[list[Path], typer.Argument(help="Image files (JPEG, PNG, ...).")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="How many classes to list per image.")] = 5,
    model_name: Annotated[
        str | None, typer.Option("--model", help="Which model of the bundle: a precision (int8) or a file name.")
    ] = None,
    provider: Annotated[list[str] | None, typer.Option("--provider", help="Execution provider(s), in order.")] = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Classify images with a bundle, using onnxruntime, numpy and Pillow only (no torch).

    Examples:

        onnx-pipeline predict runs/vgg16/bundles/cpu-x86_64 hotdog.jpg --top-k 3

        onnx-pipeline predict runs/vgg16/bundles/cpu-x86_64 photos/*.jpg --model fp32 --json
    """
    from onnx_pipeline import api

    with errors(debug):
        if top_k < 1:
            raise typer.BadParameter("--top-k must be at least 1")
        loaded = api.load_bundle(bundle, model=model_name, providers=provider or None)
        predictions = [loaded.predict(image, top_k=top_k) for image in images]
    if as_json:
        payload = {
            "bundle": str(bundle),
            "model": loaded.model.file,
            "providers": list(loaded.providers),
            "predictions": [p.to_dict() for p in predictions],
        }
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    out.print(f"{escape(loaded.model.file)} on {', '.join(loaded.providers)}", soft_wrap=True)
    for p in predictions:
        top = ", ".join(f"{escape(str(c.class_name))} ({c.class_id}) {c.probability:.1%}" for c in p.top_k)
        out.print(f"{escape(p.source)}: [bold]{escape(str(p.class_name))}[/] ({p.class_id}) — {top}", soft_wrap=True)


@app.command()
def preprocess(
    image: Annotated[Path, typer.Argument(help="An image file (JPEG, PNG, ...).")],
    bundle: Annotated[Path, typer.Argument(help="A bundle folder (RUN/bundles/TARGET) or a run folder.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The tensor file to write.")],
    debug: DebugOpt = False,
) -> None:
    """Write IMAGE preprocessed as BUNDLE does it, as a tensor file (the torchscript bundle's C++ program input).

    Examples:

        onnx-pipeline preprocess hotdog.jpg runs/vgg16/bundles/torchscript -o hotdog.bin
    """
    from onnx_pipeline import api

    with errors(debug):
        written = api.preprocess(image, bundle, output)
    out.print(f"wrote {escape(str(written))}", soft_wrap=True)


@app.command()
def bench(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder (RUN/bundles/TARGET) or a run folder.")],
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")] = "1,8",
    seconds: Annotated[float, typer.Option("--seconds", help="Least time per measurement.")] = 3.0,
    threads: Annotated[int, typer.Option("--threads", help="Intra-op threads (0: the bundle's setting).")] = 0,
    eager: Annotated[
        bool, typer.Option("--eager/--no-eager", help="Measure PyTorch eager as the baseline, in the same run.")
    ] = True,
    eager_model: Annotated[
        str | None,
        typer.Option(
            "--eager-model",
            help="The PyTorch model of the eager baseline (a name or file.py:factory of yours; runs that code). "
            "Default: the folder's own model, when rebuilding it runs no code from the folder.",
        ),
    ] = None,
    trust_source: TrustOpt = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Latency (p50/p90/p99) and throughput of each model of a bundle, beside PyTorch eager and the GEMM floor.

    Examples:

        onnx-pipeline bench runs/vgg16/bundles/cpu-x86_64

        onnx-pipeline bench runs/vgg16/bundles/cpu-x86_64 --batch-sizes 1 --json
    """
    options = locals()
    from onnx_pipeline import api
    from onnx_pipeline.bench import bench_summary, bench_table

    try:
        sizes = tuple(int(v) for v in batch_sizes.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"'{batch_sizes}' is not a list of batch sizes: write it like 1,8") from None
    with errors(debug), progress_display(not as_json) as progress:
        result = forward(api.bench, options, batch_sizes=sizes, progress=progress)()
    if as_json:
        sys.stdout.write(json_text(result))
        return
    header, rows = bench_table(result)
    table = Table(title=f"bench: {bundle}", title_justify="left")
    for column in header:
        table.add_column(column, justify="left" if column in ("backend", "model") else "right")
    for row in rows:
        table.add_row(*row)
    out.print(table)
    for line in bench_summary(result):
        out.print(escape(line), soft_wrap=True)


@app.command()
def serve(
    bundles: Annotated[
        list[str], typer.Argument(help="Bundle folders (RUN/bundles/TARGET) or run folders; NAME=PATH names one.")
    ],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: a free one, printed at start).")] = 8000,
    max_batch_size: Annotated[
        int, typer.Option("--max-batch-size", help="Most images per batch (models with a dynamic batch axis).")
    ] = 8,
    max_queue_delay_ms: Annotated[
        float, typer.Option("--max-queue-delay-ms", help="Longest wait for a batch to fill, in ms.")
    ] = 5.0,
    max_queue_size: Annotated[
        int, typer.Option("--max-queue-size", help="Requests per model admitted at once; beyond, 503 + Retry-After.")
    ] = 64,
    max_body_mb: Annotated[
        float, typer.Option("--max-body-mb", help="Largest request body in MiB (413 above).")
    ] = 16.0,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Default classes per answer (?top_k=N per request).")] = 5,
    model_name: Annotated[
        str | None, typer.Option("--model", help="Which model of each bundle: a precision (int8) or a file name.")
    ] = None,
    provider: Annotated[list[str] | None, typer.Option("--provider", help="Execution provider(s), in order.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line per request (and at start).")] = False,
    debug: DebugOpt = False,
) -> None:
    """Serve bundles over HTTP: the seed's /predict, TorchServe's API, Open Inference Protocol v2, /metrics.

    Bundle hashes are checked first (a tampered bundle does not start). SIGTERM or Ctrl-C finishes
    the requests in flight and exits 0. No torch is imported.

    Examples:

        onnx-pipeline serve runs/vgg16/bundles/cpu-x86_64 --port 8000

        onnx-pipeline serve vgg16=runs/vgg16/bundles/cpu-x86_64 --max-batch-size 16 --json
    """
    options = locals()
    from onnx_pipeline import api
    from onnx_pipeline.serve import ServerInfo, ready_lines

    def line(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def ready(info: ServerInfo) -> None:
        for text in [json.dumps({"event": "ready", **to_jsonable(info)})] if as_json else ready_lines(info):
            line(text)

    with errors(debug):
        forward(
            api.serve,
            options,
            max_body_bytes=int(max_body_mb * (1 << 20)),
            model=model_name,
            providers=provider or None,
            on_ready=ready,
            on_request=(lambda record: line(json.dumps(record))) if as_json else None,
        )()
    if not as_json:
        err.print("stopped: every accepted request was answered")


@app.command()
def report(
    path: Annotated[Path, typer.Argument(help="A run folder or a bundle folder (RUN/bundles/TARGET).")],
    bench_json: Annotated[
        Path | None,
        typer.Option("--bench", help="A bench result to include (onnx-pipeline bench BUNDLE --json > bench.json)."),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """(Re)write PATH/report.html: one self-contained page with the verdict, figures and plots; prints its path.

    Examples:

        onnx-pipeline report runs/vgg16

        onnx-pipeline bench runs/vgg16/bundles/cpu-x86_64 --json > bench.json

        onnx-pipeline report runs/vgg16/bundles/cpu-x86_64 --bench bench.json
    """
    from onnx_pipeline import api

    with errors(debug):
        written = api.report(path, bench=bench_json)
    out.print(escape(str(written)), soft_wrap=True)
