"""Weights for a built model: torchvision's ImageNet weights, a state_dict file, or seeded random weights
rescaled so that parity is measured on well-scaled outputs."""

from __future__ import annotations

import contextlib
import io
import logging
import zipfile
from pathlib import Path
from typing import Any

from onnx_pipeline.errors import ModelSourceError, first_line
from onnx_pipeline.files import sha256_file
from onnx_pipeline.sources.registry import ModelSpec

logger = logging.getLogger(__name__)


def _load_imagenet(module: Any, spec: ModelSpec) -> tuple[str | None, str]:
    import torch.hub
    import torchvision

    weights = torchvision.models.get_model_weights(spec.name).DEFAULT  # type: ignore[attr-defined]
    file_name = weights.url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    try:
        # torch.hub writes "Downloading: URL" to stdout even with progress=False, which would
        # break --json: keep it (and any stderr noise) out of the CLI's streams.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            state = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # urllib/socket errors: offline, proxy, ...
        raise ModelSourceError(
            f"cannot get torchvision's ImageNet weights for {spec.name} ({type(exc).__name__}): offline? "
            f"put {file_name} in {cached.parent}, or use --weights PATH (a state_dict) or --weights random"
        ) from None
    module.load_state_dict(state, strict=True)
    return (sha256_file(cached) if cached.is_file() else None), str(cached)


def _load_state_dict_file(module: Any, path: Path) -> str:
    import pickle

    import torch

    if path.is_dir():
        raise ModelSourceError(f"weights {path} is a folder: give the file saved with torch.save(model.state_dict())")
    if not path.is_file():
        raise ModelSourceError(f"weights file {path} does not exist: give a state_dict saved with torch.save")
    if zipfile.is_zipfile(path):
        from onnx_pipeline.sources.registry import check_archive

        check_archive(path)
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines()]
        detail = next((line for line in lines if "GLOBAL" in line or "global" in line), "")
        imports = detail or _pickle_imports(path)
        if imports:
            raise ModelSourceError(
                f"refused to load {path}: it is a pickle that carries code, not plain tensors ({imports}). "
                "Save weights with torch.save(model.state_dict(), path)"
            ) from None
        raise ModelSourceError(f"{path} is not a PyTorch weights file: give a file saved with torch.save") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelSourceError(f"{path} is not a readable PyTorch weights file: {first_line(exc)}") from None
    state = loaded
    if isinstance(loaded, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in loaded and isinstance(loaded[key], dict):
                state = loaded[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelSourceError(f"{path} holds no state_dict (a mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # size mismatches
        mismatch = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        raise ModelSourceError(
            f"weights in {path} do not fit the model: {'; '.join(mismatch[:3]) or first_line(exc)}"
        ) from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing {_names(result.missing_keys)}")
    if result.unexpected_keys:
        problems.append(f"unexpected {_names(result.unexpected_keys)}")
    if problems:
        raise ModelSourceError(f"weights in {path} do not fit the model: {'; '.join(problems)}")
    return sha256_file(path)


def _pickle_imports(path: Path) -> str:
    """What a plain pickle file would import and call (read with pickletools, nothing executed), or ""."""
    import pickletools
    import warnings

    found: list[str] = []
    complete = False
    try:
        with open(path, "rb") as handle, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for opcode, arg, _ in pickletools.genops(handle):
                if opcode.name in ("GLOBAL", "INST") and arg and len(found) < 3:
                    found.append(str(arg).replace(" ", "."))
                elif opcode.name in ("STACK_GLOBAL", "REDUCE") and not found:
                    found.append(f"{opcode.name} opcode")
                complete = opcode.name == "STOP"
    except Exception:  # not a pickle stream at all: random bytes, another format
        return ""
    return ", ".join(found) if complete else ""


def _names(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def rescale_random_weights(module: Any, sample: Any) -> list[str]:
    """Make randomly initialised weights produce well-scaled activations, in one forward pass.

    Random initialisations are not made for inference: torchvision's give outputs below 1e-6
    for MobileNet/EfficientNet (BatchNorm with unit running statistics after layers that shrink
    the signal), exactly 0 for ViT (zero-initialised head) and ~1e11 for Inception v3. A parity
    check on such outputs is vacuous or overflows. So, in the spirit of LSUV (Mishkin & Matas,
    2016): weights that are constant (zero heads) are re-drawn; BatchNorm running statistics
    are recomputed from the sample batch; and each Conv/Linear is rescaled so that its output
    has unit standard deviation on the sample, layer by layer in a single pass.
    """
    import torch
    from torch import nn

    findings = []
    redrawn = 0
    generator = torch.Generator().manual_seed(0)
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d | nn.Linear | nn.Conv1d | nn.Conv3d):
            weight = sub.weight
            if weight.numel() > 1 and float(weight.detach().std()) == 0.0:
                fan_in = weight[0].numel()
                with torch.no_grad():
                    weight.copy_(torch.randn(weight.shape, generator=generator) / fan_in**0.5)
                redrawn += 1
    bn_layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bn_layers:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch gives exactly its statistics

    def rescale(layer: Any, _inputs: Any, output: Any) -> Any:
        if not isinstance(output, torch.Tensor):
            return output
        std = float(output.detach().float().std())
        if std > 0 and std == std and std != float("inf"):
            with torch.no_grad():
                layer.weight.div_(std)
                if getattr(layer, "bias", None) is not None:
                    layer.bias.div_(std)
            return output / std
        return output

    hooks = [
        sub.register_forward_hook(rescale)
        for sub in module.modules()
        if isinstance(sub, nn.Conv2d | nn.Linear | nn.Conv1d | nn.Conv3d)
    ]
    module.eval()
    for bn in bn_layers:
        bn.train()
    try:
        with torch.no_grad():
            module(sample)
    finally:
        for hook in hooks:
            hook.remove()
        module.eval()
    if redrawn:
        findings.append(f"random weights: re-drew {redrawn} constant (zero-initialised) weight tensors")
    findings.append(
        f"random weights: rescaled {len(hooks)} Conv/Linear layers to unit output std"
        + (f" and recomputed {len(bn_layers)} BatchNorm statistics" if bn_layers else "")
        + f" on {int(sample.shape[0])} seeded samples, so that parity is measured on well-scaled outputs"
    )
    return findings


def _rescale_sample(spec: ModelSpec, input_shape: tuple[int, ...], seed: int, samples: int) -> Any:
    """Seeded samples like the ones verify uses: normal, and uniform over the real input range.

    Calibrating BatchNorm on normal samples alone left EfficientNet ill-conditioned on
    in-range inputs (outputs ~1e3, float error 0.6% of the range); both kinds keep it at ~1.
    """
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    shape = tuple(input_shape[1:])
    prep = spec.preprocessing
    half = samples // 2
    normal = torch.randn((half, *shape), generator=generator)
    if prep is None or len(shape) != 3 or shape[0] != prep.channels:
        return torch.cat([normal, torch.randn((samples - half, *shape), generator=generator)])
    low, high = (torch.from_numpy(v).view(-1, 1, 1) for v in prep.input_range())
    uniform = low + torch.rand((samples - half, *shape), generator=generator) * (high - low)
    return torch.cat([normal, uniform])


def _rescale_samples(module: Any) -> int:
    """BatchNorm statistics need a batch (8); a model without BatchNorm only needs a scale (2)."""
    from torch import nn

    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
    return 8 if has_bn else 2
