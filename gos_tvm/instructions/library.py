"""Standard operators written as `OpProgram`s.

Weights use PyTorch's layouts and names (`weight`, `bias`), so a torch layer's
state dict is the program's weight set.  A convolution is

    pad -> window -> contract(window, weight) [-> add bias]

with groups expressed by splitting the channel axis into (group, channel-in-group)
with reshapes, so the contraction is one einsum whatever the grouping.
"""
from __future__ import annotations

import string
from typing import Sequence

from .program import OpProgram, ProgramBuilder


def _tuple(v: int | Sequence[int], n: int, what: str) -> tuple[int, ...]:
    t = (int(v),) * n if isinstance(v, int) else tuple(int(x) for x in v)
    if len(t) != n:
        raise ValueError(f"{what} needs {n} value(s), got {v!r}")
    return t


def _padding(padding: int | Sequence[int], n: int) -> tuple[tuple[int, int], ...]:
    """int, one value per axis (symmetric), or 2n values in Relax's order (all befores, then all afters)."""
    p = (int(padding),) * n if isinstance(padding, int) else tuple(int(x) for x in padding)
    if len(p) == n:
        p = p + p
    if len(p) != 2 * n:
        raise ValueError(f"padding needs 1, {n} or {2 * n} values, got {padding!r}")
    if any(x < 0 for x in p):
        raise ValueError(f"negative padding {padding!r}")
    return tuple((p[i], p[n + i]) for i in range(n))


def conv(input_shape: Sequence[int], out_channels: int, kernel_size: int | Sequence[int],
         stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
         dilation: int | Sequence[int] = 1, groups: int = 1, bias: bool = True,
         name: str | None = None) -> OpProgram:
    """An N-d convolution over input (N, C, *spatial), weight (O, C/groups, *kernel), bias (O,)."""
    input_shape = tuple(int(d) for d in input_shape)
    nsp = len(input_shape) - 2
    if nsp < 1:
        raise ValueError(f"convolution input must be (N, C, *spatial), got shape {input_shape}")
    try:
        k = _tuple(kernel_size, nsp, "kernel_size")
        s = _tuple(stride, nsp, "stride")
        d = _tuple(dilation, nsp, "dilation")
        pads = _padding(padding, nsp)
    except ValueError as err:
        raise ValueError(f"{name or f'conv{nsp}d'}: {err}") from None
    n, c = input_shape[:2]
    op = name or f"conv{nsp}d"
    if groups < 1:
        raise ValueError(f"{op}: groups must be >= 1, got {groups}")
    if out_channels < 1:
        raise ValueError(f"{op}: out_channels must be >= 1, got {out_channels}")
    if c % groups or out_channels % groups:
        raise ValueError(f"{op}: groups={groups} must divide in_channels={c} and out_channels={out_channels}")
    g, cg, og = groups, c // groups, out_channels // groups

    b = ProgramBuilder(name or f"conv{nsp}d")
    x = b.input("x", input_shape)
    w = b.weight("weight", (out_channels, cg, *k))
    spatial = list(range(2, 2 + nsp))
    if any(lo or hi for lo, hi in pads):
        x = b.pad(x, pads=((0, 0), (0, 0), *pads))
    win = b.window(x, axes=spatial, kernel=k, stride=s, dilation=d)
    sp = "hwdtuv"[:nsp]          # window positions
    kk = "ijklmp"[:nsp]          # window offsets
    if g == 1:
        y = b.contract(win, w, spec=f"nc{sp}{kk},oc{kk}->no{sp}")
    else:
        out_sp = b.shape(win)[2:2 + nsp]
        wg = b.reshape(win, shape=(n, g, cg, *out_sp, *k))
        ww = b.reshape(w, shape=(g, og, cg, *k))
        yg = b.contract(wg, ww, spec=f"ngc{sp}{kk},goc{kk}->ngo{sp}")
        y = b.reshape(yg, shape=(n, out_channels, *out_sp))
    if bias:
        bb = b.weight("bias", (out_channels,))
        y = b.add(y, b.reshape(bb, shape=(1, out_channels) + (1,) * nsp))
    return b.build(y)


def conv1d(input_shape: Sequence[int], out_channels: int, kernel_size: int, stride: int = 1,
           padding: int | Sequence[int] = 0, dilation: int = 1, groups: int = 1, bias: bool = True) -> OpProgram:
    """`torch.nn.functional.conv1d` on input (N, C, L)."""
    if len(input_shape) != 3:
        raise ValueError(f"conv1d input must be (N, C, L), got {tuple(input_shape)}")
    return conv(input_shape, out_channels, kernel_size, stride, padding, dilation, groups, bias, "conv1d")


