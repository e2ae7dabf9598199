"""The rewrite rules: each turns one site of a program into a cheaper subgraph of primitives.

A rule has a name, a short abbreviation (used in the names of the nodes it emits), a
legality condition (stated in `legality`, enforced by `problem`, which says what is
wrong), the parameters it takes, a grid of parameter values worth trying on a site, a
`build` that emits the replacement with a `Subgraph`, and an `init` that computes the
replacement's weights from the site's effective weight in closed form (see `factor`).
Every replacement has the site's input and output shape.  A new rule is a `Rule`
subclass passed to `register_rule`; nothing else needs editing.

Families (K = prod(kernel) taps, C → O channels, G groups; on a grouped site the channel
families act block by block, with the same G on every layer they emit):

=================== ===================================================== ==========================
rule                replacement                                           sites
=================== ===================================================== ==========================
low_rank            conv C→G·r (same window, G groups), pointwise G·r→O   conv, linear; on a depthwise
                    (rank r per group)                                    site with multiplier m: a
                                                                          multiplier change m→r
depthwise_separable depthwise conv (m per channel), pointwise C·m→O (G)   conv (not depthwise), K > 1
spatially_separable kh×1 conv C→G·M, then 1×kw conv G·M→O (G groups)      2-d conv, kh, kw > 1; on a
                                                                          depthwise site: k×1 then 1×k
grouped_shuffle     grouped conv (G' ≠ G), channel shuffle, pointwise mix conv (not depthwise), linear
shift_pointwise     per-channel shift to one window tap, pointwise C→O    conv, K > 1; on a depthwise
                    (G groups)                                            site: shift and scale
channel_bottleneck  pointwise C→G·r, conv (G), pointwise G·r→O            conv (not depthwise), K > 1
kernel_shrink       the central size^d box of the window's taps           conv, kernel > size
dilated_taps        every step-th tap (dilation × step, same extent)      conv, step divides k-1
cross_taps          the centre row and column of the window (kh + kw - 1  2-d conv, kh, kw >= 3
                    taps): windows gathered into one contraction
corner_taps         a window on the four corners (dilation k-1) and the   2-d conv, kh, kw odd >= 3
                    centre tap (5 taps), gathered into one contraction
subsample           the contraction at every other output position        conv, >= 2 output positions
                    (stride doubled), each result repeated (nearest)
=================== ===================================================== ==========================

The tap families keep a subset of the window's taps.  Each subset is a union of *lattice
boxes* of taps (``offset + step*t``), and each box is a window of its own (dilated, shifted
start): the window's tap axis split into sub-windows whose taps are concatenated into one
tap axis, an identity of the contraction that the instruction algebra exposes
(`emit.conv_at`, `emit.gathered_conv`).  Their closed-form init keeps the kept taps'
weights, the nearest point of the family.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np

from ..instructions.program import OpProgram
from . import emit, factor
from .match import Site


@dataclass(frozen=True)
class SpaceOptions:
    """Which parameter values the candidate generator tries.

    Attributes:
        ranks: explicit ranks for the rank-like parameters (low_rank's rank,
            channel_bottleneck's width, spatially_separable's middle channels); when None,
            `rank_fractions` of each rule's full rank are used.
        rank_fractions: fractions of the full rank tried when `ranks` is None.
        groups: group counts tried by grouped_shuffle (on a grouped site: factors of its groups).
        multipliers: depthwise multipliers tried by depthwise_separable.
    """

    ranks: tuple[int, ...] | None = None
    rank_fractions: tuple[float, ...] = (0.125, 0.25, 0.5)
    groups: tuple[int, ...] = (2, 4)
    multipliers: tuple[int, ...] = (1,)

    def rank_grid(self, full: int) -> list[int]:
        if self.ranks is not None:
            return sorted({int(r) for r in self.ranks})
        return sorted({max(1, round(f * full)) for f in self.rank_fractions})


class Rule:
    """Base class of the rewrite rules (see the module docstring for the families).

    Subclasses set `name`, `abbrev`, `legality` and `params`, and implement
    `site_problem`, `grid`, `build` and `init` (and `param_problem` when they take
    parameters).  `family` groups rules that are closed under composition (a tap subset
    of a tap subset is a tap subset): the candidate generator never chains two rules of
    one family.
    """

    name: ClassVar[str]
    abbrev: ClassVar[str]            # short tag in the names of emitted nodes, unique among rules
    legality: ClassVar[str]
    params: ClassVar[dict[str, Any]]  # parameter -> default (None: required)
    family: ClassVar[str | None] = None  # defaults to the rule's name

    @property
    def family_name(self) -> str:
        return self.family or self.name

    # --- legality --------------------------------------------------------------------------

    def resolve(self, site: Site, params: Mapping[str, Any]) -> dict[str, Any]:
        """`params` completed with defaults, checked for legality on `site`; raises ValueError."""
        unknown = set(params) - set(self.params)
        if unknown:
            raise ValueError(f"{self.name}: unknown parameter(s) {sorted(unknown)}; "
                             f"it takes {sorted(self.params) or 'no parameters'}")
        full = {**self.params, **params}
        missing = [k for k, v in full.items() if v is None]
        if missing:
            raise ValueError(f"{self.name}: missing parameter(s) {missing}")
        for k, v in full.items():
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"{self.name}: parameter {k} must be an integer, got {v!r}")
        full = {k: int(v) for k, v in full.items()}
        problem = self.problem(site, **full)
        if problem:
            raise ValueError(f"{self.name} cannot rewrite {site.describe()}: {problem} "
                             f"(legal when: {self.legality})")
        return full

    def site_problem(self, site: Site) -> str | None:
        """Why the rule cannot rewrite `site` whatever its parameters, or None."""
        raise NotImplementedError

    def param_problem(self, site: Site, **params: int) -> str | None:
        """Why `params` are illegal on a site the rule can rewrite, or None."""
        return None

    def problem(self, site: Site, **params: int) -> str | None:
        """Why the rule is illegal on `site` with `params`, or None when it is legal."""
        return self.site_problem(site) or self.param_problem(site, **params)

    def is_legal(self, site: Site, **params: int) -> bool:
        try:
            self.resolve(site, params)
            return True
        except ValueError:
            return False

    def grid(self, site: Site, options: SpaceOptions) -> list[dict[str, int]]:
        """The legal parameter values worth trying on `site`."""
        return [p for p in self.proposals(site, options) if self.is_legal(site, **p)]

    def proposals(self, site: Site, options: SpaceOptions) -> list[dict[str, int]]:
        """Parameter values worth trying on `site`, before the legality check."""
        raise NotImplementedError

    # --- structure and weights ---------------------------------------------------------------

    def build(self, b: emit.Subgraph, site: Site, **params: int) -> str:
        """Emit the replacement of `site` into `b`; return the value that replaces the site's result."""
        raise NotImplementedError

    def init(self, w: np.ndarray, site: Site, **params: int) -> dict[str, np.ndarray]:
        """Closed-form weights by role (torch layouts) from the site's effective weight `w`."""
        raise NotImplementedError

    def apply(self, program: OpProgram, site: Site, **params: Any) -> tuple[OpProgram, dict[str, str]]:
        """Rewrite `site` of `program`; returns the new program and {role: new weight name}."""
        full = self.resolve(site, params)
        b = emit.Subgraph(program, site, prefix=f"{site.end}_{self.abbrev}")
        out = self.build(b, site, **full)
        new = emit.splice(program, site, b.build(out), name=f"{program.name}+{self.name}")
        return new, dict(b.roles)


