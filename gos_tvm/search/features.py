"""Fixed-length features of an `OpProgram` for the latency cost model.

The features describe what a tuned kernel's time depends on: the arithmetic (FLOPs,
the iteration space of each contraction and its reduction depth), the compulsory
memory traffic, and what the schedule has to fuse or materialise (windows, shifts,
intermediate tensor sizes).  Sizes enter as log2 so that a tree model splits on
orders of magnitude.
"""
from __future__ import annotations

import math

import numpy as np

from ..instructions.program import BINARY_OPS, REDUCE_OPS, UNARY_OPS, OpProgram, parse_einsum

FEATURE_NAMES = (
    "log_flops", "log_bytes", "log_params", "log_out_elems", "arith_intensity",
    "n_contract", "n_window", "n_shift", "n_pad", "n_layout", "n_elementwise", "n_reduce",
    "log_max_reduce_extent", "log_min_reduce_extent", "log_max_contract_space", "log_min_contract_out",
    "log_max_intermediate", "log_sum_intermediate", "max_window_kernel", "max_window_stride",
)


def _log2(x: float) -> float:
    return math.log2(max(float(x), 1.0))


def program_features(program: OpProgram) -> np.ndarray:
    """The feature vector of `program` (see FEATURE_NAMES)."""
    count = {k: 0 for k in ("contract", "window", "shift", "pad", "layout", "elementwise", "reduce")}
    reduce_extents, spaces, contract_outs, kernels, strides = [], [], [], [], []
    for node in program.nodes:
        attrs = node.attr
        if node.op == "contract":
            count["contract"] += 1
            operands, out = parse_einsum(attrs["spec"])
            sizes = {a: d for letters, name in zip(operands, node.inputs)
                     for a, d in zip(letters, program.shapes[name])}
            reduce_extents.append(math.prod(d for a, d in sizes.items() if a not in out))
            spaces.append(math.prod(sizes.values()))
            contract_outs.append(math.prod(program.shapes[node.name]))
        elif node.op == "window":
            count["window"] += 1
            kernels.append(math.prod(attrs["kernel"]))
            strides.append(max(attrs["stride"]))
        elif node.op in ("shift", "pad"):
            count[node.op] += 1
        elif node.op in ("reshape", "transpose", "concat", "slice"):
            count["layout"] += 1
        elif node.op in BINARY_OPS or node.op in UNARY_OPS:
            count["elementwise"] += 1
        elif node.op in REDUCE_OPS:
            count["reduce"] += 1
    intermediates = [math.prod(program.shapes[n.name]) for n in program.nodes if n.name != program.output]
    out_elems = math.prod(program.output_shape)
    return np.array([
        _log2(program.flops), _log2(program.bytes), _log2(program.params + 1), _log2(out_elems),
        program.flops / max(program.bytes, 1),
        count["contract"], count["window"], count["shift"], count["pad"], count["layout"],
        count["elementwise"], count["reduce"],
        _log2(max(reduce_extents, default=1)), _log2(min(reduce_extents, default=1)),
        _log2(max(spaces, default=1)), _log2(min(contract_outs, default=1)),
        _log2(max(intermediates, default=1)), _log2(sum(intermediates) + 1),
        max(kernels, default=0), max(strides, default=0),
    ], dtype="float64")
