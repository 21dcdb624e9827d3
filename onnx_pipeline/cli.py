"""The command line: parses options, builds one config, calls the library, prints the result.

This is the only module that knows Typer and rich. Errors a user can fix are one line on
stderr (``error: ...``) with a non-zero exit code; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape as _escape
from rich.table import Table

from onnx_pipeline.errors import EXIT_FAILED, EXIT_OK, PipelineError
from onnx_pipeline.files import json_text, to_jsonable

app = typer.Typer(
    name="onnx-pipeline",
    help="PyTorch image models to verified ONNX bundles for CPU, NVIDIA GPUs and Xilinx FPGAs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
# Tables are wide: without a terminal (CI logs, pipes) do not squeeze them into 80 columns.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)


def _version(value: bool) -> None:
    if value:
        from onnx_pipeline import __version__

        out.print(f"onnx-pipeline {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """PyTorch image models to verified ONNX bundles for CPU, NVIDIA GPUs and Xilinx FPGAs."""


class _State:
    debug = False


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP), raised where the process is, so that it unwinds like Ctrl-C: temporary
    folders are removed and the PyTorch worker is terminated."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal_number)
        self.signal = signal_number


def _on_signal(signal_number: int, _frame: Any) -> None:
    raise Terminated(signal_number)


def _fail(exc: PipelineError) -> None:
    err.print(f"[bold red]error:[/] {_escape(exc.message)}", soft_wrap=True)
    if _State.debug:
        err.print_exception()


@contextmanager
def _errors(debug: bool) -> Iterator[None]:
    _State.debug = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s"
    )
    # onnxruntime's tools set their loggers to DEBUG when imported: filter at the handler instead.
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.DEBUG if debug else logging.WARNING)
    try:
        yield
    except PipelineError as exc:
        _fail(exc)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt as exc:
        code = 128 + exc.signal if isinstance(exc, Terminated) else 130
        err.print("interrupted: nothing was written (temporary files removed)")
        raise typer.Exit(code) from None


@contextmanager
def _progress(enabled: bool, bars: bool = False) -> Iterator[Callable[[str], None]]:
    """On stderr: a spinner naming the step that runs, or with ``bars`` (``--progress``) one bar per stage
    with its time, kept on screen. Off when ``enabled`` is false (``--json``) or stderr is not a terminal;
    the bars also need stdout to be a terminal (stdout stays clean when it is piped)."""
    if not enabled or not err.is_terminal:
        yield lambda _step: None
        return
    if bars and out.is_terminal:
        with _stage_bars() as step:
            yield step
        return
    with err.status("starting") as status:
        yield lambda step: status.update(f"[bold]{step}[/] …")


@contextmanager
def _stage_bars() -> Iterator[Callable[[str], None]]:
    """One rich progress bar per stage: pulsing while the stage runs, full (with its time) once the next starts."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(finished_text="[green]✓[/]"), TextColumn("{task.description}"), BarColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=err) as bars:
        current: list[Any] = []

        def finish() -> None:
            if current:
                bars.update(current.pop(), total=1, completed=1)

        def step(name: str) -> None:
            finish()
            current.append(bars.add_task(_escape(name), total=None))

        try:
            yield step
        finally:
            finish()


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"'{text}' is not a shape: write it like 1,3,224,224") from None
    if not shape or any(d < 1 for d in shape):
        raise typer.BadParameter(f"'{text}' is not a shape: every dimension must be a positive integer")
    return shape


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _parity_table(verify: dict[str, Any]) -> Table:
    table = Table(title="parity: PyTorch eager vs onnxruntime", title_justify="left")
    for column in (
        "output",
        "scale",
        "max abs",
        "max rel",
        "mean abs",
        "cosine",
        "top-1",
        "top-5",
        "min atol",
        "floor",
        "ratio",
        "result",
    ):
        table.add_column(column, justify="right" if column not in ("output", "result") else "left")
    for o in verify.get("outputs", []):
        table.add_row(
            o["name"],
            _fmt(o["scale"]),
            _fmt(o["max_abs_error"]),
            _fmt(o["max_rel_error"]),
            _fmt(o["mean_abs_error"]),
            _fmt(o["min_cosine"], 8) if isinstance(o["min_cosine"], float) else str(o["min_cosine"]),
            _fmt(o["top1_agreement"]),
            _fmt(o["top5_agreement"]),
            _fmt(o["smallest_passing_atol"]),
            _fmt(o["noise"]["floor_max"]) if o.get("noise") else "–",
            _times(o["noise"]["ratio"]) if o.get("noise") else "–",
            "[green]pass[/]" if o["passed"] else "[red]FAIL[/]",
        )
    return table