# --- shared legality pieces ------------------------------------------------------------------


def _windowed(site: Site) -> str | None:
    if site.kind != "conv":
        return "the site has no window (a linear map)"
    if site.taps == 1:
        return f"the window has a single tap (kernel {site.kernel}); there is nothing to factor"
    return None


def _not_depthwise(site: Site, why: str) -> str | None:
    if site.kind == "conv" and site.in_channels == site.groups:
        return f"the site is depthwise (one input channel per group): {why}"
    return None


def _rank_range(what: str, value: int, full: int) -> str | None:
    if not 1 <= value <= full:
        return f"{what}={value} is outside 1..{full}"
    return None


def _geometry(site: Site) -> dict[str, Any]:
    return dict(kernel=site.kernel, stride=site.stride, dilation=site.dilation, pads=site.pads)


def _group_sizes(site: Site) -> tuple[int, int]:
    """(C/G, O/G): input and output channels per group."""
    return site.in_channels // site.groups, site.out_channels // site.groups


# --- the channel families ---------------------------------------------------------------------


class LowRank(Rule):
    name = "low_rank"
    abbrev = "lr"
    legality = "1 <= rank <= min(O/G, C/G*K) (rank per group); not a depthwise site with multiplier 1"
    params = {"rank": None}

    @staticmethod
    def full_rank(site: Site) -> int:
        cg, og = _group_sizes(site)
        return min(og, cg * site.taps)

    def site_problem(self, site: Site) -> str | None:
        if site.kind == "conv" and site.in_channels == site.groups and site.out_channels == site.in_channels:
            return "a depthwise convolution with multiplier 1 has rank 1 per channel; there is nothing to factor"
        return None

    def param_problem(self, site: Site, rank: int) -> str | None:
        return _rank_range("rank", rank, self.full_rank(site))

    def proposals(self, site: Site, options: SpaceOptions) -> list[dict[str, int]]:
        return [{"rank": r} for r in options.rank_grid(self.full_rank(site))]

    def build(self, b: emit.Subgraph, site: Site, rank: int) -> str:
        g = site.groups
        if site.kind == "linear":
            y = emit.linear(b, site.source, site.channel_axis, rank, "down")
        else:
            y = emit.conv(b, site.source, g * rank, role="down", groups=g, **_geometry(site))
        return emit.linear(b, y, site.channel_axis, site.out_channels, "up", g)

    def init(self, w: np.ndarray, site: Site, rank: int) -> dict[str, np.ndarray]:
        down, up = factor.per_group(w, site.groups, factor.low_rank, rank)
        return {"down": down, "up": up}


