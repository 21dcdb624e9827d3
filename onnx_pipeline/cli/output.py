"""What the commands print: the consoles, one-line user errors, progress, the run report.

Errors a user can fix are one line on stderr (``error: ...``) with a non-zero exit code;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import errno
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from onnx_pipeline.errors import EXIT_FAILED, EXIT_OK, PipelineError, StepError

# Tables are wide: without a terminal (CI logs, pipes) do not squeeze them into 80 columns.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)


class State:
    debug = False


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP), raised where the process is, so that it unwinds like Ctrl-C: temporary
    folders are removed and the PyTorch worker is terminated."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal_number)
        self.signal = signal_number


def on_signal(signal_number: int, _frame: Any) -> None:
    raise Terminated(signal_number)


def fail(exc: PipelineError) -> None:
    err.print(f"[bold red]error:[/] {escape(exc.message)}", soft_wrap=True)
    if State.debug:
        err.print_exception()


#: a full disk or quota: the user's to fix (room, or another --output), not a bug
DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def disk_full(exc: OSError) -> StepError:
    """The one-line error for a write that found no room; the command's temporary folder is gone by then."""
    where = f" while writing {exc.filename}" if exc.filename else ""
    return StepError(
        f"no space left on the device{where}: free some space there or choose an output folder on another "
        "disk, then run the command again (the partly written folder was removed)"
    )


@contextmanager
def errors(debug: bool) -> Iterator[None]:
    State.debug = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s"
    )
    # onnxruntime's tools set their loggers to DEBUG when imported: filter at the handler instead.
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.DEBUG if debug else logging.WARNING)
    try:
        yield
    except PipelineError as exc:
        fail(exc)
        raise typer.Exit(exc.exit_code) from None
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        error = disk_full(exc)
        fail(error)
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt as exc:
        code = 128 + exc.signal if isinstance(exc, Terminated) else 130
        err.print("interrupted: nothing was written (temporary files removed)")
        raise typer.Exit(code) from None


@contextmanager
def progress_display(enabled: bool, bars: bool = False) -> Iterator[Callable[[str], None]]:
    """On stderr: a spinner naming the step that runs, or with ``bars`` (``--progress``) one bar per stage
    with its time, kept on screen. Off when ``enabled`` is false (``--json``) or stderr is not a terminal;
    the bars also need stdout to be a terminal (stdout stays clean when it is piped)."""
    if not enabled or not err.is_terminal:
        yield lambda _step: None
        return
    if bars and out.is_terminal:
        with stage_bars() as step:
            yield step
        return
    with err.status("starting") as status:
        yield lambda step: status.update(f"[bold]{step}[/] …")


@contextmanager
def stage_bars() -> Iterator[Callable[[str], None]]:
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
            current.append(bars.add_task(escape(name), total=None))

        try:
            yield step
        finally:
            finish()


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def parity_table(verify: dict[str, Any]) -> Table:
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
            fmt(o["scale"]),
            fmt(o["max_abs_error"]),
            fmt(o["max_rel_error"]),
            fmt(o["mean_abs_error"]),
            fmt(o["min_cosine"], 8) if isinstance(o["min_cosine"], float) else str(o["min_cosine"]),
            fmt(o["top1_agreement"]),
            fmt(o["top5_agreement"]),
            fmt(o["smallest_passing_atol"]),
            fmt(o["noise"]["floor_max"]) if o.get("noise") else "–",
            times(o["noise"]["ratio"]) if o.get("noise") else "–",
            "[green]pass[/]" if o["passed"] else "[red]FAIL[/]",
        )
    return table


def times(ratio: Any) -> str:
    if not isinstance(ratio, float | int):
        return f"{ratio}×"  # "inf" in JSON
    return f"{ratio:,.0f}×" if ratio >= 100 else f"{ratio:.3g}×"


def print_localization(located: dict[str, Any] | None) -> None:
    if not located:
        return
    out.print(
        f"localisation ({located['compared_layers']} layers compared on {located['sample_set']}): "
        + escape(located["summary"]),
        soft_wrap=True,
    )
    chain = [f"{c['onnx_node']} ({c['module']}) {times(c['ratio'])}" for c in located.get("chain", []) if c["ratio"]]
    if chain:
        out.print("  then: " + escape(", ".join(chain)), soft_wrap=True)