def _times(ratio: Any) -> str:
    if not isinstance(ratio, float | int):
        return f"{ratio}×"  # "inf" in JSON
    return f"{ratio:,.0f}×" if ratio >= 100 else f"{ratio:.3g}×"


def _print_localization(located: dict[str, Any] | None) -> None:
    if not located:
        return
    out.print(
        f"localisation ({located['compared_layers']} layers compared on {located['sample_set']}): "
        + _escape(located["summary"]),
        soft_wrap=True,
    )
    chain = [f"{c['onnx_node']} ({c['module']}) {_times(c['ratio'])}" for c in located.get("chain", []) if c["ratio"]]
    if chain:
        out.print("  then: " + _escape(", ".join(chain)), soft_wrap=True)


def _print_report(report: dict[str, Any], as_json: bool, report_path: Path | None) -> None:
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    steps = report.get("steps", {})
    export = steps.get("export")
    if export:
        batch = "dynamic" if export["dynamic_batch"] else "static"
        line = f"exported with {export['used']} (opset {export['opset']}, {batch} batch)"
        for fallback in export.get("fallbacks", []):
            line += f"; {fallback['exporter']} failed first: {fallback['error']}"
        out.print(_escape(line), soft_wrap=True)
    simplify = steps.get("simplify")
    if simplify:
        out.print(_escape(f"simplify ({simplify['backend']}): {simplify['reason']}"), soft_wrap=True)
    for finding in report.get("findings", []):
        out.print(f"[yellow]finding:[/] {_escape(finding)}", soft_wrap=True)
    verify = steps.get("verify")
    if verify:
        out.print(_parity_table(verify))
        out.print(
            f"criterion: {verify['criterion']}; min cosine {verify['tolerances']['min_cosine']}; samples: "
            + ", ".join(s["name"] for s in verify["samples"])
            + f"; provider: {', '.join(verify['providers'][:1])}",
            soft_wrap=True,
        )
        for failure in verify.get("failures", []):
            out.print(f"[red]failure:[/] {_escape(failure)}", soft_wrap=True)
        _print_localization(verify.get("localization"))
        out.print(f"verdict: {_escape(verify.get('verdict', ''))}", soft_wrap=True)
    for name, bundle in steps.get("bundles", {}).items():
        out.print(f"bundle {_escape(name)}: {_escape(bundle.get('summary', ''))}", soft_wrap=True)
        for failure in bundle.get("failures", []):
            out.print(f"[red]failure:[/] {_escape(failure)}", soft_wrap=True)
    bundle = steps.get("bundle")
    if bundle:
        out.print(f"bundle {_escape(bundle.get('target', ''))}: {_escape(bundle.get('summary', ''))}", soft_wrap=True)
        for failure in bundle.get("failures", []):
            out.print(f"[red]failure:[/] {_escape(failure)}", soft_wrap=True)


def _closing_line(status: str, seconds: float, output: Any) -> None:
    word = "[bold green]PASSED[/]" if status == "passed" else "[bold red]FAILED[/]"
    (out if status == "passed" else err).print(f"{word} in {seconds:.1f} s → {_escape(str(output))}", soft_wrap=True)


