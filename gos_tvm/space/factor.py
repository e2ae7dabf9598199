"""Closed-form weights for the rewrite families: the algebra behind each rule's init.

Every function takes the site's effective torch-layout weight ``W`` of shape
``(O, C, *kernel)`` (``(O, C)`` for a linear site; ``K = prod(kernel)`` taps) and returns
the replacement's weights in *their* torch layouts.  Each is the best approximation of
``W`` in the Frobenius norm within the family where one exists in closed form (an
Eckart–Young truncated SVD), and exact whenever ``W`` lies in the family.
"""
from __future__ import annotations

import math

import numpy as np


def truncated_svd(m: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """``m ≈ a @ b`` with ``a: (rows, rank)``, ``b: (rank, cols)``, singular values split evenly.

    Splitting ``sqrt(s)`` onto both factors keeps their scales balanced, which matters
    when the factors are then trained with gradient steps.  Ranks above ``min(m.shape)``
    are padded with zero components.
    """
    u, s, vt = np.linalg.svd(np.asarray(m, dtype=np.float64), full_matrices=False)
    k = min(rank, s.size)
    root = np.sqrt(s[:k])
    a = np.zeros((m.shape[0], rank))
    b = np.zeros((rank, m.shape[1]))
    a[:, :k] = u[:, :k] * root
    b[:k] = root[:, None] * vt[:k]
    return a, b


def low_rank(w: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """``W[o, c, k] ≈ sum_r B[o, r] A[r, c, k]``: a rank-r conv C→r, then a pointwise map r→O.

    Returns (A: (r, C, *kernel), B: (O, r)).
    """
    o, c, kernel = w.shape[0], w.shape[1], w.shape[2:]
    b, a = truncated_svd(w.reshape(o, -1), rank)
    return a.reshape(rank, c, *kernel), b


def depthwise_separable(w: np.ndarray, multiplier: int) -> tuple[np.ndarray, np.ndarray]:
    """``W[o, c, k] ≈ sum_t P[o, c*m + t] D[c*m + t, k]``: per input channel a rank-m SVD of W[:, c, :].

    Returns (D: (C*m, 1, *kernel), P: (O, C*m)).
    """
    o, c, kernel = w.shape[0], w.shape[1], w.shape[2:]
    m = multiplier
    dw = np.zeros((c * m, 1, *kernel))
    pw = np.zeros((o, c * m))
    for ch in range(c):
        p, d = truncated_svd(w[:, ch].reshape(o, -1), m)
        pw[:, ch * m:(ch + 1) * m] = p
        dw[ch * m:(ch + 1) * m, 0] = d.reshape(m, *kernel)
    return dw, pw


def spatially_separable(w: np.ndarray, mid: int) -> tuple[np.ndarray, np.ndarray]:
    """``W[o, c, i, j] ≈ sum_m B[o, m, j] A[m, c, i]``: a kh×1 conv C→M, then a 1×kw conv M→O.

    The sum is a rank-M factorisation of W viewed as a ((o, j), (c, i)) matrix.
    Returns (A: (M, C, kh, 1), B: (O, M, 1, kw)).
    """
    o, c, kh, kw = w.shape
    z = w.transpose(0, 3, 1, 2).reshape(o * kw, c * kh)
    left, right = truncated_svd(z, mid)
    a = right.reshape(mid, c, kh, 1)
    b = left.reshape(o, kw, mid).transpose(0, 2, 1).reshape(o, mid, 1, kw)
    return a, b


def tucker2(w: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``W[o, c, k] ≈ sum_{a,b} E[o, a] K[a, b, k] R[b, c]``: reduce C→r, conv r→r, expand r→O.

    Truncated higher-order SVD: R and E span the leading singular subspaces of W's input
    and output channel unfoldings, and the core is W projected onto them.  Exact when
    both channel ranks of W are at most r.  Returns (R: (r, C), K: (r, r, *kernel), E: (O, r)).
    """
    o, c, kernel = w.shape[0], w.shape[1], w.shape[2:]
    wk = w.reshape(o, c, -1)
    e = _leading_basis(wk.reshape(o, -1), rank)                    # (O, r)
    r = _leading_basis(wk.transpose(1, 0, 2).reshape(c, -1), rank).T  # (r, C)
    core = np.einsum("oa,ock,bc->abk", e, wk, r)
    return r, core.reshape(rank, rank, *kernel), e


def _leading_basis(m: np.ndarray, rank: int) -> np.ndarray:
    """Orthonormal columns spanning the leading left singular subspace (zero-padded past full rank)."""
    u, _, _ = np.linalg.svd(m, full_matrices=False)
    out = np.zeros((m.shape[0], rank))
    k = min(rank, u.shape[1])
    out[:, :k] = u[:, :k]
    return out


def grouped_shuffle(w: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Grouped conv, channel shuffle, grouped pointwise mix, initialised to W's shuffled block diagonal.

    After the shuffle, output channel q is conv channel g*(O/G) + j with q = j*G + g, which
    only sees input group g.  With the mix set to the identity, the best such conv keeps
    ``W[q, group g]`` and drops the rest: the nearest point of the family that has no
    cross-group mixing.  Training then learns the mix.  Returns (grouped: (O, C/G, *kernel),
    mix: (O, O/G)).
    """
    o, c, kernel = w.shape[0], w.shape[1], w.shape[2:]
    og, cg = o // groups, c // groups
    grouped = np.zeros((o, cg, *kernel))
    for g in range(groups):
        for j in range(og):
            grouped[g * og + j] = w[j * groups + g, g * cg:(g + 1) * cg]
    mix = np.tile(np.eye(og), (groups, 1))  # group h maps its og inputs to its og outputs one to one
    return grouped, mix


def shift_taps(channels: int, kernel: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The window tap each channel reads in a shift replacement: contiguous channel groups per tap.

    Channel c takes tap ``floor(c * K / C)`` (K = prod(kernel)), so the taps spread evenly
    and each tap is a run of consecutive channels (the TE lowering selects offsets run by run).
    """
    k = math.prod(kernel)
    return [tuple(int(i) for i in np.unravel_index((ch * k) // channels, kernel)) for ch in range(channels)]


def shift_pointwise(w: np.ndarray, taps: list[tuple[int, ...]]) -> np.ndarray:
    """``P[o, c] = W[o, c, tap_c]``: the conv restricted to the one tap each channel sees.

    The shift-then-pointwise operator is the conv whose weight is zero off those taps, so
    keeping W's values on them is its nearest point in weight space.  Returns P: (O, C).
    """
    return np.stack([w[:, ch][(slice(None), *tap)] for ch, tap in enumerate(taps)], axis=1)


# --- grouped sites: the same algebra block by block ------------------------------------------


def per_group(w: np.ndarray, groups: int, fn, *args) -> tuple[np.ndarray, ...]:
    """Apply a dense factorisation `fn(block, *args)` to each group's block of a grouped weight.

    A grouped weight ``(O, C/G, *kernel)`` is G independent blocks ``(O/G, C/G, *kernel)``.
    Every factor `fn` returns is in torch layout with its output channels first, so
    concatenating the per-group factors along axis 0 gives the grouped (G-group) weight of
    the same factor: block g of a grouped layer owns output rows g*(rows/G) onwards.
    """
    o = w.shape[0]
    blocks = [fn(w[g * (o // groups):(g + 1) * (o // groups)], *args) for g in range(groups)]
    if not isinstance(blocks[0], tuple):
        return np.concatenate(blocks, axis=0)
    return tuple(np.concatenate([b[i] for b in blocks], axis=0) for i in range(len(blocks[0])))


def block_diagonal(w: np.ndarray, groups: int) -> np.ndarray:
    """The dense ``(O, C, *kernel)`` weight of a grouped ``(O, C/G, *kernel)`` one (zeros off the blocks)."""
    o, cg, kernel = w.shape[0], w.shape[1], w.shape[2:]
    og = o // groups
    dense = np.zeros((o, cg * groups, *kernel))
    for g in range(groups):
        dense[g * og:(g + 1) * og, g * cg:(g + 1) * cg] = w[g * og:(g + 1) * og]
    return dense


def tap_box(w: np.ndarray, offset: tuple[int, ...], count: tuple[int, ...], step: tuple[int, ...]) -> np.ndarray:
    """The taps ``offset + step * t`` (t < count, per spatial axis) of ``W`` as a smaller kernel.

    A window restricted to a lattice box of its taps is a convolution with that box as its
    kernel (dilation multiplied by `step`, start moved by `offset`); keeping W's values on
    the box and dropping the rest is the nearest point of that family in weight space.
    """
    index = tuple(slice(a, a + s * (n - 1) + 1, s) for a, n, s in zip(offset, count, step))
    return np.ascontiguousarray(w[(slice(None), slice(None), *index)])