def conv2d(input_shape: Sequence[int], out_channels: int, kernel_size: int | Sequence[int],
           stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
           dilation: int | Sequence[int] = 1, groups: int = 1, bias: bool = True) -> OpProgram:
    """`torch.nn.functional.conv2d` on input (N, C, H, W)."""
    if len(input_shape) != 4:
        raise ValueError(f"conv2d input must be (N, C, H, W), got {tuple(input_shape)}")
    return conv(input_shape, out_channels, kernel_size, stride, padding, dilation, groups, bias, "conv2d")


def depthwise_conv2d(input_shape: Sequence[int], kernel_size: int | Sequence[int], stride: int | Sequence[int] = 1,
                     padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1,
                     multiplier: int = 1, bias: bool = True) -> OpProgram:
    """Depthwise conv2d (groups = in_channels, `multiplier` outputs per channel).

    Written without the group reshapes: one contraction 'nchwij,cmij->ncmhw' that keeps
    the channel axis as an output axis, which is what makes it cheap.
    """
    if len(input_shape) != 4:
        raise ValueError(f"depthwise_conv2d input must be (N, C, H, W), got {tuple(input_shape)}")
    if multiplier < 1:
        raise ValueError(f"depthwise_conv2d: multiplier must be >= 1, got {multiplier}")
    n, c = int(input_shape[0]), int(input_shape[1])
    k = _tuple(kernel_size, 2, "kernel_size")
    b = ProgramBuilder("depthwise_conv2d")
    x = b.input("x", input_shape)
    w = b.weight("weight", (c * multiplier, 1, *k))
    try:
        pads = _padding(padding, 2)
    except ValueError as err:
        raise ValueError(f"depthwise_conv2d: {err}") from None
    if any(lo or hi for lo, hi in pads):
        x = b.pad(x, pads=((0, 0), (0, 0), *pads))
    win = b.window(x, axes=(2, 3), kernel=k, stride=_tuple(stride, 2, "stride"),
                   dilation=_tuple(dilation, 2, "dilation"))
    oh, ow = b.shape(win)[2:4]
    wm = b.reshape(w, shape=(c, multiplier, *k))
    y = b.contract(win, wm, spec="nchwij,cmij->ncmhw")
    y = b.reshape(y, shape=(n, c * multiplier, oh, ow))
    if bias:
        y = b.add(y, b.reshape(b.weight("bias", (c * multiplier,)), shape=(1, c * multiplier, 1, 1)))
    return b.build(y)


def pointwise_conv2d(input_shape: Sequence[int], out_channels: int, bias: bool = True) -> OpProgram:
    """1x1 conv2d: a contraction over channels only ('nchw,oc->nohw'), weight (O, C, 1, 1)."""
    if len(input_shape) != 4:
        raise ValueError(f"pointwise_conv2d input must be (N, C, H, W), got {tuple(input_shape)}")
    c = int(input_shape[1])
    b = ProgramBuilder("pointwise_conv2d")
    x = b.input("x", input_shape)
    w = b.reshape(b.weight("weight", (out_channels, c, 1, 1)), shape=(out_channels, c))
    y = b.contract(x, w, spec="nchw,oc->nohw")
    if bias:
        y = b.add(y, b.reshape(b.weight("bias", (out_channels,)), shape=(1, out_channels, 1, 1)))
    return b.build(y)


def dense(input_shape: Sequence[int], out_features: int, bias: bool = True) -> OpProgram:
    """`torch.nn.functional.linear`: input (..., K), weight (O, K), bias (O,)."""
    input_shape = tuple(int(d) for d in input_shape)
    if not 1 <= len(input_shape) <= 6:
        raise ValueError(f"dense input must have 1 to 6 axes, got shape {input_shape}")
    if out_features < 1:
        raise ValueError(f"dense: out_features must be >= 1, got {out_features}")
    lead = string.ascii_lowercase[:len(input_shape) - 1]  # a.. for leading axes; k, o are reserved below
    lead = lead.replace("k", "x").replace("o", "y")
    b = ProgramBuilder("dense")
    x = b.input("x", input_shape)
    w = b.weight("weight", (out_features, input_shape[-1]))
    y = b.contract(x, w, spec=f"{lead}k,ok->{lead}o")
    if bias:
        y = b.add(y, b.weight("bias", (out_features,)))
    return b.build(y)


__all__ = ["conv", "conv1d", "conv2d", "depthwise_conv2d", "pointwise_conv2d", "dense"]
