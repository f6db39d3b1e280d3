"""Sparse multi-head attention: LSH-selected pairs (Sparse HT Demucs) and static patterns, with kernels that never
materialise a dense float score matrix for long sequences.

Shapes: ``q (B, H, Nq, D)``, ``k, v (B, H, Nk, D)`` -> ``(B, H, Nq, D)``; a keep-mask is boolean
``(B|1, H|1, Nq, Nk)`` (True = the pair enters the softmax). Rows that keep nothing output zeros (as
:func:`torch.nn.functional.scaled_dot_product_attention` does for fully masked rows).

**LSH pairs** (HT Demucs paper, Sec. 3). Per head, ``R`` random projections ``P_r (D, n_buckets/2)`` give a bucket per
round, ``argmax([x P_r, -x P_r])``, for every query and key. The match count of a pair is the number of rounds in which
both fall in the same bucket. Pairs are ranked by the integer score

    S_ij = 2**15 * count_ij + 2**10 * (g_i . g'_j + m) + u_i + r_j

where the low part is a seeded tie-break in ``[0, 2**15)`` (``g, g'`` random +-1 vectors of length ``m = 8``, ``u,
r`` random integers in ``[0, 2**9)``) that never reorders different counts. A pair is kept when ``S_ij >= T`` with
``T`` chosen **per (batch item, head)** as the quantile of ``S`` over a seeded sample of ``calibration_samples``
random pairs (all pairs when ``Nq * Nk <= 4 * calibration_samples``), so that the kept fraction is ``1 - sparsity``.
In the paper's terms: the pair is kept when its count is at least ``k = T // 2**15``, and among the pairs with count
exactly ``k`` the tie-break keeps just enough to hit the target sparsity (an integer ``k`` alone moves the sparsity
in steps of several points). The key aligned with the query (``j = floor((i + 1/2) Nk / Nq)``, the diagonal for
self-attention) is always kept, so no row is empty. The score is an exact integer below ``2**24``, so the matmuls
that compute it in the chunked kernel (match counts as a bfloat16 one-hot matmul, exact for counts <= 256, plus a
float32 rank-10 tie-break matmul) and the integer bit arithmetic of the FlexAttention ``mask_mod`` agree exactly.

**Static patterns** (the reference's ``t_mask_type`` parts): ``diag`` = local window ``|j - c(i)| <= window`` around
the aligned position ``c(i)`` (works for cross-attention with ``Nq != Nk``), ``global`` = the first
``global_window`` queries attend everywhere and every query attends the first ``global_window`` keys, ``random`` =
a seeded hash keeps a fraction of pairs; the pattern is the union of its parts, and is united with the LSH pairs
when both are configured.

**Kernels** (``backend``):
- ``chunked``: query blocks; per block the scores ``(B, H, bq, Nk)`` and the keep-mask (a matmul of one-hot
  bucket features) are built, masked, soft-maxed and reduced; a custom autograd function saves only
  ``q, k, v, out`` and the log-sum-exp and recomputes blocks in backward (flash-attention style), so memory is
  ``O(N * (D + R * n_buckets) + bq * Nk)`` per head instead of ``O(N**2)``. CPU and GPU.
- ``flex``: :func:`torch.nn.attention.flex_attention.flex_attention` with a ``BlockMask`` whose ``mask_mod``
  computes the score from bit-packed bucket codes (popcount of XOR). The ``BlockMask`` is built by
  :func:`flex_block_mask` without any ``Nq x Nk`` tensor (uncompiled ``create_block_mask`` would evaluate the
  ``mask_mod`` densely: gigabytes at 8k tokens). Compiled on CUDA; on CPU torch runs it eagerly (forward only:
  FlexAttention has no CPU backward).
- ``sdpa``: builds the dense boolean mask and calls ``scaled_dot_product_attention`` (reference path, short
  sequences).
- ``xformers``: ``xformers.ops.memory_efficient_attention`` with an additive bias built from the mask; only when
  xformers is installed.
- ``auto``: ``flex`` on CUDA, ``chunked`` elsewhere.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BACKENDS = ("auto", "sdpa", "flex", "chunked", "xformers")
MASK_PARTS = ("diag", "global", "random")

# Bit layout of the integer LSH score S (see the module docstring); all values stay below 2**24 (exact in float32).
_COUNT_SHIFT = 15
_TIE_SHIFT = 10
_TIE_DIMS = 8
_JITTER = 1 << 9
_MAX_ROUNDS = 256


# ----------------------------------------------------------------------------------------------------------------
# Index helpers shared by all kernels (they accept broadcastable int64 index tensors)
# ----------------------------------------------------------------------------------------------------------------
def aligned_key(i: Tensor, nq: int, nk: int) -> Tensor:
    """Key index aligned with query ``i`` by relative position: ``floor((i + 1/2) * nk / nq)`` (``i`` when equal)."""
    return ((2 * i + 1) * nk) // (2 * nq)


def _pair_hash(i: Tensor, j: Tensor, seed: int) -> Tensor:
    """Deterministic 16-bit hash of an (i, j) index pair (int64 arithmetic, no overflow for indices < 2**24)."""
    h = ((i * 0x9E3779B1) ^ (j * 0x85EBCA6B) ^ (seed & 0xFFFFFFFF)) & 0xFFFFFFFF
    h = (((h >> 16) ^ h) * 0x45D9F3B) & 0xFFFFFFFF
    h = (((h >> 16) ^ h) * 0x45D9F3B) & 0xFFFFFFFF
    return ((h >> 16) ^ h) & 0xFFFF


class StaticPattern:
    """Union of a local window, global tokens and a seeded random pattern.

    Args:
        window: keep ``|j - aligned_key(i)| <= window`` (None: no window).
        global_window: the first ``global_window`` queries and keys are global (0: none).
        random_keep: fraction of pairs kept by a seeded hash (0: none).
        seed: seed of the random part.
    """

    def __init__(self, window: int | None = None, global_window: int = 0, random_keep: float = 0.0, seed: int = 42):
        if window is not None and window < 0:
            raise ValueError(f"sparse attention window must be >= 0, got {window}")
        if global_window < 0 or not 0.0 <= random_keep <= 1.0:
            raise ValueError(f"need global_window >= 0 and 0 <= random_keep <= 1, got {global_window}, {random_keep}")
        self.window, self.global_window, self.seed = window, global_window, seed
        self.random_threshold = round(random_keep * 65536)

    @property
    def empty(self) -> bool:
        return self.window is None and self.global_window == 0 and self.random_threshold == 0

    def keep(self, i: Tensor, j: Tensor, nq: int, nk: int) -> Tensor:
        """Boolean keep-mask for broadcastable int64 query indices ``i`` and key indices ``j``."""
        keep = torch.zeros(torch.broadcast_shapes(i.shape, j.shape), dtype=torch.bool, device=i.device)
        if self.window is not None:
            keep = keep | ((j - aligned_key(i, nq, nk)).abs() <= self.window)
        if self.global_window:
            keep = keep | (i < self.global_window) | (j < self.global_window)
        if self.random_threshold:
            keep = keep | (_pair_hash(i, j, self.seed) < self.random_threshold)
        return keep


# ----------------------------------------------------------------------------------------------------------------
# Keep-masks: evaluated block by block (chunked), densely (sdpa/xformers) or element-wise (flex mask_mod)
# ----------------------------------------------------------------------------------------------------------------
class KeepMask:
    """A boolean keep-mask over (query, key) pairs that can be evaluated one block of query rows at a time."""

    nq: int
    nk: int
    shape: tuple[int, int]  # (B or 1, H or 1) of the mask

    def block(self, q0: int, q1: int, cols: Tensor | None = None) -> Tensor:
        """Mask rows ``q0:q1``: ``(B|1, H|1, q1 - q0, Nk)`` bool, or only the key columns ``cols`` when given."""
        raise NotImplementedError

    def columns(self, q0: int, q1: int) -> Tensor | None:
        """Key indices that rows ``q0:q1`` may keep (None: all); the kernels skip the other keys."""
        return None

    def mask_mod(self) -> Callable:
        """``mask_mod(b, h, i, j) -> bool`` for FlexAttention."""
        raise NotImplementedError

    def dense(self) -> Tensor:
        return self.block(0, self.nq)


class DenseKeepMask(KeepMask):
    """An explicit boolean mask ``(B|1, H|1, Nq, Nk)`` (tests, user-supplied patterns)."""

    def __init__(self, mask: Tensor):
        if mask.dim() != 4 or mask.dtype != torch.bool:
            raise ValueError(f"keep-mask must be a bool tensor (B|1, H|1, Nq, Nk), got {mask.dtype} "
                             f"{tuple(mask.shape)}")
        self.mask = mask
        self.shape, (self.nq, self.nk) = tuple(mask.shape[:2]), mask.shape[2:]

    def block(self, q0: int, q1: int, cols: Tensor | None = None) -> Tensor:
        return self.mask[:, :, q0:q1]

    def mask_mod(self) -> Callable:
        mask = self.mask
        bb, hh = mask.shape[0] > 1, mask.shape[1] > 1

        def mod(b, h, i, j):
            return mask[b if bb else 0, h if hh else 0, i, j]

        return mod


class PatternKeepMask(KeepMask):
    """A :class:`StaticPattern` over ``nq x nk`` pairs."""

    def __init__(self, pattern: StaticPattern, nq: int, nk: int, device: torch.device):
        self.pattern, self.nq, self.nk, self.shape = pattern, nq, nk, (1, 1)
        self.keys = torch.arange(nk, device=device)

    def block(self, q0: int, q1: int, cols: Tensor | None = None) -> Tensor:
        i = torch.arange(q0, q1, device=self.keys.device)[:, None]
        keys = self.keys if cols is None else cols
        return self.pattern.keep(i, keys[None], self.nq, self.nk)[None, None]

    def columns(self, q0: int, q1: int) -> Tensor | None:
        pattern, g = self.pattern, self.pattern.global_window
        if pattern.random_threshold or q0 < g:  # random pairs or global query rows: any key
            return None
        if pattern.window is None:
            return self.keys[:g]
        lo = max(0, int(aligned_key(torch.tensor(q0), self.nq, self.nk)) - pattern.window)
        hi = min(self.nk, int(aligned_key(torch.tensor(q1 - 1), self.nq, self.nk)) + pattern.window + 1)
        if hi - lo + min(g, lo) >= self.nk:
            return None
        return torch.cat([self.keys[:min(g, lo)], self.keys[lo:hi]])

    def mask_mod(self) -> Callable:
        pattern, nq, nk = self.pattern, self.nq, self.nk

        def mod(b, h, i, j):
            return pattern.keep(i.long(), j.long(), nq, nk)

        return mod


def _popcount32(x: Tensor) -> Tensor:
    """Bits set in each int64 element holding a value below 2**32 (SWAR)."""
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return ((x * 0x01010101) & 0xFFFFFFFF) >> 24


def _count_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where its matmul is native (exact here: 0/1 inputs, integer sums <= 256), else float32."""
    if device.type == "cuda" or (device.type == "cpu" and torch.backends.mkldnn.is_available()
                                 and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return torch.bfloat16
    return torch.float32


class _PackedScores:
    """Bucket ids bit-packed into 32-bit fields of int64 words (``32 // bits`` rounds per word) and the tie-break
    features, from which ``S_ij`` is computed element-wise with integer ops (FlexAttention ``mask_mod``,
    calibration samples): matches = rounds - popcount(fields of ``cq ^ ck`` that differ)."""

    def __init__(self, bq: Tensor, bk: Tensor, n_buckets: int, tie_q: Tensor, tie_k: Tensor):
        self.bits = max(1, math.ceil(math.log2(n_buckets)))
        per_word, self.rounds = 32 // self.bits, bq.shape[-1]
        self.low = sum(1 << (self.bits * f) for f in range(per_word))  # lowest bit of every field

        def pack(buckets: Tensor) -> list[Tensor]:
            words = []
            for w0 in range(0, self.rounds, per_word):
                part = buckets[..., w0:w0 + per_word].long()
                words.append((part << (self.bits * torch.arange(part.shape[-1], device=part.device))).sum(-1))
            return words

        def pack_signs(g: Tensor) -> Tensor:
            return ((g[:, :_TIE_DIMS] > 0).long() << torch.arange(_TIE_DIMS, device=g.device)).sum(-1)

        self.cq, self.ck = pack(bq), pack(bk)  # lists of (B, H, N)
        self.gq, self.gk = pack_signs(tie_q), pack_signs(tie_k)  # (N,)
        self.uq, self.rk = (t[:, _TIE_DIMS].long().contiguous() for t in (tie_q, tie_k))  # compiled kernels: dense

    def score(self, b: Tensor, h: Tensor, i: Tensor, j: Tensor) -> Tensor:
        """``S`` for broadcastable batch, head, query and key index tensors (int64)."""
        differ = 0
        for wq, wk in zip(self.cq, self.ck):
            z = wq[b, h, i] ^ wk[b, h, j]
            folded = z
            for shift in range(1, self.bits):
                folded = folded | (z >> shift)
            differ = differ + _popcount32(folded & self.low)
        dot = _TIE_DIMS - 2 * _popcount32(self.gq[i] ^ self.gk[j])
        return (((self.rounds - differ) << _COUNT_SHIFT) + ((dot + _TIE_DIMS) << _TIE_SHIFT)
                + self.uq[i] + self.rk[j])


class LSHKeepMask(KeepMask):
    """Pairs whose LSH score ``S_ij`` reaches the per-(batch, head) threshold, plus the aligned key, plus an optional
    static pattern. Built by :func:`lsh_keep_mask`."""

    def __init__(self, buckets_q: Tensor, buckets_k: Tensor, n_buckets: int, tie_q: Tensor, tie_k: Tensor,
                 threshold: Tensor, pattern: StaticPattern | None):
        self.bq, self.bk, self.n_buckets = buckets_q, buckets_k, n_buckets
        self.tie_q, self.tie_k, self.threshold = tie_q, tie_k, threshold  # (Nq, m+1), (Nk, m+1), (B, H)
        self.pattern = None if pattern is None or pattern.empty else pattern
        self.nq, self.nk = buckets_q.shape[2], buckets_k.shape[2]
        self.shape = tuple(buckets_q.shape[:2])
        self._fk: Tensor | None = None

    # -- chunked / dense evaluation: S = 2**15 * (one-hot matmul) + (rank-10 tie matmul), exact --------------------
    def _one_hot(self, buckets: Tensor) -> Tensor:
        """``(B, H, N, R * n_buckets)`` one-hot bucket features; their matmul counts matches (exact integers <= R,
        so bfloat16 is exact and several times faster than float32 on CPUs with bf16 units)."""
        rounds = buckets.shape[-1]
        index = buckets.long() + self.n_buckets * torch.arange(rounds, device=buckets.device)
        one_hot = torch.zeros(*buckets.shape[:-1], rounds * self.n_buckets, device=buckets.device,
                              dtype=_count_dtype(buckets.device))
        return one_hot.scatter_(-1, index, 1.0)

    @staticmethod
    def _tie_features(tie: Tensor, query: bool) -> Tensor:
        """``(N, m + 2)`` float32 features whose matmul is the tie-break ``2**10 (g_i . g'_j + m) + u_i + r_j``."""
        g, jitter = tie[:, :_TIE_DIMS].float(), tie[:, _TIE_DIMS:].float()
        if query:
            return torch.cat([g * (1 << _TIE_SHIFT), jitter + _TIE_DIMS * (1 << _TIE_SHIFT), torch.ones_like(g[:, :1])],
                             -1)
        return torch.cat([g, torch.ones_like(g[:, :1]), jitter], -1)

    def scores(self, q0: int, q1: int) -> Tensor:
        """Exact ``S`` of rows ``q0:q1`` against all keys, ``(B, H, q1 - q0, Nk)`` float32."""
        if self._fk is None:
            self._fk = (self._one_hot(self.bk).transpose(-1, -2),
                        self._tie_features(self.tie_k, query=False).transpose(-1, -2))
        counts = torch.matmul(self._one_hot(self.bq[:, :, q0:q1]), self._fk[0])
        tie = torch.matmul(self._tie_features(self.tie_q[q0:q1], query=True), self._fk[1])
        return torch.add(tie, counts, alpha=1 << _COUNT_SHIFT)

    def block(self, q0: int, q1: int, cols: Tensor | None = None) -> Tensor:
        keep = self.scores(q0, q1) >= self.threshold[:, :, None, None]
        i = torch.arange(q0, q1, device=keep.device)
        keep[:, :, torch.arange(q1 - q0, device=keep.device), aligned_key(i, self.nq, self.nk)] = True
        if self.pattern is not None:
            keep |= self.pattern.keep(i[:, None], torch.arange(self.nk, device=keep.device)[None], self.nq, self.nk)
        return keep

    def release(self) -> None:
        self._fk = None

    # -- flex evaluation: the same S from bit-packed codes ---------------------------------------------------------
    def mask_mod(self) -> Callable:
        packed = _PackedScores(self.bq, self.bk, self.n_buckets, self.tie_q, self.tie_k)
        threshold, nq, nk, pattern = self.threshold.long(), self.nq, self.nk, self.pattern

        def mod(b, h, i, j):
            i, j = i.long(), j.long()
            keep = (packed.score(b, h, i, j) >= threshold[b, h]) | (j == aligned_key(i, nq, nk))
            if pattern is not None:
                keep = keep | pattern.keep(i, j, nq, nk)
            return keep

        return mod


def lsh_buckets(x: Tensor, projections: Tensor) -> Tensor:
    """Bucket per round: ``x (B, H, N, D)``, ``projections (H, D, R, n_buckets/2)`` -> ``(B, H, N, R)`` uint8,
    ``argmax([x P, -x P])``."""
    proj = torch.einsum("bhnd,hdrk->bhnrk", x.float(), projections.float())
    (hi, arg_hi), (lo, arg_lo) = proj.max(-1), proj.min(-1)
    return torch.where(hi >= -lo, arg_hi, arg_lo + proj.shape[-1]).to(torch.uint8)


def lsh_keep_mask(q: Tensor, k: Tensor, sparsity: float, rounds: int = 32, n_buckets: int = 4,
                  generator: torch.Generator | None = None, pattern: StaticPattern | None = None,
                  calibration_samples: int = 16384) -> LSHKeepMask:
    """Hash queries and keys and calibrate the per-(batch, head) threshold for the target ``sparsity``.

    Random draws (projections, tie-break features, calibration sample) come from ``generator`` (a CPU generator),
    so the mask is a deterministic function of the inputs and the generator state.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if n_buckets < 2 or n_buckets % 2 or n_buckets > 256:
        raise ValueError(f"lsh n_buckets must be even and in [2, 256], got {n_buckets}")
    if not 1 <= rounds <= _MAX_ROUNDS:
        raise ValueError(f"lsh rounds must be in [1, {_MAX_ROUNDS}], got {rounds}")
    (batch, heads, nq, dim), nk, device = q.shape, k.shape[2], q.device

    def draw(*shape, kind="normal"):
        if kind == "normal":
            return torch.randn(*shape, generator=generator).to(device)
        if kind == "sign":
            return (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(device)
        return torch.randint(0, _JITTER, shape, generator=generator).to(device)

    projections = draw(heads, dim, rounds, n_buckets // 2)
    tie_q = torch.cat([draw(nq, _TIE_DIMS, kind="sign"), draw(nq, 1, kind="int")], -1)
    tie_k = torch.cat([draw(nk, _TIE_DIMS, kind="sign"), draw(nk, 1, kind="int")], -1)
    bq, bk = lsh_buckets(q.detach(), projections), lsh_buckets(k.detach(), projections)

    mask = LSHKeepMask(bq, bk, n_buckets, tie_q, tie_k, torch.full((batch, heads), -1, device=device), pattern)
    if sparsity > 0.0:
        if nq * nk <= 4 * calibration_samples:  # few pairs: all of them, one small exact matmul
            scores = mask.scores(0, nq).flatten(2).long()
            mask.release()
        else:  # independent random pairs, scored with the packed codes
            qi = torch.randint(0, nq, (calibration_samples,), generator=generator).to(device)
            kj = torch.randint(0, nk, (calibration_samples,), generator=generator).to(device)
            packed = _PackedScores(bq, bk, n_buckets, tie_q, tie_k)
            b_idx, h_idx = torch.arange(batch, device=device), torch.arange(heads, device=device)
            scores = packed.score(b_idx[:, None, None], h_idx[None, :, None], qi, kj)  # (B, H, n)
        # the aligned keys are kept anyway: remove their share (1/Nk) from the budget of the threshold
        n_keep = round(max(0.0, 1.0 - sparsity - 1.0 / nk) * scores.shape[-1])
        if n_keep == 0:
            mask.threshold = torch.full((batch, heads), 1 << 30, device=device)
        else:
            mask.threshold = scores.kthvalue(scores.shape[-1] - n_keep + 1, dim=-1).values
    return mask


# ----------------------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------------------
def _block_rows(mask: KeepMask, batch: int, heads: int, block_elements: int) -> int:
    return max(16, min(mask.nq, block_elements // max(1, batch * heads * mask.nk)))


class _ChunkedAttention(torch.autograd.Function):
    """Masked attention over query blocks, recomputing blocks in backward (saves q, k, v, out, lse only)."""

    @staticmethod
    def forward(ctx, q, k, v, mask: KeepMask, scale: float, rows: int):
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        kept = torch.zeros((), dtype=torch.float64, device=q.device)
        kt = k.transpose(-1, -2)
        qs = q * scale
        for q0 in range(0, mask.nq, rows):
            q1 = min(mask.nq, q0 + rows)
            cols = mask.columns(q0, q1)
            keep = mask.block(q0, q1, cols)
            kt_, v_ = (kt, v) if cols is None else (kt[..., cols], v[:, :, cols])
            kept += torch.count_nonzero(keep) * (q.shape[0] * q.shape[1] / (keep.shape[0] * keep.shape[1]))
            s = torch.where(keep, torch.matmul(qs[:, :, q0:q1], kt_), -math.inf)
            m = s.amax(-1, keepdim=True)
            m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
            p = s.sub_(m).exp_()
            denom = p.sum(-1, keepdim=True)
            out[:, :, q0:q1] = torch.matmul(p, v_) / denom.clamp_min(torch.finfo(p.dtype).tiny)
            # empty rows: +inf so that exp(s - lse) = 0 in backward
            lse[:, :, q0:q1] = torch.where(denom > 0, m + denom.log(), math.inf).squeeze(-1)
        if isinstance(mask, LSHKeepMask):
            mask.release()
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mask, ctx.scale, ctx.rows = mask, scale, rows
        ctx.mark_non_differentiable(kept)
        return out, kept

    @staticmethod
    def backward(ctx, grad_out, _grad_kept):
        q, k, v, out, lse = ctx.saved_tensors
        mask, scale, rows = ctx.mask, ctx.scale, ctx.rows
        grad_out = grad_out.contiguous()
        delta = (grad_out * out).sum(-1, keepdim=True)
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        kt, vt, qs = k.transpose(-1, -2), v.transpose(-1, -2), q * scale
        for q0 in range(0, mask.nq, rows):
            q1 = min(mask.nq, q0 + rows)
            cols = mask.columns(q0, q1)
            keep = mask.block(q0, q1, cols)
            kt_, vt_, k_ = (kt, vt, k) if cols is None else (kt[..., cols], vt[..., cols], k[:, :, cols])
            s = torch.where(keep, torch.matmul(qs[:, :, q0:q1], kt_), -math.inf)
            p = s.sub_(lse[:, :, q0:q1, None]).exp_()
            do = grad_out[:, :, q0:q1]
            ds = torch.matmul(do, vt_).sub_(delta[:, :, q0:q1]).mul_(p).mul_(scale)
            dq[:, :, q0:q1] = torch.matmul(ds, k_)
            dv_, dk_ = torch.matmul(p.transpose(-1, -2), do), torch.matmul(ds.transpose(-1, -2), q[:, :, q0:q1])
            if cols is None:
                dv += dv_
                dk += dk_
            else:
                dv.index_add_(2, cols, dv_)
                dk.index_add_(2, cols, dk_)
        if isinstance(mask, LSHKeepMask):
            mask.release()
        return dq, dk, dv, None, None, None


def _chunked(q, k, v, mask: KeepMask, block_elements: int) -> tuple[Tensor, Tensor]:
    rows = _block_rows(mask, q.shape[0], q.shape[1], block_elements)
    out, kept = _ChunkedAttention.apply(q, k, v, mask, q.shape[-1] ** -0.5, rows)
    return out, kept / (q.shape[0] * q.shape[1] * mask.nq * mask.nk)


def _dense_with_empty_rows(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Give fully masked rows all keys (finite softmax) and return the row-validity factor that zeroes them."""
    valid = mask.any(-1, keepdim=True)
    return mask | ~valid, valid


def _sdpa(q, k, v, mask: KeepMask) -> tuple[Tensor, Tensor]:
    dense = mask.dense()
    safe, valid = _dense_with_empty_rows(dense)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe) * valid.to(q.dtype)
    return out, dense.double().mean()


