"""Artifact builders as plug-ins: one module per artifact kind, found by the kind's name.

A target profile lists artifact kinds (``artifacts = ["fp32-optimized", "int8-qdq"]``); kind ``k``
is built by the module ``onnx_pipeline.artifacts.<k with '-' as '_'>``, which satisfies
``base.ArtifactBuilder``: ``SPEC = BuilderSpec(...)`` and ``build(ctx)``. Adding an artifact kind is
adding one module and naming it in a profile: nothing registers itself on import, nothing else lists
the kinds. A module whose name starts with ``_`` holds code several builders share and is not a kind.

A builder module may also define ``verify_section(manifest, section) -> dict | None``: checks of its
own files that ``onnx-pipeline verify BUNDLE`` makes beside hashes and fidelity (e.g. the Triton
config parsed back against its model). It raises ``BundleError`` when they fail.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from types import ModuleType
from typing import TYPE_CHECKING, cast

from onnx_pipeline.errors import TargetError

if TYPE_CHECKING:
    from onnx_pipeline.artifacts.base import ArtifactBuilder
    from onnx_pipeline.targets import HardwareTarget

_KIND = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_NOT_BUILDERS = {"base"}


def available_kinds() -> tuple[str, ...]:
    """Every artifact kind a builder module exists for, sorted."""
    names = (m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_BUILDERS and m.name[0] != "_")
    return tuple(sorted(name.replace("_", "-") for name in names))


def load_builder(kind: str) -> ArtifactBuilder:
    """The builder module of ``kind``; an unknown kind is a ``TargetError`` listing the known ones."""
    if not isinstance(kind, str) or not _KIND.match(kind) or kind not in available_kinds():
        raise TargetError(f"unknown artifact kind {kind!r}: choose from {', '.join(available_kinds())}")
    module: ModuleType = importlib.import_module(f"{__name__}.{kind.replace('-', '_')}")
    spec = getattr(module, "SPEC", None)
    if getattr(spec, "kind", None) != kind:
        raise TargetError(f"the builder module for {kind!r} declares the kind {getattr(spec, 'kind', None)!r}")
    return cast("ArtifactBuilder", module)


def builders_for(target: HardwareTarget) -> list[ArtifactBuilder]:
    """The target's builders, checked against the profile (precisions, tables, companions), in build order."""
    builders = [load_builder(kind) for kind in target.artifacts]
    where = f"target profile {target.source}"
    for builder in builders:
        if builder.SPEC.precision not in target.precisions:
            raise TargetError(
                f"{where}: artifact '{builder.SPEC.kind}' makes {builder.SPEC.precision} models but 'precisions' is "
                f"{list(target.precisions)}"
            )
        for table in builder.SPEC.requires:
            if target.table(table) is None:
                raise TargetError(f"{where}: artifact '{builder.SPEC.kind}' needs a [{table}] table")
        for other in builder.SPEC.needs:
            if other not in target.artifacts:
                raise TargetError(f"{where}: artifact '{builder.SPEC.kind}' needs '{other}' in 'artifacts' too")
        if not builder.SPEC.torch_module and not target.execution_providers:
            raise TargetError(
                f"{where}: artifact '{builder.SPEC.kind}' makes onnxruntime models: list 'execution_providers'"
            )
    return sorted(builders, key=lambda b: b.SPEC.order)


def rewrites_opset(target: HardwareTarget) -> bool:
    """Whether every builder of ``target`` rewrites the model to its own opset and batch (Vitis AI does)."""
    return all(load_builder(kind).SPEC.rewrites_opset for kind in target.artifacts)
