"""The rewrite rules: each turns one site of a program into a cheaper subgraph of primitives.

A rule has a name, a legality condition (stated in `legality`, enforced by `check`, which
raises `ValueError` saying what is wrong), the parameters it takes, a grid of parameter
values worth trying on a site, a `build` that emits the replacement with a `Subgraph`,
and an `init` that computes the replacement's weights from the site's effective weight
in closed form (see `factor`).  Every replacement has the site's input and output shape.

Families (K = prod(kernel) taps, C → O channels):

================== ====================================================== =====================
rule               replacement                                            sites
================== ====================================================== =====================
low_rank           conv C→r (same window), pointwise r→O                  conv (groups 1), linear
depthwise_separable depthwise conv (m per channel), pointwise C·m→O       conv, K > 1
spatially_separable kh×1 conv C→M, then 1×kw conv M→O                     2-d conv, kh, kw > 1
grouped_shuffle    grouped conv (G), channel shuffle, grouped pointwise   conv (groups 1), linear
shift_pointwise    per-channel shift to one window tap, pointwise C→O     conv, K > 1
channel_bottleneck pointwise C→r, conv r→r (same window), pointwise r→O   conv, K > 1
================== ====================================================== =====================
"""
from __future__ import annotations

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
        groups: group counts tried by grouped_shuffle.
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
    """Base class of the rewrite rules (see the module docstring for the families)."""

    name: ClassVar[str]
    legality: ClassVar[str]
    params: ClassVar[dict[str, Any]]  # parameter -> default (None: required)

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

    def problem(self, site: Site, **params: int) -> str | None:
        """Why the rule is illegal on `site` with `params`, or None when it is legal."""
        raise NotImplementedError

    def is_legal(self, site: Site, **params: int) -> bool:
        try:
            self.resolve(site, params)
            return True
        except ValueError:
            return False

    def grid(self, site: Site, options: SpaceOptions) -> list[dict[str, int]]:
        """The legal parameter values worth trying on `site`."""
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
        b = emit.Subgraph(program, site, prefix=f"{site.end}_{_ABBREV[self.name]}")
        out = self.build(b, site, **full)
        new = emit.splice(program, site, b.build(out), name=f"{program.name}+{self.name}")
        return new, dict(b.roles)


# --- shared legality pieces ------------------------------------------------------------------


def _dense_conv_or_linear(site: Site) -> str | None:
    if site.groups != 1:
        return f"the site has groups={site.groups}, the rule needs groups == 1"
    return None


def _windowed(site: Site) -> str | None:
    if site.kind != "conv":
        return "the site has no window (a linear map)"
    if site.groups != 1:
        return f"the site has groups={site.groups}, the rule needs groups == 1"
    if site.taps == 1:
        return f"the window has a single tap (kernel {site.kernel}); there is nothing to factor"
    return None


def _rank_range(what: str, value: int, full: int) -> str | None:
    if not 1 <= value <= full:
        return f"{what}={value} is outside 1..{full}"
    return None


def _geometry(site: Site) -> dict[str, Any]:
    return dict(kernel=site.kernel, stride=site.stride, dilation=site.dilation, pads=site.pads)


# --- the families ---------------------------------------------------------------------------


class LowRank(Rule):
    name = "low_rank"
    legality = "groups == 1 and 1 <= rank <= min(O, C*K)"
    params = {"rank": None}

    @staticmethod
    def full_rank(site: Site) -> int:
        return min(site.out_channels, site.in_channels * site.taps)

    def problem(self, site: Site, rank: int) -> str | None:
        return _dense_conv_or_linear(site) or _rank_range("rank", rank, self.full_rank(site))

    def grid(self, site: Site, options: SpaceOptions) -> list[dict[str, int]]:
        return [{"rank": r} for r in options.rank_grid(self.full_rank(site)) if self.is_legal(site, rank=r)]

    def build(self, b: emit.Subgraph, site: Site, rank: int) -> str:
        if site.kind == "linear":
            y = emit.linear(b, site.source, site.channel_axis, rank, "down")
        else:
            y = emit.conv(b, site.source, rank, role="down", **_geometry(site))
        return emit.linear(b, y, site.channel_axis, site.out_channels, "up")

    def init(self, w: np.ndarray, site: Site, rank: int) -> dict[str, np.ndarray]:
        down, up = factor.low_rank(w, rank)
        return {"down": down, "up": up}


class DepthwiseSeparable(Rule):
    name = "depthwise_separable"
    legality = "a convolution with groups == 1 and K > 1 taps; 1 <= multiplier <= K"
    params = {"multiplier": 1}

    def problem(self, site: Site, multiplier: int) -> str | None:
        return _windowed(site) or _rank_range("multiplier", multiplier, site.taps)

    def grid(self, site: Site, options: SpaceOptions) -> list[dict[str, int]]:
        return [{"multiplier": m} for m in options.multipliers if self.is_legal(site, multiplier=m)]

    def build(self, b: emit.Subgraph, site: Site, multiplier: int) -> str:
        y = emit.depthwise(b, site.source, role="dw", multiplier=multiplier, **_geometry(site))
        return emit.linear(b, y, 1, site.out_channels, "pw")

    def init(self, w: np.ndarray, site: Site, multiplier: int) -> dict[str, np.ndarray]:
        dw, pw = factor.depthwise_separable(w, multiplier)
        return {"dw": dw, "pw": pw}


