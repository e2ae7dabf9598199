"""Building replacement subgraphs from primitives and splicing them into a program.

`Subgraph` is a `ProgramBuilder` whose only input is a site's source value and whose
node and weight names never collide with the host program's.  The emitters below write
the standard operator shapes (convolution, depthwise convolution, pointwise/linear map,
channel shuffle, per-channel shift) in exactly the forms that `match.match_site`
recognises, so every contraction a rule emits is itself a site that another rule can
rewrite.  `splice` replaces a site by a subgraph and drops whatever became dead.
"""
from __future__ import annotations

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