class DepthwiseSeparable(Rule):
    name = "depthwise_separable"
    abbrev = "ds"
    legality = "a convolution with K > 1 taps that is not depthwise; 1 <= multiplier <= K"
    params = {"multiplier": 1}

    def site_problem(self, site: Site) -> str | None:
        return _windowed(site) or _not_depthwise(site, "it is already the depthwise part")

    def param_problem(self, site: Site, multiplier: int) -> str | None:
        return _rank_range("multiplier", multiplier, site.taps)

    def proposals(self, site: Site, options: SpaceOptions) -> list[dict[str, int]]:
        return [{"multiplier": m} for m in options.multipliers]

    def build(self, b: emit.Subgraph, site: Site, multiplier: int) -> str:
        y = emit.depthwise(b, site.source, role="dw", multiplier=multiplier, **_geometry(site))
        return emit.linear(b, y, 1, site.out_channels, "pw", site.groups)

    def init(self, w: np.ndarray, site: Site, multiplier: int) -> dict[str, np.ndarray]:
        dw, pw = factor.per_group(w, site.groups, factor.depthwise_separable, multiplier)
        return {"dw": dw, "pw": pw}


class SpatiallySeparable(Rule):
    name = "spatially_separable"
    abbrev = "ss"
    legality = "a 2-d convolution with kh, kw > 1; 1 <= mid <= min(O/G*kw, C/G*kh) (mid per group)"
    params = {"mid": None}

    @staticmethod
    def full_rank(site: Site) -> int:
        kh, kw = site.kernel
        cg, og = _group_sizes(site)
        return min(og * kw, cg * kh)

    def site_problem(self, site: Site) -> str | None:
        if site.kind != "conv" or site.nsp != 2:
            return f"the site has {site.nsp} spatial axes, the rule needs 2"
        if min(site.kernel) < 2:
            return f"kernel {site.kernel} is already separable (needs both sizes > 1)"
        return None

    def param_problem(self, site: Site, mid: int) -> str | None:
        return _rank_range("mid", mid, self.full_rank(site))

    def proposals(self, site: Site, options: SpaceOptions) -> list[dict[str, int]]:
        if site.kind != "conv" or site.nsp != 2:
            return []
        return [{"mid": r} for r in options.rank_grid(self.full_rank(site))]

    def build(self, b: emit.Subgraph, site: Site, mid: int) -> str:
        (kh, kw), (sh, sw), (dh, dw), (ph, pw) = site.kernel, site.stride, site.dilation, site.pads
        g = site.groups
        y = emit.conv(b, site.source, g * mid, (kh, 1), (sh, 1), (dh, 1), (ph, (0, 0)), role="v", groups=g)
        return emit.conv(b, y, site.out_channels, (1, kw), (1, sw), (1, dw), ((0, 0), pw), role="h", groups=g)

    def init(self, w: np.ndarray, site: Site, mid: int) -> dict[str, np.ndarray]:
        v, h = factor.per_group(w, site.groups, factor.spatially_separable, mid)
        return {"v": v, "h": h}


