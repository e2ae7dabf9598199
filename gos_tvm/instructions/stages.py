"""A program cut into stages: one program per arithmetic instruction.

A replacement with several contractions (a low-rank pair, a channel bottleneck around a
separable convolution) lowers to one PrimFunc with several blocks; MetaSchedule then samples
one joint schedule for all of them, and at a small per-task budget the best of 16 joint samples
is a poor schedule for at least one block.  Cut into stages, each contraction is a task of its
own with its own budget, tuned like any convolution, and Relax's FuseOps fuses the point-wise
stages into the contraction before them, as it fuses a bias and a ReLU.

Stage k computes arithmetic instruction k (a contraction, a reduction or a point-wise op) from
the values it reads through index instructions (pad, window, reshape, ...): those are copied
into the stage, so no stage materialises a pure data movement; a point-wise instruction that
reads only the stage before it (and weights) is that stage's epilogue, as a bias add is a
convolution's; the program's output, when it is
an index instruction, is computed by the stage of the arithmetic value it reads (or by a stage
of its own if it reads several).
"""
from __future__ import annotations

from .lowering_te import INDEX_OPS
from .program import BINARY_OPS, UNARY_OPS, Node, OpProgram

#: Arithmetic instructions that act point by point (an epilogue of the stage before them).
POINTWISE_OPS = frozenset(BINARY_OPS) | frozenset(UNARY_OPS)


def _prologue(program: OpProgram, roots: list[str], materialised: set[str]) -> tuple[list[Node], list[str]]:
    """The index nodes that `roots` read (transitively) down to materialised values, in program
    order, and those materialised values, in first-use order."""
    by_name = {n.name: n for n in program.nodes}
    seen, reached, stack = set(), [], list(reversed(roots))
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in materialised:
            reached.append(name)
        else:
            stack.extend(reversed(by_name[name].inputs))
    nodes = [n for n in program.nodes if n.name in seen and n.name not in materialised]
    return nodes, reached


def stages(program: OpProgram) -> list[OpProgram]:
    """`program` as a chain of stage programs (see the module docstring): stage k's inputs are
    the program's input and earlier stages' outputs it reads, by name; its weights are the
    program's weights it reads.  A program with at most one arithmetic instruction is its own
    only stage.  Composing the stages computes `program` exactly (same instructions)."""
    arithmetic = [n for n in program.nodes if n.op not in INDEX_OPS]
    if len(arithmetic) <= 1:
        return [program]
    merged = _merging_reshapes(program, arithmetic)
    materialised = set(program.inputs) | set(program.weights) | {merged.get(n.name, n.name) for n in arithmetic}
    out: list[OpProgram] = []
    tail_reads: list[str] = []
    if program.output not in materialised:
        _, tail_reads = _prologue(program, [program.output], materialised)
    readers = {name: sum(name in n.inputs for n in program.nodes) for name in materialised}
    for k, node in enumerate(arithmetic):
        nodes, reached = _prologue(program, list(node.inputs), materialised)
        if out and node.op in POINTWISE_OPS and out[-1].output in node.inputs \
                and readers.get(out[-1].output, 0) == 1 \
                and all(v == out[-1].output or v in program.weights for v in reached):
            # A bias or scale on the previous stage's value only: its epilogue, in its kernel (the
            # way a convolution and its bias add are one kernel that MetaSchedule tiles together).
            last = out.pop()
            nodes = [*last.nodes, *nodes]  # its prologue reads weights only (a reshaped bias)
            reached = [*last.inputs, *last.weights, *(v for v in reached if v in program.weights)]
        output = node.name
        nodes = nodes + [node]
        if node.name in merged:  # a grouped contraction ends with the reshape back to a feature map
            output = merged[node.name]
            nodes.append(next(n for n in program.nodes if n.name == output))
        if tail_reads == [node.name]:  # the output's index chain reads only this value: it ends this stage
            tail, _ = _prologue(program, [program.output], materialised)
            nodes += tail
            output = program.output
        if not any(v in program.inputs or v in materialised - set(program.weights) for v in reached):
            return [program]  # a stage of weights only (weight algebra): not worth a kernel of its own
        out.append(_stage(program, f"{program.name}.s{k}", nodes, reached, output))
    if len(tail_reads) > 1:  # e.g. a concat of two branches: a data-movement stage of its own
        nodes, reached = _prologue(program, [program.output], materialised)
        out.append(_stage(program, f"{program.name}.s{len(arithmetic)}", nodes, reached, program.output))
    return _feature_map_boundaries(program, out)


def _merging_reshapes(program: OpProgram, arithmetic: list[Node]) -> dict[str, str]:
    """{arithmetic value: the reshape that is its only reader} where the value is not a feature map
    and the reshape makes one (a grouped convolution's (N, G, O/G, H, W) merged to (N, O, H, W)):
    the stage ends with the feature map, which is what the convolution the stage is computes."""
    rank = len(next(iter(program.inputs.values())))
    out: dict[str, str] = {}
    if rank < 3:
        return out  # a dense layer's (N, G, O/G) is no convolution: cutting there only adds a kernel launch
    for node in arithmetic:
        readers = [n for n in program.nodes if node.name in n.inputs]
        if len(program.shapes[node.name]) != rank and node.name != program.output and len(readers) == 1 \
                and readers[0].op == "reshape" and len(program.shapes[readers[0].name]) == rank:
            out[node.name] = readers[0].name
    return out


def _feature_map_boundaries(program: OpProgram, parts: list[OpProgram]) -> list[OpProgram]:
    """`parts` with each stage whose output is not a feature map (a value of the input's rank, e.g.
    a grouped convolution's (N, G, C/G, H, W)) merged into the stage after it: the model's layout
    passes can turn a feature-map kernel channels-last, not one over a 5-d intermediate.  A
    program whose such value feeds more than the next stage stays whole."""
    rank = len(next(iter(program.inputs.values())))
    merged = [parts[0]]
    for part in parts[1:]:
        prev = merged[-1]
        if len(prev.output_shape) == rank:
            merged.append(part)
            continue
        if prev.output not in part.inputs or any(prev.output in p.inputs for p in parts if p is not part):
            return [program]
        nodes = [*prev.nodes, *(n for n in part.nodes if n not in prev.nodes)]
        reached = [*prev.inputs, *prev.weights, *(v for v in (*part.inputs, *part.weights) if v != prev.output)]
        merged[-1] = _stage(program, part.name, nodes, reached, part.output)
    return merged


def _stage(program: OpProgram, name: str, nodes: list[Node], reached: list[str], output: str) -> OpProgram:
    shape = program.shapes
    inputs = {v: shape[v] for v in reached if v not in program.weights}
    weights = {v: shape[v] for v in reached if v in program.weights}
    return OpProgram(name, inputs, weights, nodes, output)


__all__ = ["stages"]