def print_report(report: dict[str, Any], as_json: bool, report_path: Path | None) -> None:
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
        out.print(escape(line), soft_wrap=True)
    simplify = steps.get("simplify")
    if simplify:
        out.print(escape(f"simplify ({simplify['backend']}): {simplify['reason']}"), soft_wrap=True)
    for finding in report.get("findings", []):
        out.print(f"[yellow]finding:[/] {escape(finding)}", soft_wrap=True)
    verify = steps.get("verify")
    if verify:
        out.print(parity_table(verify))
        out.print(
            f"criterion: {verify['criterion']}; min cosine {verify['tolerances']['min_cosine']}; samples: "
            + ", ".join(s["name"] for s in verify["samples"])
            + f"; provider: {', '.join(verify['providers'][:1])}",
            soft_wrap=True,
        )
        for failure in verify.get("failures", []):
            out.print(f"[red]failure:[/] {escape(failure)}", soft_wrap=True)
        print_localization(verify.get("localization"))
        out.print(f"verdict: {escape(verify.get('verdict', ''))}", soft_wrap=True)
    for name, bundle in steps.get("bundles", {}).items():
        out.print(f"bundle {escape(name)}: {escape(bundle.get('summary', ''))}", soft_wrap=True)
        for failure in bundle.get("failures", []):
            out.print(f"[red]failure:[/] {escape(failure)}", soft_wrap=True)
    bundle = steps.get("bundle")
    if bundle:
        out.print(f"bundle {escape(bundle.get('target', ''))}: {escape(bundle.get('summary', ''))}", soft_wrap=True)
        print_sensitivity(bundle.get("sensitivity") or {})
        for failure in bundle.get("failures", []):
            out.print(f"[red]failure:[/] {escape(failure)}", soft_wrap=True)


def print_sensitivity(sensitivity: dict[str, Any]) -> None:
    """One line per lowered model: its most sensitive layers (recorded at build time) and those kept in float."""

    def figure(layer: dict[str, Any]) -> str:
        effect, sqnr = layer.get("effect"), layer.get("sqnr_db")
        gain = f"{effect:+.1f} dB in float, " if isinstance(effect, int | float) else ""
        return f"{layer.get('layer')} ({gain}SQNR {sqnr:.1f} dB)" if isinstance(sqnr, int | float) else str(layer)

    for kind, data in sensitivity.items():
        layers = ", ".join(figure(x) for x in data.get("layers", [])[:3]) or "none"
        kept = data.get("kept_in_float")
        tail = f"; kept in float: {', '.join(map(str, kept))}" if kept else ""
        out.print(f"sensitivity {escape(kind)}: most sensitive {escape(layers)}{escape(tail)}", soft_wrap=True)


def closing_line(status: str, seconds: float, output: Any) -> None:
    word = "[bold green]PASSED[/]" if status == "passed" else "[bold red]FAILED[/]"
    (out if status == "passed" else err).print(f"{word} in {seconds:.1f} s → {escape(str(output))}", soft_wrap=True)


def run_reported(
    call: Callable[..., Any],
    *,
    as_json: bool,
    report: Path | None,
    output: Any,
    bars: bool = False,
) -> None:
    """Run a library call that returns a RunReport; print it, the closing line, and exit with its code."""
    start = time.perf_counter()
    try:
        with progress_display(not as_json, bars) as progress:
            result = call(progress=progress)
    except PipelineError as exc:
        if exc.result is not None and hasattr(exc.result, "to_dict"):
            print_report(exc.result.to_dict(), as_json, report)
        fail(exc)
        if exc.exit_code == EXIT_FAILED and not as_json:
            closing_line("failed", time.perf_counter() - start, output)
        raise typer.Exit(exc.exit_code) from None
    print_report(result.to_dict(), as_json, report)
    if not as_json:
        closing_line(result.status, time.perf_counter() - start, output)
    raise typer.Exit(EXIT_OK if result.status == "passed" else EXIT_FAILED)


def run_command(call: Callable[..., Any], options: Mapping[str, Any], output: Any) -> None:
    """The end of a reporting command (export, verify, bundle): ``call`` (an API call that takes ``progress``)
    run under the options they share (``--json``, ``--report``, ``--progress``, ``--debug``)."""
    with errors(options["debug"]):
        run_reported(
            call, as_json=options["as_json"], report=options["report"], output=output, bars=options["show_progress"]
        )