def _run_reported(
    call: Callable[[Callable[[str], None]], Any],
    *,
    as_json: bool,
    report: Path | None,
    output: Any,
    bars: bool = False,
) -> None:
    """Run a library call that returns a RunReport; print it, the closing line, and exit with its code."""
    start = time.perf_counter()
    try:
        with _progress(not as_json, bars) as progress:
            result = call(progress)
    except PipelineError as exc:
        if exc.result is not None and hasattr(exc.result, "to_dict"):
            _print_report(exc.result.to_dict(), as_json, report)
        _fail(exc)
        if exc.exit_code == EXIT_FAILED and not as_json:
            _closing_line("failed", time.perf_counter() - start, output)
        raise typer.Exit(exc.exit_code) from None
    _print_report(result.to_dict(), as_json, report)
    if not as_json:
        _closing_line(result.status, time.perf_counter() - start, output)
    raise typer.Exit(EXIT_OK if result.status == "passed" else EXIT_FAILED)


# --------------------------------------------------------------------------- export

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="torchvision model name (vgg16), tiny-vgg, package.module:factory, file.py:factory (runs that code), "
        "or a TorchScript archive.",
    ),
]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights",
        "-w",
        help="imagenet (torchvision's weights: downloaded or from the torch hub cache), random (seeded), "
        "or PATH to a state_dict (loaded with weights_only=True).",
    ),
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed for random weights and verification inputs.")]
ShapeOpt = Annotated[str | None, typer.Option("--input-shape", help="Input shape with batch, e.g. 1,3,224,224.")]
ImagesOpt = Annotated[
    Path | None, typer.Option("--images", help="Folder of photographs to verify on (the model's preprocessing).")
]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="The larger verification batch (batch 1 runs too).")]
AtolOpt = Annotated[
    float | None,
    typer.Option("--atol", help="Fixed absolute tolerance, in units of the output's range (replaces the noise floor)."),
]
RtolOpt = Annotated[
    float | None, typer.Option("--rtol", help="Fixed relative tolerance, elementwise (replaces the noise floor).")
]
CosOpt = Annotated[float | None, typer.Option("--min-cosine", help="Smallest cosine similarity per sample.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the report as one JSON object on stdout, nothing else.")]
ReportOpt = Annotated[Path | None, typer.Option("--report", help="Also write the JSON report to this file.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")]
ProgressOpt = Annotated[
    bool,
    typer.Option("--progress", help="A progress bar per stage (on a terminal; never with --json)."),
]
IsolateOpt = Annotated[
    bool,
    typer.Option("--isolate/--no-isolate", help="Run the PyTorch side in its own process (frees its memory)."),
]
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-source",
        help="Rebuild the folder's PyTorch model even if that runs code or reads files its manifest names "
        "(a factory, a TorchScript archive, a weights file). Only for folders from a source you trust.",
    ),
]
RescaleOpt = Annotated[
    bool,
    typer.Option(
        "--rescale-random/--no-rescale-random",
        help="With random weights, rescale layers on sample inputs so outputs are well scaled.",
    ),
]