class SpatiallySeparable(Rule):
    name = "spatially_separable"
    legality = "a 2-d convolution with groups == 1 and kh, kw > 1; 1 <= mid <= min(O*kw, C*kh)"
    params = {"mid": None}

    @staticmethod
    def full_rank(site: Site) -> int:
        kh, kw = site.kernel
        return min(site.out_channels * kw, site.in_channels * kh)

    def problem(self, site: Site, mid: int) -> str | None:
        if site.kind != "conv" or site.nsp != 2:
            return f"the site has {site.nsp} spatial axes, the rule needs 2"
        if site.groups != 1:
            return f"the site has groups={site.groups}, the rule needs groups == 1"
        if min(site.kernel) < 2:
            return f"kernel {site.kernel} is already separable (needs both sizes > 1)"
        return _rank_range("mid", mid, self.full_rank(site))

    def grid(self, site: Site, options: SpaceOptions) -> list[dict[str, int]]:
        if site.kind != "conv" or site.nsp != 2:
            return []
        return [{"mid": r} for r in options.rank_grid(self.full_rank(site)) if self.is_legal(site, mid=r)]

    def build(self, b: emit.Subgraph, site: Site, mid: int) -> str:
        (kh, kw), (sh, sw), (dh, dw), (ph, pw) = site.kernel, site.stride, site.dilation, site.pads
        y = emit.conv(b, site.source, mid, (kh, 1), (sh, 1), (dh, 1), (ph, (0, 0)), role="v")
        return emit.conv(b, y, site.out_channels, (1, kw), (1, sw), (1, dw), ((0, 0), pw), role="h")

    def init(self, w: np.ndarray, site: Site, mid: int) -> dict[str, np.ndarray]:
        v, h = factor.spatially_separable(w, mid)
        return {"v": v, "h": h}


class GroupedShuffle(Rule):
    name = "grouped_shuffle"
    legality = "groups == 1 and G >= 2 divides both C and O"
    params = {"groups": None}

    def problem(self, site: Site, groups: int) -> str | None:
        p = _dense_conv_or_linear(site)
        if p:
            return p
        if groups < 2:
            return f"groups={groups} must be at least 2"
        if site.in_channels % groups or site.out_channels % groups:
            return f"groups={groups} does not divide C={site.in_channels} and O={site.out_channels}"
        return None

    def grid(self, site: Site, options: SpaceOptions) -> list[dict[str, int]]:
        return [{"groups": g} for g in options.groups if self.is_legal(site, groups=g)]

    def build(self, b: emit.Subgraph, site: Site, groups: int) -> str:
        axis = site.channel_axis
        if site.kind == "linear":
            y = emit.linear(b, site.source, axis, site.out_channels, "grouped", groups)
        else:
            y = emit.conv(b, site.source, site.out_channels, role="grouped", groups=groups, **_geometry(site))
        y = emit.channel_shuffle(b, y, axis, groups)
        return emit.linear(b, y, axis, site.out_channels, "mix", groups)

    def init(self, w: np.ndarray, site: Site, groups: int) -> dict[str, np.ndarray]:
        grouped, mix = factor.grouped_shuffle(w, groups)
        return {"grouped": grouped, "mix": mix}


class ShiftPointwise(Rule):
    name = "shift_pointwise"
    legality = "a convolution with groups == 1 and K > 1 taps"
    params: dict[str, Any] = {}

    def problem(self, site: Site) -> str | None:
        return _windowed(site)

    def grid(self, site: Site, options: SpaceOptions) -> list[dict[str, int]]:
        return [{}] if self.is_legal(site) else []

    def build(self, b: emit.Subgraph, site: Site) -> str:
        taps = factor.shift_taps(site.in_channels, site.kernel)
        y = emit.shift_window(b, site.source, taps, **_geometry(site))
        return emit.linear(b, y, 1, site.out_channels, "pw")

    def init(self, w: np.ndarray, site: Site) -> dict[str, np.ndarray]:
        return {"pw": factor.shift_pointwise(w, factor.shift_taps(site.in_channels, site.kernel))}


class ChannelBottleneck(Rule):
    name = "channel_bottleneck"
    legality = "a convolution with groups == 1 and K > 1 taps; 1 <= rank <= min(C, O)"
    params = {"rank": None}

    @staticmethod
    def full_rank(site: Site) -> int:
        return min(site.in_channels, site.out_channels)

    def problem(self, site: Site, rank: int) -> str | None:
        if site.kind == "linear":
            return "a linear site has no window to operate on; its bottleneck is low_rank"
        return _windowed(site) or _rank_range("rank", rank, self.full_rank(site))

    def grid(self, site: Site, options: SpaceOptions) -> list[dict[str, int]]:
        return [{"rank": r} for r in options.rank_grid(self.full_rank(site)) if self.is_legal(site, rank=r)]

    def build(self, b: emit.Subgraph, site: Site, rank: int) -> str:
        y = emit.linear(b, site.source, 1, rank, "reduce")
        y = emit.conv(b, y, rank, role="core", **_geometry(site))
        return emit.linear(b, y, 1, site.out_channels, "expand")

    def init(self, w: np.ndarray, site: Site, rank: int) -> dict[str, np.ndarray]:
        reduce, core, expand = factor.tucker2(w, rank)
        return {"reduce": reduce, "core": core, "expand": expand}


_ABBREV = {"low_rank": "lr", "depthwise_separable": "ds", "spatially_separable": "ss",
           "grouped_shuffle": "gs", "shift_pointwise": "sh", "channel_bottleneck": "cb"}

#: Every rule by name, in the order candidates are generated.
RULES: dict[str, Rule] = {r.name: r for r in (DepthwiseSeparable(), SpatiallySeparable(), LowRank(),
                                              GroupedShuffle(), ShiftPointwise(), ChannelBottleneck())}


def get_rule(name: str) -> Rule:
    """The rule called `name`; ValueError naming the known rules otherwise."""
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"unknown rewrite rule {name!r}; known rules: {', '.join(RULES)}") from None
