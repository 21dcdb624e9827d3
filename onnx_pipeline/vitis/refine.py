"""The DPU compiler's integer-pipeline constraints on power-of-two positions (XINT8 only).

The rules of AMD Quark's ``quark/onnx/postprocess/refinement/refine.py`` (``QuantPosManager``):

- Conv/Gemm: ``shift_cut = wpos + ipos - opos`` in [0, 16] (wpos moved);
  ``shift_bias = wpos + ipos - bpos`` in [min(0, -(24 - (8 + shift_cut))), 15] (bpos moved;
  lower bound 0 when a LeakyRelu follows).
- Add: ``max(ipos) - min(ipos) <= 7`` (the larger moved down), ``min(ipos) - opos`` in [-7, 25].
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from onnx_pipeline.vitis.plan import Groups, QuantPlan

log = logging.getLogger(__name__)

SHIFT_CUT = (0, 16)
SHIFT_BIAS_MAX = 15
SHIFT_READ_MAX = 7
SHIFT_WRITE = (-7, 25)
MAX_REFINE_LOOPS = 5


def bias_shift_low(shift_cut: int, leaky: bool) -> int:
    """Lower bound of shift_bias for a given shift_cut (0 when a LeakyRelu follows)."""
    return 0 if leaky else min(0, -(24 - (8 + shift_cut)))


def refine(plan: QuantPlan, positions: Groups, wpos: dict[str, int], wmoved: dict[str, list[str]]) -> None:
    """Move positions until the DPU constraints hold (Quark's refine order, at most 5 loops)."""
    graph = plan.parts.skeleton.graph
    for _ in range(MAX_REFINE_LOOPS):
        changed = False
        for node in graph.node:
            if node.op_type in ("Add", "Sub") and plan.is_quantized_op(node):
                changed |= _refine_add(plan, positions, node)
        for node in plan.compute:
            changed |= _refine_compute(plan, positions, node, wpos, wmoved)
        if not changed:
            return
    log.warning("XINT8 position refinement did not settle in %d loops", MAX_REFINE_LOOPS)


def _refine_add(plan: QuantPlan, positions: Groups, node: Any) -> bool:
    changed = False
    ins = [t for t in node.input if t in plan.quantized]
    if len(ins) != 2:
        return False
    in_pos = [positions.get(t) for t in ins]
    if max(in_pos) - min(in_pos) > SHIFT_READ_MAX:
        hi = ins[int(np.argmax(in_pos))]
        positions.set(hi, min(in_pos) + SHIFT_READ_MAX, "shift_read")
        changed = True
    out = node.output[0]
    if out in plan.quantized:
        low = min(positions.get(t) for t in ins)
        sw = low - positions.get(out)
        if not SHIFT_WRITE[0] <= sw <= SHIFT_WRITE[1]:
            target = min(max(sw, SHIFT_WRITE[0]), SHIFT_WRITE[1])
            positions.set(out, low - target, "shift_write")
            changed = True
    return changed


def _refine_compute(
    plan: QuantPlan, positions: Groups, node: Any, wpos: dict[str, int], wmoved: dict[str, list[str]]
) -> bool:
    x, w = node.input[0], node.input[1]
    o = plan.output_tensor(node)
    if x not in plan.quantized or o not in plan.quantized:
        return False
    changed = False
    ipos, opos = positions.get(x), positions.get(o)
    sc = wpos[w] + ipos - opos
    if not SHIFT_CUT[0] <= sc <= SHIFT_CUT[1]:
        new = min(max(sc, SHIFT_CUT[0]), SHIFT_CUT[1]) + opos - ipos
        wmoved.setdefault(w, []).append(f"shift_cut: {w} position {wpos[w]} → {new}")
        wpos[w] = new
        sc = new + ipos - opos
        changed = True
    if len(node.input) > 2 and node.input[2]:
        b = node.input[2]
        users = plan.consumers.get(node.output[0], [])
        low = bias_shift_low(sc, any(u.op_type == "LeakyRelu" for u in users))
        sb = wpos[w] + ipos - wpos[b]
        if not low <= sb <= SHIFT_BIAS_MAX:
            new = wpos[w] + ipos - min(max(sb, low), SHIFT_BIAS_MAX)
            wmoved.setdefault(b, []).append(f"shift_bias: {b} position {wpos[b]} → {new}")
            wpos[b] = new
            changed = True
    return changed