@app.command()
def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="The run folder to write.")],
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    seed: SeedOpt = None,
    input_shape: ShapeOpt = None,
    static_batch: Annotated[bool, typer.Option("--static-batch", help="Keep the batch axis fixed.")] = False,
    exporter: Annotated[
        str | None, typer.Option("--exporter", help="dynamo (default) or torchscript; the other is the fallback.")
    ] = None,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset (default 18).")] = None,
    external_data: Annotated[
        bool, typer.Option("--external-data", help="Weights in model.onnx.data (automatic over 2 GB).")
    ] = False,
    no_simplify: Annotated[bool, typer.Option("--no-simplify", help="Skip graph simplification.")] = False,
    simplifier: Annotated[str | None, typer.Option("--simplifier", help="onnxsim (default) or onnxslim.")] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip parity verification (not recommended).")] = False,
    images: ImagesOpt = None,
    batch_size: BatchOpt = None,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    min_cosine: CosOpt = None,
    target: Annotated[
        list[str] | None, typer.Option("--target", "-t", help="Also build this hardware bundle (repeatable).")
    ] = None,
    calibration_images: Annotated[
        Path | None, typer.Option("--calibration-images", help="Photographs for int8 calibration (bundles).")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="A TOML config file (CLI flags win).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output folder.")] = False,
    isolate: IsolateOpt = True,
    rescale_random: RescaleOpt = True,
    as_json: JsonOpt = False,
    show_progress: ProgressOpt = False,
    report: ReportOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Export a PyTorch model to ONNX, check, simplify and verify it into a run folder.

    Examples:

        onnx-pipeline export --model vgg16 --weights random --output runs/vgg16

        onnx-pipeline export -m resnet50 -w imagenet -o runs/r50 --images photos/ --target cpu-x86_64

        onnx-pipeline export -m my_models.py:build -w ckpt.pt --input-shape 1,3,128,128 -o runs/mine
    """
    from onnx_pipeline import api

    shape = _parse_shape(input_shape)
    with _errors(debug):
        _run_reported(
            lambda progress: api.export(
                model,
                output=output,
                weights=weights,
                seed=seed,
                input_shape=shape,
                static_batch=static_batch,
                exporter=exporter,
                opset=opset,
                external_data=True if external_data else None,
                simplify=not no_simplify,
                simplifier=simplifier,
                verify=not no_verify,
                images=images,
                batch_size=batch_size,
                atol=atol,
                rtol=rtol,
                min_cosine=min_cosine,
                targets=tuple(target or ()),
                calibration_images=calibration_images,
                config=config,
                force=force,
                isolate=isolate,
                rescale_random=rescale_random,
                progress=progress,
            ),
            as_json=as_json,
            report=report,
            output=output,
            bars=show_progress,
        )


# --------------------------------------------------------------------------- verify


@app.command()
def verify(
    path: Annotated[Path, typer.Argument(help="A run folder, or an .onnx file (then give --model).")],
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    seed: SeedOpt = None,
    input_shape: ShapeOpt = None,
    images: ImagesOpt = None,
    batch_size: BatchOpt = None,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    min_cosine: CosOpt = None,
    provider: Annotated[
        list[str] | None, typer.Option("--provider", help="onnxruntime execution provider(s), in order.")
    ] = None,
    isolate: IsolateOpt = True,
    rescale_random: RescaleOpt = True,
    trust_source: TrustOpt = False,
    localize: Annotated[
        bool, typer.Option("--localize", help="Name the first layer leaving the noise floor even when parity passes.")
    ] = False,
    as_json: JsonOpt = False,
    show_progress: ProgressOpt = False,
    report: ReportOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Verify numerical parity of a run folder, or of any ONNX file against a PyTorch model.

    Exit code 0 when every output is within tolerance, 1 when not, 2 for bad input.

    Examples:

        onnx-pipeline verify runs/vgg16

        onnx-pipeline verify model.onnx --model vgg16 --weights vgg16.pth --images photos/ --json
    """
    from onnx_pipeline import api

    shape = _parse_shape(input_shape)
    with _errors(debug):
        _run_reported(
            lambda progress: api.verify(
                path,
                model=model,
                weights=weights,
                seed=seed,
                input_shape=shape,
                images=images,
                batch_size=batch_size,
                atol=atol,
                rtol=rtol,
                min_cosine=min_cosine,
                providers=provider or None,
                isolate=isolate,
                rescale_random=rescale_random,
                trust_source=trust_source,
                localize=localize,
                progress=progress,
            ),
            as_json=as_json,
            report=report,
            output=path,
            bars=show_progress,
        )


# --------------------------------------------------------------------------- targets and bundles


@app.command()
def targets(as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """List the hardware targets in hardware/ (use --target PATH.toml for a profile of your own)."""
    from onnx_pipeline import api

    with _errors(debug):
        found = api.targets()
    if as_json:
        rows = [
            {
                "name": t.name,
                "description": t.description,
                "precisions": list(t.precisions),
                "artifacts": list(t.artifacts),
                "providers": [name for name, _ in t.providers],
                "batch": t.batch,
                "opset": [t.opset.min, t.opset.max],
                "profile": str(t.source),
            }
            for t in found
        ]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title="hardware targets", title_justify="left")
    for column in ("name", "precisions", "artifacts", "providers", "batch", "description"):
        table.add_column(column)
    for t in found:
        table.add_row(
            t.name,
            ", ".join(t.precisions),
            ", ".join(t.artifacts),
            ", ".join(name for name, _ in t.providers),
            t.batch,
            t.description,
        )
    out.print(table)