class GroupedShuffle(Rule):
    name = "grouped_shuffle"
    abbrev = "gs"
    legality = "not depthwise; groups G' >= 2, G' != the site's groups, G' divides both C and O"
    params = {"groups": None}

    def site_problem(self, site: Site) -> str | None:
        return _not_depthwise(site, "more groups than channels are impossible and fewer cost more")

    def param_problem(self, site: Site, groups: int) -> str | None:
        if groups < 2:
            return f"groups={groups} must be at least 2"
        if groups == site.groups:
            return f"groups={groups} is the site's own grouping"
        if site.in_channels % groups or site.out_channels % groups:
            return f"groups={groups} does not divide C={site.in_channels} and O={site.out_channels}"
        return None

    def proposals(self, site: Site, options: SpaceOptions) -> list[dict[str, int]]:
        if site.groups == 1:
            return [{"groups": g} for g in options.groups]
        # A grouped site: finer groupings (the factors of `options.groups`), and half as many
        # groups (more work per group, cheap again when composed with low_rank per group).
        finer = [{"groups": site.groups * f} for f in options.groups]
        return finer + ([{"groups": site.groups // 2}] if site.groups % 2 == 0 else [])

    def build(self, b: emit.Subgraph, site: Site, groups: int) -> str:
        axis = site.channel_axis
        if site.kind == "linear":
            y = emit.linear(b, site.source, axis, site.out_channels, "grouped", groups)
        else:
            y = emit.conv(b, site.source, site.out_channels, role="grouped", groups=groups, **_geometry(site))
        y = emit.channel_shuffle(b, y, axis, groups)
        return emit.linear(b, y, axis, site.out_channels, "mix", groups)

    def init(self, w: np.ndarray, site: Site, groups: int) -> dict[str, np.ndarray]:
        grouped, mix = factor.grouped_shuffle(factor.block_diagonal(w, site.groups), groups)
        return {"grouped": grouped, "mix": mix}


class ShiftPointwise(Rule):
    name = "shift_pointwise"
    abbrev = "sh"
    legality = "a convolution with K > 1 taps"
    params: dict[str, Any] = {}

    def site_problem(self, site: Site) -> str | None:
        return _windowed(site)

    def proposals(self, site: Site, options: SpaceOptions) -> list[dict[str, int]]:
        return [{}]

    def build(self, b: emit.Subgraph, site: Site) -> str:
        taps = factor.shift_taps(site.in_channels, site.kernel)
        y = emit.shift_window(b, site.source, taps, **_geometry(site))
        return emit.linear(b, y, 1, site.out_channels, "pw", site.groups)

    def init(self, w: np.ndarray, site: Site) -> dict[str, np.ndarray]:
        taps = factor.shift_taps(site.in_channels, site.kernel)
        cg, og = _group_sizes(site)
        blocks = [factor.shift_pointwise(w[g * og:(g + 1) * og], taps[g * cg:(g + 1) * cg])
                  for g in range(site.groups)]
        return {"pw": np.concatenate(blocks, axis=0)}


class ChannelBottleneck(Rule):
    name = "channel_bottleneck"
    abbrev = "cb"
    legality = "a convolution with K > 1 taps that is not depthwise; 1 <= rank <= min(C/G, O/G)"
    params = {"rank": None}

    @staticmethod
    def full_rank(site: Site) -> int:
        return min(_group_sizes(site))

    def site_problem(self, site: Site) -> str | None:
        if site.kind == "linear":
            return "a linear site has no window to operate on; its bottleneck is low_rank"
        return _windowed(site) or _not_depthwise(site, "there are no channels to bottleneck")

    def param_problem(self, site: Site, rank: int) -> str | None:
        return _rank_range("rank", rank, self.full_rank(site))

    def proposals(self, site: Site, options: SpaceOptions) -> list[dict[str, int]]:
        return [{"rank": r} for r in options.rank_grid(self.full_rank(site))]

    def build(self, b: emit.Subgraph, site: Site, rank: int) -> str:
        g = site.groups
        y = emit.linear(b, site.source, 1, g * rank, "reduce", g)
        y = emit.conv(b, y, g * rank, role="core", groups=g, **_geometry(site))
        return emit.linear(b, y, 1, site.out_channels, "expand", g)

    def init(self, w: np.ndarray, site: Site, rank: int) -> dict[str, np.ndarray]:
        reduce, core, expand = factor.per_group(w, site.groups, factor.tucker2, rank)
        return {"reduce": reduce, "core": core, "expand": expand}


# --- the tap families: a subset of the window's taps as a sum of lattice-box windows ------------

Box = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # (offset, count, step) per spatial axis


def cover_1d(taps: list[int]) -> list[tuple[int, int, int]]:
    """Disjoint (offset, count, step) progressions covering sorted `taps`: one if they form an
    arithmetic progression, else their maximal runs of consecutive taps."""
    if len(taps) == 1:
        return [(taps[0], 1, 1)]
    steps = {b - a for a, b in zip(taps, taps[1:])}
    if len(steps) == 1:
        return [(taps[0], len(taps), steps.pop())]
    runs, begin = [], 0
    for i in range(1, len(taps) + 1):
        if i == len(taps) or taps[i] != taps[i - 1] + 1:
            runs.append((taps[begin], i - begin, 1))
            begin = i
    return runs


class TapSubset(Rule):
    """Keep a subset of the window's taps, written as a sum of lattice-box windows.

    Subclasses give `boxes`: disjoint lattice boxes of taps.  Tap ``offset + step*t`` of a
    window with dilation d and low padding p reads x at ``o*stride + (offset + step*t)*d - p``,
    so each box is a window with kernel `count`, dilation ``step*d``, starting at
    ``offset*d - p`` (`emit.conv_at`).  One box is a convolution site again (with the site's
    groups, so the channel families compose with it); several boxes are gathered into one tap
    axis and contracted once (`emit.gathered_conv`): the sum of their convolutions in a
    single reduction.
    """

    family = "taps"

    def boxes(self, site: Site, **params: int) -> list[Box]:
        raise NotImplementedError

    def site_problem(self, site: Site) -> str | None:
        return _windowed(site)

    def _reach_problem(self, site: Site, boxes: list[Box]) -> str | None:
        for offset, count, step in boxes:
            for a, (off, n, st) in enumerate(zip(offset, count, step)):
                d, s, size = site.dilation[a], site.stride[a], site.source_shape[2 + a]
                reads = {p * s + (off + t * st) * d - site.pads[a][0]
                         for p in range(site.output_shape[2 + a]) for t in range(n)}
                if not any(0 <= r < size for r in reads):
                    return f"the taps from {off} on axis {a} read only padding"
        return None

    def kept_taps(self, site: Site, **params: int) -> int:
        return sum(math.prod(count) for _, count, _ in self.boxes(site, **params))

    def _geometry(self, site: Site, box: Box) -> tuple:
        offset, count, step = box
        start = [o * d - lo for o, d, (lo, _) in zip(offset, site.dilation, site.pads)]
        return count, [s * d for s, d in zip(step, site.dilation)], start

    def build(self, b: emit.Subgraph, site: Site, **params: int) -> str:
        boxes = self.boxes(site, **params)
        if len(boxes) == 1:  # a convolution site again, which the channel families can rewrite
            kernel, dilation, start = self._geometry(site, boxes[0])
            return emit.conv_at(b, site.source, site.out_channels, kernel, site.stride, dilation, start,
                                site.output_shape[2:], role="taps", groups=site.groups)
        return emit.gathered_conv(b, site.source, site.out_channels, [self._geometry(site, x) for x in boxes],
                                  site.stride, site.output_shape[2:], role="taps", groups=site.groups)

    def init(self, w: np.ndarray, site: Site, **params: int) -> dict[str, np.ndarray]:
        boxes = self.boxes(site, **params)
        if len(boxes) == 1:
            return {"taps": factor.tap_box(w, *boxes[0])}
        o, cg = w.shape[:2]
        return {"taps": np.concatenate([factor.tap_box(w, *x).reshape(o, cg, -1) for x in boxes], axis=-1)}


class KernelShrink(TapSubset):
    name = "kernel_shrink"
    abbrev = "ks"
    legality = "a convolution with K > 1 taps; 1 <= size < the largest kernel size"
    params = {"size": None}

    def param_problem(self, site: Site, size: int) -> str | None:
        if not 1 <= size < max(site.kernel):
            return f"size={size} is outside 1..{max(site.kernel) - 1}"
        return self._reach_problem(site, self.boxes(site, size))

    def proposals(self, site: Site, options: SpaceOptions) -> list[dict[str, int]]:
        return [{"size": s} for s in range(1, max(site.kernel) if site.kind == "conv" else 1)]

    def boxes(self, site: Site, size: int) -> list[Box]:
        count = tuple(min(size, k) for k in site.kernel)
        offset = tuple((k - n) // 2 for k, n in zip(site.kernel, count))
        return [(offset, count, (1,) * site.nsp)]


class DilatedTaps(TapSubset):
    name = "dilated_taps"
    abbrev = "dt"
    legality = "a convolution with K > 1 taps; step >= 2 divides k-1 on some axis (the others keep all taps)"
    params = {"step": None}

    def param_problem(self, site: Site, step: int) -> str | None:
        if step < 2 or not any(k > 1 and (k - 1) % step == 0 for k in site.kernel):
            return f"step={step} divides k-1 of no axis of kernel {site.kernel} (or is below 2)"
        return self._reach_problem(site, self.boxes(site, step))

    def proposals(self, site: Site, options: SpaceOptions) -> list[dict[str, int]]:
        top = max(site.kernel) if site.kind == "conv" else 1
        return [{"step": s} for s in range(2, top)]

    def boxes(self, site: Site, step: int) -> list[Box]:
        fits = [k > 1 and (k - 1) % step == 0 for k in site.kernel]
        count = tuple((k - 1) // step + 1 if f else k for k, f in zip(site.kernel, fits))
        return [((0,) * site.nsp, count, tuple(step if f else 1 for f in fits))]


class CrossTaps(TapSubset):
    name = "cross_taps"
    abbrev = "ct"
    legality = "a 2-d convolution with kh, kw >= 3"
    params: dict[str, Any] = {}

    def site_problem(self, site: Site) -> str | None:
        if site.kind != "conv" or site.nsp != 2:
            return f"the site has {site.nsp} spatial axes, the rule needs 2"
        if min(site.kernel) < 3:
            return f"kernel {site.kernel} has no centre row and column to keep (needs both sizes >= 3)"
        return self._reach_problem(site, self.boxes(site))

    def proposals(self, site: Site, options: SpaceOptions) -> list[dict[str, int]]:
        return [{}]

    def boxes(self, site: Site) -> list[Box]:
        kh, kw = site.kernel
        column = ((0, kw // 2), (kh, 1), (1, 1))
        row = [((kh // 2, off), (1, n), (1, st)) for off, n, st in cover_1d([j for j in range(kw) if j != kw // 2])]
        return [column, *row]


class CornerTaps(TapSubset):
    name = "corner_taps"
    abbrev = "xt"
    legality = "a 2-d convolution with odd kh, kw >= 3"
    params: dict[str, Any] = {}

    def site_problem(self, site: Site) -> str | None:
        if site.kind != "conv" or site.nsp != 2:
            return f"the site has {site.nsp} spatial axes, the rule needs 2"
        if min(site.kernel) < 3 or any(k % 2 == 0 for k in site.kernel):
            return f"kernel {site.kernel} has no centre tap apart from its corners (needs odd sizes >= 3)"
        return self._reach_problem(site, self.boxes(site))

    def proposals(self, site: Site, options: SpaceOptions) -> list[dict[str, int]]:
        return [{}]

    def boxes(self, site: Site) -> list[Box]:
        kh, kw = site.kernel
        return [((0, 0), (2, 2), (kh - 1, kw - 1)), ((kh // 2, kw // 2), (1, 1), (1, 1))]


# --- output subsampling: a strided contraction ---------------------------------------------------


class Subsample(Rule):
    name = "subsample"
    abbrev = "sub"
    legality = "a convolution with at least 2 output positions on every spatial axis"
    params: dict[str, Any] = {}

    def site_problem(self, site: Site) -> str | None:
        if site.kind != "conv":
            return "the site has no window (a linear map)"
        positions = site.output_shape[2:]
        if min(positions) < 2:
            return f"the output has {positions} positions; nothing to subsample"
        return None

    def proposals(self, site: Site, options: SpaceOptions) -> list[dict[str, int]]:
        return [{}]

    def build(self, b: emit.Subgraph, site: Site) -> str:
        """The contraction at every other output position (stride doubled), each result repeated twice."""
        y = emit.conv(b, site.source, site.out_channels, site.kernel, [2 * s for s in site.stride], site.dilation,
                      site.pads, role="sub", groups=site.groups)
        for a, size in enumerate(site.output_shape[2:]):
            y = emit.repeat(b, y, 2 + a, size)
        return y

    def init(self, w: np.ndarray, site: Site) -> dict[str, np.ndarray]:
        return {"sub": w}  # the same weights, evaluated at half the positions per axis


# --- registration -------------------------------------------------------------------------------

#: Every rule by name, in the order candidates are generated.
RULES: dict[str, Rule] = {}


def register_rule(rule: Rule, *, replace: bool = False) -> Rule:
    """Make `rule` known to `apply` and `candidates` (appended to the generation order).

    Checks that it has a name, an abbreviation and a legality statement, and that neither
    the name nor the abbreviation is taken (unless `replace`, which replaces the rule of
    that name).
    """
    for attr in ("name", "abbrev", "legality", "params"):
        if not hasattr(rule, attr):
            raise ValueError(f"rule {type(rule).__name__} has no '{attr}'; set it as a class attribute")
    if not rule.name.isidentifier() or not rule.abbrev.isidentifier():
        raise ValueError(f"rule name {rule.name!r} and abbreviation {rule.abbrev!r} must be identifiers")
    if rule.name in RULES and not replace:
        raise ValueError(f"a rule named {rule.name!r} is already registered; pass replace=True to replace it")
    clash = [r.name for r in RULES.values() if r.abbrev == rule.abbrev and r.name != rule.name]
    if clash:
        raise ValueError(f"abbreviation {rule.abbrev!r} of rule {rule.name!r} is taken by {clash[0]!r}")
    RULES[rule.name] = rule
    return rule


def unregister_rule(name: str) -> Rule:
    """Remove the rule called `name` (e.g. one a test registered); returns it."""
    rule = get_rule(name)
    del RULES[name]
    return rule


for _rule in (DepthwiseSeparable(), SpatiallySeparable(), LowRank(), GroupedShuffle(), ShiftPointwise(),
              ChannelBottleneck(), KernelShrink(), DilatedTaps(), CrossTaps(), CornerTaps(), Subsample()):
    register_rule(_rule)


def get_rule(name: str) -> Rule:
    """The rule called `name`; ValueError naming the known rules otherwise."""
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"unknown rewrite rule {name!r}; known rules: {', '.join(RULES)}") from None
