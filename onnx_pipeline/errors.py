"""The one exception family for problems a user can fix.

Every ``PipelineError`` carries an exit code and a message that says what to do next.
A bug is never a ``PipelineError``: it keeps its traceback.
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1  # a step or a check failed
EXIT_USAGE = 2  # bad usage or bad input


class PipelineError(Exception):
    """Base class: a user-fixable problem, reported as one line without a traceback."""

    exit_code: int = EXIT_USAGE

    def __init__(self, message: str, *, result: Any = None) -> None:
        super().__init__(message)
        self.message = message
        #: the typed result that led to the error (e.g. a ParityResult), when there is one
        self.result = result

    def __str__(self) -> str:
        return self.message


class InputError(PipelineError):
    """A missing, corrupt or wrong-shaped input file, or an argument that makes no sense."""

    exit_code = EXIT_USAGE


class ModelSourceError(InputError):
    """An unknown model name, an unloadable factory, or weights that do not fit the model."""


class TargetError(InputError):
    """An unknown hardware target or an invalid target profile."""


class OutputExistsError(InputError):
    """The output folder exists and ``--force`` was not given."""


class IntegrityError(InputError):
    """A run folder or bundle fails its integrity rules: a file missing, altered, unlisted where it must be
    listed, or a path that leaves the folder. ``verify`` reports it as a failed check (exit 1); every
    other command refuses the folder as bad input (exit 2)."""


class StepError(PipelineError):
    """A pipeline step (export, check, simplify, quantize, bundle) could not do its job."""

    exit_code = EXIT_FAILED


class ExportError(StepError):
    """The PyTorch model could not be exported faithfully."""


class CheckError(StepError):
    """The ONNX checker or shape inference rejected a model."""


class VerificationError(StepError):
    """A parity or fidelity check failed; ``result`` holds every measurement."""


class BundleError(StepError):
    """A hardware bundle could not be built, or a bundle on disk fails its checks."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (libraries append C++ traces), or its type name."""
    for line in str(exc).strip().splitlines():
        line = line.strip()
        if line:
            return line[:limit]
    return type(exc).__name__