@app.command()
def bundle(
    run: Annotated[Path, typer.Argument(help="A run folder written by export.")],
    target: Annotated[
        list[str], typer.Option("--target", "-t", help="Target name (onnx-pipeline targets) or PATH.toml; repeatable.")
    ],
    calibration_images: Annotated[
        Path | None, typer.Option("--calibration-images", help="Photographs to calibrate int8 on (part held out).")
    ] = None,
    heldout_images: Annotated[
        Path | None, typer.Option("--heldout-images", help="Photographs for the fidelity check only.")
    ] = None,
    seed: SeedOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace existing bundles.")] = False,
    as_json: JsonOpt = False,
    show_progress: ProgressOpt = False,
    report: ReportOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Build hardware bundles from a run folder into RUN/bundles/TARGET/.

    Examples:

        onnx-pipeline bundle runs/vgg16 --target cpu-x86_64 --calibration-images photos/

        onnx-pipeline bundle runs/vgg16 -t cuda -t tensorrt -t vitis-ai-zcu102
    """
    from onnx_pipeline import api

    with _errors(debug):
        _run_reported(
            lambda progress: api.bundle(
                run,
                target,
                calibration_images=calibration_images,
                heldout_images=heldout_images,
                seed=seed or 0,
                force=force,
                progress=progress,
            ),
            as_json=as_json,
            report=report,
            output=run / "bundles",
            bars=show_progress,
        )


# --------------------------------------------------------------------------- edge runtime and bench


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

    with _errors(debug):
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
    out.print(f"{_escape(loaded.model.file)} on {', '.join(loaded.providers)}", soft_wrap=True)
    for p in predictions:
        top = ", ".join(f"{_escape(str(c.class_name))} ({c.class_id}) {c.probability:.1%}" for c in p.top_k)
        out.print(f"{_escape(p.source)}: [bold]{_escape(str(p.class_name))}[/] ({p.class_id}) — {top}", soft_wrap=True)


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
    from onnx_pipeline import api
    from onnx_pipeline.bench import bench_summary, bench_table

    try:
        sizes = tuple(int(v) for v in batch_sizes.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"'{batch_sizes}' is not a list of batch sizes: write it like 1,8") from None
    with _errors(debug), _progress(not as_json) as progress:
        result = api.bench(
            bundle,
            batch_sizes=sizes,
            seconds=seconds,
            threads=threads,
            eager=eager,
            eager_model=eager_model,
            trust_source=trust_source,
            progress=progress,
        )
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
        out.print(_escape(line), soft_wrap=True)


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
    from onnx_pipeline import api
    from onnx_pipeline.serve import ServerInfo, ready_lines

    def line(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def ready(info: ServerInfo) -> None:
        for text in [json.dumps({"event": "ready", **to_jsonable(info)})] if as_json else ready_lines(info):
            line(text)

    with _errors(debug):
        api.serve(
            bundles,
            host=host,
            port=port,
            max_batch_size=max_batch_size,
            max_queue_delay_ms=max_queue_delay_ms,
            max_queue_size=max_queue_size,
            max_body_bytes=int(max_body_mb * (1 << 20)),
            top_k=top_k,
            model=model_name,
            providers=provider or None,
            on_ready=ready,
            on_request=(lambda record: line(json.dumps(record))) if as_json else None,
        )
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

    with _errors(debug):
        written = api.report(path, bench=bench_json)
    out.print(_escape(str(written)), soft_wrap=True)


def main() -> None:
    """Console-script entry point: SIGTERM and SIGHUP unwind like Ctrl-C (nothing half-written is left)."""
    import signal

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _on_signal)
    app()


if __name__ == "__main__":
    main()