_COMPILED_FLEX: dict[str, Callable] = {}
FLEX_TILE = 128  # FlexAttention's default BlockMask tile (queries x keys)


def tile_flags(mask: KeepMask, tile: int = FLEX_TILE, block_elements: int = 1 << 21) -> tuple[Tensor, Tensor]:
    """Which ``tile x tile`` tiles of ``mask`` keep any pair and which keep all: two ``(B|1, H|1, Tq, Tk)`` bool
    tensors (``Tq = ceil(Nq / tile)``, ``Tk = ceil(Nk / tile)``; positions past the end count as not kept, as in
    ``create_block_mask``).

    Exact, without an ``Nq x Nk`` tensor: the mask is evaluated in strips of query rows (:meth:`KeepMask.block`, at
    most ``block_elements`` pairs over the batch and heads, at least 16 rows) and each strip is reduced to its tiles.
    Peak memory is one strip plus the flags.
    """
    if tile < 16 or tile & (tile - 1):
        raise ValueError(f"flex tile must be a power of two >= 16, got {tile}")
    (batch, heads), nq, nk = mask.shape, mask.nq, mask.nk
    tq, tk = -(-nq // tile), -(-nk // tile)
    fit = max(1, block_elements // max(1, batch * heads * nk))
    rows = tile * (fit // tile) if fit >= tile else max(16, 1 << (fit.bit_length() - 1))  # divides the tile
    group = min(rows, tile)  # rows reduced together: a whole tile, or a part of one
    hit = full = None
    for q0 in range(0, nq, rows):
        q1 = min(nq, q0 + rows)
        padded = -(-(q1 - q0) // group) * group
        keep = F.pad(mask.block(q0, q1), (0, tk * tile - nk, 0, padded - (q1 - q0)))
        if hit is None:
            hit = torch.zeros(batch, heads, tq, tk, dtype=torch.bool, device=keep.device)
            full = torch.ones_like(hit)
        keep = keep.view(batch, heads, padded // group, group, tk, tile)
        any_, all_ = keep.any(5).any(3), keep.all(5).all(3)  # (B, H, padded / group, Tk)
        t0 = q0 // tile
        if group < tile:  # one part of tile t0
            hit[:, :, t0] |= any_[:, :, 0]
            full[:, :, t0] &= all_[:, :, 0]
        else:
            hit[:, :, t0:t0 + any_.shape[2]], full[:, :, t0:t0 + any_.shape[2]] = any_, all_
    if isinstance(mask, LSHKeepMask):
        mask.release()
    if nq % tile:  # the last query tile has rows past the end
        full[:, :, -1] = False
    return hit, full


def _ordered(tiles: Tensor) -> tuple[Tensor, Tensor]:
    """``(B, H, Tq, Tk)`` bool tiles -> per query tile the count and the indices (set ones first) of its key tiles."""
    tiles = tiles.to(torch.int32)
    return tiles.sum(-1, dtype=torch.int32), torch.argsort(tiles, dim=-1, descending=True, stable=True).to(torch.int32)


def flex_block_mask(mask: KeepMask, device: torch.device, block_elements: int = 1 << 21, tile: int = FLEX_TILE):
    """The FlexAttention ``BlockMask`` of ``mask`` (``mask_mod`` = :meth:`KeepMask.mask_mod`), built without an
    ``Nq x Nk`` tensor.

    Uncompiled ``create_block_mask`` evaluates the ``mask_mod`` on every pair at once: a dense ``(B, H, Nq, Nk)`` mask
    plus int64 intermediates of that size (gigabytes at 8k tokens). Here:

    - LSH masks: every tile is partial (the kernel applies the ``mask_mod`` everywhere). The kept pairs are
      scattered, so at useful sparsities every tile keeps some pair anyway (tested), and finding the rare empty tile
      would cost an exact pass over all pairs, about as much arithmetic as the attention itself. Memory
      ``O(B * H * Tq * Tk)``.
    - Other masks (static patterns, explicit masks): the exact partial and full tiles of :func:`tile_flags`, so
      window and global patterns skip the tiles they do not touch and full tiles skip the ``mask_mod``.
    """
    from torch.nn.attention.flex_attention import BlockMask

    (batch, heads), nq, nk = mask.shape, mask.nq, mask.nk
    if isinstance(mask, LSHKeepMask):
        hit = torch.ones(batch, heads, -(-nq // tile), -(-nk // tile), dtype=torch.bool, device=device)
        full = torch.zeros_like(hit)
    else:
        hit, full = tile_flags(mask, tile, block_elements)
        hit, full = hit.to(device), full.to(device)
    kv_num_blocks, kv_indices = _ordered(hit & ~full)
    full_num_blocks, full_indices = _ordered(full)
    return BlockMask.from_kv_blocks(kv_num_blocks, kv_indices, full_num_blocks, full_indices, BLOCK_SIZE=tile,
                                    mask_mod=mask.mask_mod(), seq_lengths=(nq, nk))


def _flex(q, k, v, mask: KeepMask, block_elements: int = 1 << 21) -> Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type == "cpu" and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise RuntimeError("t_attn_backend=flex: FlexAttention has no backward on CPU in this torch version; "
                           "use t_attn_backend=chunked for CPU training")
    block_mask = flex_block_mask(mask, q.device, block_elements)
    if q.device.type == "cuda":
        fn = _COMPILED_FLEX.setdefault("cuda", torch.compile(flex_attention, dynamic=False))
        return fn(q, k, v, block_mask=block_mask)
    with warnings.catch_warnings():  # eager (unfused) FlexAttention off CUDA: correct, and documented as slow
        warnings.simplefilter("ignore", UserWarning)
        return flex_attention(q, k, v, block_mask=block_mask)


def _xformers(q, k, v, mask: KeepMask) -> Tensor:
    try:
        import xformers.ops as xops
    except ImportError as err:
        raise ImportError("t_attn_backend=xformers needs the optional xformers package (pip install xformers); "
                          "use chunked or flex instead") from err
    safe, valid = _dense_with_empty_rows(mask.dense())
    bias = torch.zeros(safe.shape, dtype=q.dtype, device=q.device).masked_fill_(~safe, -math.inf)
    bias = bias.expand(q.shape[0], q.shape[1], -1, -1)
    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
    return out.transpose(1, 2) * valid.to(q.dtype)


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"t_attn_backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "flex" if device.type == "cuda" else "chunked"
    return backend


def masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: KeepMask | Tensor, backend: str = "chunked",
                     block_elements: int = 1 << 21) -> tuple[Tensor, Tensor | None]:
    """Softmax attention of ``q (B, H, Nq, D)`` over the kept pairs of ``mask`` (scale ``D**-0.5``).

    Returns ``(out (B, H, Nq, D), achieved sparsity)``; the sparsity (fraction of pairs removed) is a 0-dim tensor
    for the ``chunked`` and ``sdpa`` backends and None for the others (computing it would need a dense pass).
    ``block_elements`` bounds the score block of the chunked kernel (``B * H * bq * Nk`` elements).
    """
    if isinstance(mask, Tensor):
        mask = DenseKeepMask(mask)
    if (mask.nq, mask.nk) != (q.shape[2], k.shape[2]):
        raise ValueError(f"keep-mask is {mask.nq}x{mask.nk} but attention is {q.shape[2]}x{k.shape[2]}")
    backend = resolve_backend(backend, q.device)
    if backend == "chunked":
        out, kept = _chunked(q, k, v, mask, block_elements)
        return out, 1 - kept
    if backend == "sdpa":
        out, kept = _sdpa(q, k, v, mask)
        return out, 1 - kept
    if backend == "flex":
        return _flex(q, k, v, mask, block_elements), None
    return _xformers(q, k, v, mask), None


# ----------------------------------------------------------------------------------------------------------------
# Module
# ----------------------------------------------------------------------------------------------------------------
def parse_mask_type(mask_type: str) -> set[str]:
    """``"diag_global_random"`` -> {"diag", "global", "random"} (the reference's ``t_mask_type`` syntax)."""
    parts = {p for p in mask_type.split("_") if p}
    unknown = parts - set(MASK_PARTS)
    if unknown or not parts:
        raise ValueError(f"t_mask_type {mask_type!r}: expected '_'-joined parts of {MASK_PARTS}")
    return parts


class SparseAttention(nn.Module):
    """Attention core (no projections, no parameters) over LSH-selected and/or static sparse pairs.

    ``forward(q (B, H, Nq, D), k (B, H, Nk, D), v (B, H, Nk, D)) -> (B, H, Nq, D)``, scale ``D**-0.5``.

    Args:
        lsh: select pairs by LSH match counts (the paper's Sparse HT Demucs; ``t_auto_sparsity``).
        sparsity: fraction of pairs removed by the LSH selection (``t_sparsity``).
        rounds, n_buckets: LSH rounds and buckets per round (``t_lsh_rounds``, ``t_lsh_buckets``).
        window, global_window, random_keep: static pattern (united with the LSH pairs when ``lsh``);
            ``random_keep`` is the kept fraction of the random part.
        backend: ``auto | sdpa | flex | chunked | xformers`` (``t_attn_backend``).
        seed: seed of every random draw (projections, tie-break, calibration, random pattern).
        resample: in training, draw new projections at every forward (a seeded sequence); in eval they are always
            the ones of ``seed``.
        calibration_samples: pairs sampled per (batch, head) to set the threshold.
        block_elements: size bound of the chunked kernel's score block.
    """

    def __init__(self, lsh: bool = True, sparsity: float = 0.9, rounds: int = 32, n_buckets: int = 4,
                 window: int | None = None, global_window: int = 0, random_keep: float = 0.0,
                 backend: str = "auto", seed: int = 42, resample: bool = True, calibration_samples: int = 16384,
                 block_elements: int = 1 << 21):
        super().__init__()
        resolve_backend(backend, torch.device("cpu"))
        self.lsh, self.sparsity, self.rounds, self.n_buckets = lsh, sparsity, rounds, n_buckets
        self.pattern = StaticPattern(window, global_window, random_keep, seed)
        if not lsh and self.pattern.empty:
            raise ValueError("sparse attention without LSH needs a static pattern (window, global or random)")
        self.backend, self.seed, self.resample = backend, seed, resample
        self.calibration_samples, self.block_elements = calibration_samples, block_elements
        self._train_generator = torch.Generator().manual_seed(seed)
        self.last_sparsity: Tensor | None = None

    def extra_repr(self) -> str:
        return (f"lsh={self.lsh}, sparsity={self.sparsity}, rounds={self.rounds}, n_buckets={self.n_buckets}, "
                f"window={self.pattern.window}, global_window={self.pattern.global_window}, backend={self.backend}")

    def keep_mask(self, q: Tensor, k: Tensor) -> KeepMask:
        if not self.lsh:
            return PatternKeepMask(self.pattern, q.shape[2], k.shape[2], q.device)
        if self.training and self.resample:
            generator = self._train_generator
        else:
            generator = torch.Generator().manual_seed(self.seed)
        return lsh_keep_mask(q, k, self.sparsity, self.rounds, self.n_buckets, generator, self.pattern,
                             self.calibration_samples)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out, sparsity = masked_attention(q, k, v, self.keep_mask(q, k), self.backend, self.block_elements)
        self.last_sparsity = None if sparsity is None else sparsity.detach()
        return out
