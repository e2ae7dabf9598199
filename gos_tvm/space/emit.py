"""Building replacement subgraphs from primitives and splicing them into a program.

`Subgraph` is a `ProgramBuilder` whose only input is a site's source value and whose
node and weight names never collide with the host program's.  The emitters below write
the standard operator shapes (convolution, depthwise convolution, pointwise/linear map,
channel shuffle, per-channel shift) in exactly the forms that `match.match_site`
recognises, so every contraction a rule emits is itself a site that another rule can
rewrite.  `splice` replaces a site by a subgraph and drops whatever became dead.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from ..instructions.program import Node, OpProgram, ProgramBuilder, window_out_size
from .match import Site

_POS = "hwdtuv"   # window positions (as in the operator library)
_KER = "ijklmp"   # window offsets
_FREE = "abdefqrsxyz"  # letters for the non-channel axes of a linear map (never c, g, o, n)


class Subgraph(ProgramBuilder):
    """A builder for the replacement of one site inside `program`.

    Its input is the site's source value under its own name.  New weights are named
    ``<site weight>_<role>`` (made unique), so a weight's name says where it came from,
    e.g. ``weight_pw`` or, after a second rewrite, ``weight_pw_v``.
    """

    def __init__(self, program: OpProgram, site: Site, prefix: str):
        super().__init__(f"{program.name}:{prefix}")
        self.site = site
        self._taken = set(program.shapes)
        self._prefix = prefix
        self.roles: dict[str, str] = {}
        self.input(site.source, site.source_shape)

    def _fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self._taken:
            name, i = f"{base}{i}", i + 1
        self._taken.add(name)
        return name

    def emit(self, op: str, *inputs: str, name: str | None = None, **attrs: Any) -> str:
        return super().emit(op, *inputs, name=name or self._fresh(f"{self._prefix}_{op}"), **attrs)

    def role_weight(self, role: str, shape: Sequence[int]) -> str:
        """Declare a new weight for `role` (e.g. 'dw', 'pw', 'u', 'v')."""
        name = self._fresh(f"{self.site.weight}_{role}")
        self.roles[role] = name
        return self.weight(name, shape)


# --- emitters ----------------------------------------------------------------------------


def conv(b: Subgraph, x: str, out_channels: int, kernel: Sequence[int], stride: Sequence[int],
         dilation: Sequence[int], pads: Sequence[Sequence[int]], role: str, groups: int = 1) -> str:
    """Convolution of x = (N, C, *S) with a new weight (O, C/groups, *kernel), as the library writes it.

    A single-tap window without stride or padding is emitted as a pointwise map instead,
    so that it is matched as a linear site.
    """
    xs = b.shape(x)
    n, c, nsp = xs[0], xs[1], len(xs) - 2
    kernel, stride, dilation = tuple(kernel), tuple(stride), tuple(dilation)
    if all(k == 1 for k in kernel) and all(s == 1 for s in stride) and not any(lo or hi for lo, hi in pads):
        return linear(b, x, 1, out_channels, role, groups)
    if groups == c and groups > 1:
        # One input channel per group: the depthwise form keeps the channel axis and needs no
        # group reshapes (no div/mod in the kernel's index arithmetic).
        return depthwise(b, x, kernel, stride, dilation, pads, role, multiplier=out_channels // c)
    w = b.role_weight(role, (out_channels, c // groups, *kernel))
    if any(lo or hi for lo, hi in pads):
        x = b.pad(x, pads=((0, 0), (0, 0), *pads))
    win = b.window(x, axes=tuple(range(2, 2 + nsp)), kernel=kernel, stride=stride, dilation=dilation)
    pos, ker = _POS[:nsp], _KER[:nsp]
    if groups == 1:
        return b.contract(win, w, spec=f"nc{pos}{ker},oc{ker}->no{pos}")
    out_sp = b.shape(win)[2:2 + nsp]
    g, cg, og = groups, c // groups, out_channels // groups
    wg = b.reshape(win, shape=(n, g, cg, *out_sp, *kernel))
    ww = b.reshape(w, shape=(g, og, cg, *kernel))
    y = b.contract(wg, ww, spec=f"ngc{pos}{ker},goc{ker}->ngo{pos}")
    return b.reshape(y, shape=(n, out_channels, *out_sp))


def _reach(b: Subgraph, x: str, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
           start: Sequence[int], positions: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """(x sliced where the windows stay inside it, the zero padding they need) so that windows
    starting at `start` (negative: in the padding) give exactly `positions` windows per axis."""
    xs = b.shape(x)
    pads = []
    for a, (size, k, s, d, st, p) in enumerate(zip(xs[2:], kernel, stride, dilation, start, positions)):
        need = (p - 1) * s + (k - 1) * d + 1          # span of x (padded) the windows read
        lo, begin = max(0, -st), max(0, st)
        end = min(size, begin + need - lo)
        if end <= begin:
            raise ValueError(f"a window starting at {st} with span {need} reads only padding on axis {a}")
        if begin > 0 or end < size:
            x = b.slice(x, axis=2 + a, begin=begin, end=end)
        pads.append((lo, need - lo - (end - begin)))
    return x, pads


def conv_at(b: Subgraph, x: str, out_channels: int, kernel: Sequence[int], stride: Sequence[int],
            dilation: Sequence[int], start: Sequence[int], positions: Sequence[int], role: str,
            groups: int = 1) -> str:
    """Convolution whose first window starts at `start` of x's spatial axes (negative: in the
    zero padding) and that has exactly `positions` windows per axis.

    This is how a subset of a window's taps becomes its own convolution: the taps
    ``offset + step*t`` of a window with dilation d read x from ``offset*d - pad_lo`` with
    dilation ``step*d``.  The reach is made up by zero padding where it leaves x and by a
    slice where it stays inside x.
    """
    x, pads = _reach(b, x, kernel, stride, dilation, start, positions)
    return conv(b, x, out_channels, kernel, stride, dilation, pads, role, groups)


def _window_at(b: Subgraph, x: str, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
               start: Sequence[int], positions: Sequence[int]) -> str:
    """The windows of x = (N, C, *S) whose first one starts at `start` (see `conv_at`)."""
    x, pads = _reach(b, x, kernel, stride, dilation, start, positions)
    if any(lo or hi for lo, hi in pads):
        x = b.pad(x, pads=((0, 0), (0, 0), *pads))
    return b.window(x, axes=tuple(range(2, 2 + len(pads))), kernel=tuple(kernel), stride=tuple(stride),
                    dilation=tuple(dilation))


def gathered_conv(b: Subgraph, x: str, out_channels: int, boxes: Sequence[tuple], stride: Sequence[int],
                  positions: Sequence[int], role: str, groups: int = 1) -> str:
    """One convolution over the union of several windows of x: their taps are concatenated
    along one tap axis and contracted with one weight (O, C/groups, total taps).

    `boxes` are (kernel, dilation, start) per window (see `conv_at`).  A sum of convolutions
    over the same input is this single contraction: one reduction loop, no intermediate
    results and no additions (a sum of separate contraction blocks also trips MetaSchedule's
    consumer fusion, which moves the sum under one producer's loops and fails).
    """
    xs = b.shape(x)
    n, c, nsp = xs[0], xs[1], len(xs) - 2
    parts = []
    for kernel, dilation, start in boxes:
        win = _window_at(b, x, kernel, stride, dilation, start, positions)
        parts.append(b.reshape(win, shape=(n, c, *positions, math.prod(kernel))))
    taps = sum(b.shape(p_)[-1] for p_ in parts)
    data = b.concat(*parts, axis=-1) if len(parts) > 1 else parts[0]
    w = b.role_weight(role, (out_channels, c // groups, taps))
    pos = _POS[:nsp]
    if groups == 1:
        return b.contract(data, w, spec=f"nc{pos}t,oct->no{pos}")
    if groups == c:
        m = out_channels // c
        y = b.contract(data, b.reshape(w, shape=(c, m, taps)), spec=f"nc{pos}t,cmt->ncm{pos}")
        return b.reshape(y, shape=(n, out_channels, *positions))
    g, cg, og = groups, c // groups, out_channels // groups
    dg = b.reshape(data, shape=(n, g, cg, *positions, taps))
    y = b.contract(dg, b.reshape(w, shape=(g, og, cg, taps)), spec=f"ngc{pos}t,goct->ngo{pos}")
    return b.reshape(y, shape=(n, out_channels, *positions))


def depthwise(b: Subgraph, x: str, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
              pads: Sequence[Sequence[int]], role: str, multiplier: int = 1) -> str:
    """Depthwise convolution of x = (N, C, *S): weight (C*m, 1, *kernel), output (N, C*m, *P)."""
    xs = b.shape(x)
    n, c, nsp = xs[0], xs[1], len(xs) - 2
    w = b.role_weight(role, (c * multiplier, 1, *kernel))
    if any(lo or hi for lo, hi in pads):
        x = b.pad(x, pads=((0, 0), (0, 0), *pads))
    win = b.window(x, axes=tuple(range(2, 2 + nsp)), kernel=tuple(kernel), stride=tuple(stride),
                   dilation=tuple(dilation))
    out_sp = b.shape(win)[2:2 + nsp]
    pos, ker = _POS[:nsp], _KER[:nsp]
    wm = b.reshape(w, shape=(c, multiplier, *kernel))
    y = b.contract(win, wm, spec=f"nc{pos}{ker},cm{ker}->ncm{pos}")
    return b.reshape(y, shape=(n, c * multiplier, *out_sp))


def _free_letters(ndim: int, axis: int) -> list[str]:
    if ndim > len(_FREE) + 1:
        raise ValueError(f"linear maps over {ndim}-d values are not supported (at most {len(_FREE) + 1} axes)")
    letters = list(_FREE[:ndim])
    letters[axis] = "c"
    return letters


def linear(b: Subgraph, x: str, axis: int, out_channels: int, role: str, groups: int = 1) -> str:
    """Map axis `axis` of x from C to `out_channels` with a new weight (O, C/groups), in place.

    Grouped maps split the axis into (groups, C/groups) and merge (groups, O/groups) back.
    """
    xs = b.shape(x)
    axis %= len(xs)
    c = xs[axis]
    w = b.role_weight(role, (out_channels, c // groups))
    d = _free_letters(len(xs), axis)
    if groups == 1:
        return b.contract(x, w, spec=f"{''.join(d)},oc->{''.join(d[:axis] + ['o'] + d[axis + 1:])}")
    g, cg, og = groups, c // groups, out_channels // groups
    xg = b.reshape(x, shape=(*xs[:axis], g, cg, *xs[axis + 1:]))
    wg = b.reshape(w, shape=(g, og, cg))
    din = "".join(d[:axis] + ["g", "c"] + d[axis + 1:])
    dout = "".join(d[:axis] + ["g", "o"] + d[axis + 1:])
    y = b.contract(xg, wg, spec=f"{din},goc->{dout}")
    return b.reshape(y, shape=(*xs[:axis], out_channels, *xs[axis + 1:]))


def channel_shuffle(b: Subgraph, x: str, axis: int, groups: int) -> str:
    """ShuffleNet's channel shuffle: channel g*(C/G) + j moves to j*G + g."""
    xs = b.shape(x)
    axis %= len(xs)
    c = xs[axis]
    y = b.reshape(x, shape=(*xs[:axis], groups, c // groups, *xs[axis + 1:]))
    perm = list(range(len(xs) + 1))
    perm[axis], perm[axis + 1] = axis + 1, axis
    y = b.transpose(y, perm=tuple(perm))
    return b.reshape(y, shape=xs)


def repeat(b: Subgraph, x: str, axis: int, size: int) -> str:
    """Nearest-neighbour upsampling by 2 along `axis`, cut to `size`: y[i] = x[i // 2].

    Index instructions only (a unit axis, a concatenation of two copies, a merge), so the
    TE lowering folds it into whatever reads it.
    """
    xs = b.shape(x)
    axis %= len(xs)
    y = b.reshape(x, shape=(*xs[:axis + 1], 1, *xs[axis + 1:]))
    y = b.concat(y, y, axis=axis + 1)
    y = b.reshape(y, shape=(*xs[:axis], 2 * xs[axis], *xs[axis + 1:]))
    if 2 * xs[axis] != size:
        y = b.slice(y, axis=axis, begin=0, end=size)
    return y


def shift_window(b: Subgraph, x: str, channel_taps: Sequence[Sequence[int]], kernel: Sequence[int],
                 stride: Sequence[int], dilation: Sequence[int], pads: Sequence[Sequence[int]]) -> str:
    """Channel c of x = (N, C, *S) reads the single window tap `channel_taps[c]` of every window.

    ``y[n, c, p] = xpad[n, c, p*stride + tap_c*dilation]``: a per-channel shift by
    ``tap*dilation - pad_lo`` followed by a strided slice picking the window positions.
    When the window positions lie inside x the padding is left to the shift's own zero
    fill; otherwise x is padded first.
    """
    xs = b.shape(x)
    nsp = len(xs) - 2
    spatial = list(range(2, 2 + nsp))
    padded = [xs[a] + lo + hi for a, (lo, hi) in zip(spatial, pads)]
    positions = [window_out_size(sz, k, s, d) for sz, k, s, d in zip(padded, kernel, stride, dilation)]
    inside = all((p - 1) * s <= xs[a] - 1 for a, p, s in zip(spatial, positions, stride))
    if inside:
        lo = [lo for lo, _ in pads]
    else:
        x = b.pad(x, pads=((0, 0), (0, 0), *pads))
        lo = [0] * nsp
    offsets = tuple(tuple(t * d - l for t, d, l in zip(tap, dilation, lo)) for tap in channel_taps)
    y = b.shift(x, channel_axis=1, axes=tuple(spatial), offsets=offsets)
    size = b.shape(y)
    for a, p, s in zip(spatial, positions, stride):
        if s != 1 or p != size[a]:
            y = b.slice(y, axis=a, begin=0, end=(p - 1) * s + 1, stride=s)
    return y


# --- splicing ----------------------------------------------------------------------------


def splice(program: OpProgram, site: Site, sub: OpProgram, name: str | None = None) -> OpProgram:
    """Replace `site` in `program` by `sub` (built by a `Subgraph` for that site).

    The subgraph's result takes the name of the site's result, so every consumer (a bias
    add, a later operator) is untouched.  Nodes and weights that no longer reach the
    output are dropped; program inputs are all kept, so the signature never changes.
    """
    if sub.shapes[sub.output] != site.output_shape:
        raise ValueError(f"replacement of {site.describe()} has shape {sub.shapes[sub.output]}, "
                         f"the site needs {site.output_shape}")
    if sub.output not in {n.name for n in sub.nodes}:
        raise ValueError("a replacement must compute its result with at least one instruction")
    new_nodes = [Node(site.end, n.op, n.inputs, n.attrs) if n.name == sub.output else n for n in sub.nodes]
    pos = next(i for i, n in enumerate(program.nodes) if n.name == site.end)
    nodes = list(program.nodes[:pos]) + new_nodes + list(program.nodes[pos + 1:])
    live = {program.output}
    for n in reversed(nodes):
        if n.name in live:
            live.update(n.inputs)
    nodes = [n for n in nodes if n.name in live]
    weights = {k: v for k, v in {**program.weights, **sub.weights}.items() if k in live}
    return OpProgram(name or program.name, program.inputs, weights, nodes, program.output)


def subprogram(program: OpProgram, output: str) -> OpProgram:
    """The part of `program` that computes value `output` (unused weights and nodes dropped)."""
    live = {output}
    for n in reversed(program.nodes):
        if n.name in live:
            live.update(n.inputs)
    nodes = [n for n in program.nodes if n.name in live]
    weights = {k: v for k, v in program.weights.items() if k in live}
    return OpProgram(f"{program.name}[{output}]", program.inputs, weights, nodes, output)

