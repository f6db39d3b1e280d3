"""Cross-domain transformer encoder of Hybrid Transformer Demucs (HT Demucs, Rouard et al. 2023).

Two token streams, the spectral one (``(B, C, F, T1)`` flattened time-major into ``T1·F`` tokens) and the temporal
one (``(B, C, T2)`` as ``T2`` tokens), go through ``num_layers`` layers that alternate

* **self-attention** layers (separate weights per stream; even indices when ``cross_first=False``), and
* **cross-attention** layers: spectral queries attend to temporal tokens, and temporal queries attend to the
  spectral tokens *as they were before this layer*.

Every layer is pre-norm (``norm_first``) with LayerNorm, 8 heads, a GELU FFN of width ``hidden_scale·dim``, residual
branches scaled by a learnt :class:`~mss.models.blocks.LayerScale` (init ``1e-4``) and, with ``norm_out``, a
``GroupNorm(1, dim)`` over all tokens × channels ("time layer norm") at the end of the layer. Inputs are
LayerNorm-ed (``norm_in``) and get a 2-D sinusoidal embedding (spectral tokens: first half of the channels encodes
the frame, second half the frequency bin) or a 1-D one (temporal tokens).

Attention goes through :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient kernels
on GPU) in exactly one place, :meth:`MultiheadAttention.attend`, so alternative (e.g. sparse) attention can be
swapped in there. Parameter names equal those of the reference package (``torch.nn.MultiheadAttention`` /
``TransformerEncoderLayer`` layouts), so its state dicts load 1:1.

Shape legend: ``B`` batch, ``C`` channels (= ``dim``), ``F`` frequency bins, ``T1`` spectral frames, ``T2`` temporal
steps, ``N`` tokens, ``H`` heads, ``D`` head dimension.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mss.models.attention import SparseAttention, parse_mask_type
from mss.models.blocks import LayerScale
from mss.models.hybrid import ScaledEmbedding

__all__ = ["CrossTransformerEncoder", "CrossTransformerEncoderLayer", "MultiheadAttention",
           "MyTransformerEncoderLayer", "create_2d_sin_embedding", "create_sin_embedding"]

_EMBEDDINGS = ("sin", "cape", "scaled")


def create_sin_embedding(length: int, dim: int, shift: int = 0, device: torch.device | str = "cpu",
                         max_period: float = 10000.0) -> Tensor:
    """1-D sinusoidal embedding ``(length, dim)``: ``[cos(p·w_k), sin(p·w_k)]`` with ``w_k = max_period^(-k/(dim/2-1))``
    and positions ``p = shift, …, shift + length - 1``."""
    if dim % 2:
        raise ValueError(f"sinusoidal embedding needs an even dimension, got {dim}")
    pos = shift + torch.arange(length, device=device).view(-1, 1)
    return _sin_cos(pos, dim, max_period, device)


def _sin_cos(pos: Tensor, dim: int, max_period: float, device) -> Tensor:
    half = dim // 2
    adim = torch.arange(half, device=device).view(1, -1)
    phase = pos / (max_period ** (adim / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


_EMB_2D_CACHE: dict[tuple, Tensor] = {}


def create_2d_sin_embedding(d_model: int, height: int, width: int, device: torch.device | str = "cpu",
                            max_period: float = 10000.0) -> Tensor:
    """2-D sinusoidal embedding of a ``(height=F, width=T1)`` grid, as tokens ``(T1·F, d_model)`` (time-major).

    Channels ``[0, d/2)`` encode the width (time) position, ``[d/2, d)`` the height (frequency) position, each as
    interleaved ``sin, cos`` pairs with frequencies ``max_period^(-2k/(d/2))``. Cached per shape and device.
    """
    if d_model % 4:
        raise ValueError(f"2-D sinusoidal embedding needs a dimension divisible by 4, got {d_model}")
    key = (d_model, height, width, str(device), float(max_period))
    cached = _EMB_2D_CACHE.get(key)
    if cached is not None:
        return cached
    half = d_model // 2
    div = torch.exp(torch.arange(0.0, half, 2) * -(math.log(max_period) / half))  # half/2
    pos_w = torch.arange(0.0, width).unsqueeze(1) * div  # T1 half/2
    pos_h = torch.arange(0.0, height).unsqueeze(1) * div  # F half/2
    pe = torch.zeros(width, height, d_model)
    pe[:, :, 0:half:2] = torch.sin(pos_w)[:, None]
    pe[:, :, 1:half:2] = torch.cos(pos_w)[:, None]
    pe[:, :, half::2] = torch.sin(pos_h)[None]
    pe[:, :, half + 1::2] = torch.cos(pos_h)[None]
    pe = pe.reshape(width * height, d_model).to(device)
    if len(_EMB_2D_CACHE) > 32:
        _EMB_2D_CACHE.clear()
    _EMB_2D_CACHE[key] = pe
    return pe


def create_sin_embedding_cape(length: int, dim: int, batch_size: int, mean_normalize: bool, augment: bool,
                              max_global_shift: float = 0.0, max_local_shift: float = 0.0, max_scale: float = 1.0,
                              device: torch.device | str = "cpu", max_period: float = 10000.0) -> Tensor:
    """CAPE embedding (Likhomanenko et al. 2021) ``(batch_size, length, dim)``: sinusoids of mean-centred positions,
    with a random global shift, local jitter and global log-uniform scale per example when ``augment``."""
    pos = torch.arange(length, dtype=torch.float32, device=device).view(1, -1, 1).repeat(batch_size, 1, 1)
    if mean_normalize:
        pos = pos - pos.mean(dim=1, keepdim=True)
    if augment:
        def uniform(*shape, bound):
            return (torch.rand(*shape, device=device) * 2 - 1) * bound
        delta = uniform(batch_size, 1, 1, bound=max_global_shift)
        delta_local = uniform(batch_size, length, 1, bound=max_local_shift)
        log_lambdas = uniform(batch_size, 1, 1, bound=math.log(max_scale))
        pos = (pos + delta + delta_local) * torch.exp(log_lambdas)
    return _sin_cos(pos, dim, max_period, device).float()


class TokenGroupNorm(nn.GroupNorm):
    """GroupNorm over channel-last tokens ``(B, N, C)`` (``num_groups=1``: statistics over all tokens × channels,
    the "time layer norm"); parameters ``weight``/``bias`` of size ``C`` like :class:`torch.nn.GroupNorm`."""

    def forward(self, x: Tensor) -> Tensor:
        if self.num_groups == 1:  # same statistics as group_norm on (B, C, N), without two transposes
            y = F.layer_norm(x, x.shape[-2:], eps=self.eps)
            return torch.addcmul(self.bias, y, self.weight) if self.affine else y
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class MultiheadAttention(nn.Module):
    """Multi-head attention on batch-first tokens, parameters laid out like :class:`torch.nn.MultiheadAttention`
    (``in_proj_weight`` ``(3C, C)``, ``in_proj_bias``, ``out_proj``).

    ``forward(query (B, Nq, C), key_value (B, Nk, C) | None) -> (B, Nq, C)``; ``key_value=None`` is self-attention.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, sparse: SparseAttention | None = None):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.sparse = sparse  # parameter-free: the state dict is the dense one
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, -1).transpose(1, 2)  # B H N D

    def forward(self, query: Tensor, key_value: Tensor | None = None) -> Tensor:
        if key_value is None:
            q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            dim = self.embed_dim
            q = F.linear(query, self.in_proj_weight[:dim], self.in_proj_bias[:dim])
            k, v = F.linear(key_value, self.in_proj_weight[dim:], self.in_proj_bias[dim:]).chunk(2, dim=-1)
        out = self.attend(self._heads(q), self._heads(k), self._heads(v))  # B H Nq D
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.embed_dim))

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Scaled dot-product attention ``(B, H, Nq, D), (B, H, Nk, D) x2 -> (B, H, Nq, D)``: dense SDPA, or the
        sparse attention of :mod:`mss.models.attention` when configured."""
        if self.sparse is not None:
            return self.sparse(q, k, v)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)


class _LayerBase(nn.Module):
    """Shared parts of the self- and cross-attention layers: FFN, LayerScale, norms, dropouts."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, activation: str,
                 group_norm: int, norm_first: bool, norm_out: bool, layer_norm_eps: float, layer_scale: bool,
                 init_values: float, n_norms: int):
        super().__init__()
        if activation not in ("gelu", "relu"):
            raise ValueError(f"activation must be 'gelu' or 'relu', got {activation!r}")
        self.activation = F.gelu if activation == "gelu" else F.relu
        self.norm_first = norm_first
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        for i in range(1, n_norms + 1):
            norm = (TokenGroupNorm(int(group_norm), d_model, eps=layer_norm_eps) if group_norm
                    else nn.LayerNorm(d_model, eps=layer_norm_eps))
            setattr(self, f"norm{i}", norm)
        self.norm_out = TokenGroupNorm(int(norm_out), d_model) if norm_first and norm_out else None
        self.gamma_1 = LayerScale(d_model, init_values, True) if layer_scale else nn.Identity()
        self.gamma_2 = LayerScale(d_model, init_values, True) if layer_scale else nn.Identity()
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def _ff_block(self, x: Tensor) -> Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))


class MyTransformerEncoderLayer(_LayerBase):
    """Self-attention layer ``(B, N, C) -> (B, N, C)``: ``x += γ1·SA(LN1 x)``; ``x += γ2·FFN(LN2 x)``; ``GN(x)``
    (pre-norm; post-norm when ``norm_first=False``)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str = "relu", group_norm: int = 0, norm_first: bool = False, norm_out: bool = False,
                 layer_norm_eps: float = 1e-5, layer_scale: bool = False, init_values: float = 1e-4,
                 sparse: SparseAttention | None = None):
        super().__init__(d_model, nhead, dim_feedforward, dropout, activation, group_norm, norm_first, norm_out,
                         layer_norm_eps, layer_scale, init_values, n_norms=2)
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, sparse=sparse)

    def _sa_block(self, x: Tensor) -> Tensor:
        return self.dropout1(self.self_attn(x))

    def forward(self, x: Tensor) -> Tensor:
        if self.norm_first:
            x = x + self.gamma_1(self._sa_block(self.norm1(x)))
            x = x + self.gamma_2(self._ff_block(self.norm2(x)))
            return self.norm_out(x) if self.norm_out is not None else x
        x = self.norm1(x + self.gamma_1(self._sa_block(x)))
        return self.norm2(x + self.gamma_2(self._ff_block(x)))


class CrossTransformerEncoderLayer(_LayerBase):
    """Cross-attention layer ``q (B, Nq, C), k (B, Nk, C) -> (B, Nq, C)``:
    ``x = q + γ1·CA(LN1 q, LN2 k)``; ``x += γ2·FFN(LN3 x)``; ``GN(x)``."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str = "relu", group_norm: int = 0, norm_first: bool = False, norm_out: bool = False,
                 layer_norm_eps: float = 1e-5, layer_scale: bool = False, init_values: float = 1e-4,
                 sparse: SparseAttention | None = None):
        super().__init__(d_model, nhead, dim_feedforward, dropout, activation, group_norm, norm_first, norm_out,
                         layer_norm_eps, layer_scale, init_values, n_norms=3)
        self.cross_attn = MultiheadAttention(d_model, nhead, dropout=dropout, sparse=sparse)

    def _ca_block(self, q: Tensor, k: Tensor) -> Tensor:
        return self.dropout1(self.cross_attn(q, k))

    def forward(self, q: Tensor, k: Tensor) -> Tensor:
        if self.norm_first:
            x = q + self.gamma_1(self._ca_block(self.norm1(q), self.norm2(k)))
            x = x + self.gamma_2(self._ff_block(self.norm3(x)))
            return self.norm_out(x) if self.norm_out is not None else x
        x = self.norm1(q + self.gamma_1(self._ca_block(q, k)))
        return self.norm2(x + self.gamma_2(self._ff_block(x)))


class CrossTransformerEncoder(nn.Module):
    """Interleaved self/cross-attention encoder over a spectral and a temporal token stream.

    ``forward(x (B, C, F, T1), xt (B, C, T2)) -> (x (B, C, F, T1), xt (B, C, T2))``.

    Args:
        dim: channels ``C`` (multiple of ``num_heads``; of 4 for the 2-D embedding).
        emb: temporal positional embedding: ``"sin"``, ``"cape"`` or ``"scaled"`` (learnt).
        hidden_scale: FFN width / ``dim``.
        num_heads, num_layers: heads per attention, layers per stream.
        cross_first: start with a cross-attention layer (default: self-attention first).
        dropout: dropout in attention, FFN and residual branches.
        max_positions: table size of the ``"scaled"`` embedding.
        norm_in, norm_in_group: LayerNorm (or, with ``norm_in_group``, GroupNorm) on the inputs.
        group_norm: use GroupNorm(group_norm) instead of LayerNorm inside the layers.
        norm_first: pre-norm layers. norm_out: GroupNorm(1) at the end of every (pre-norm) layer.
        max_period: sinusoid period base. weight_pos_embed: weight of the positional embeddings.
        layer_scale: LayerScale (init 1e-4) on the residual branches. gelu: GELU (else ReLU) FFN activation.
        sin_random_shift: random offset (0..shift) of the temporal sinusoid positions in training.
        cape_mean_normalize, cape_augment, cape_glob_loc_scale: CAPE settings (``emb="cape"``).
        sparse_self_attn, sparse_cross_attn: use sparse attention (:mod:`mss.models.attention`) in the self- /
            cross-attention layers; parameter-free, so the state dict equals the dense one.
        auto_sparsity, sparsity, lsh_rounds, lsh_buckets, lsh_resample: LSH-selected pairs (Sparse HT Demucs), the
            fraction of pairs removed, rounds x buckets, fresh hashes at every training forward.
        mask_type, sparse_attn_window, global_window: static pattern when ``auto_sparsity`` is False
            (``_``-joined ``diag`` / ``global`` / ``random``; ``random`` keeps ``1 - sparsity`` of the pairs).
        mask_random_seed: seed of the sparse attention (layer ``l`` of the spectral / temporal stream uses
            ``seed + 2 l`` / ``seed + 2 l + 1``). attn_backend: ``auto | chunked | flex | sdpa | xformers``.
    """

    def __init__(self, dim: int, emb: str = "sin", hidden_scale: float = 4.0, num_heads: int = 8,
                 num_layers: int = 6, cross_first: bool = False, dropout: float = 0.0, max_positions: int = 1000,
                 norm_in: bool = True, norm_in_group: bool = False, group_norm: int = False,
                 norm_first: bool = False, norm_out: bool = False, max_period: float = 10000.0,
                 layer_scale: bool = False, gelu: bool = True,
                 sin_random_shift: int = 0, weight_pos_embed: float = 1.0, cape_mean_normalize: bool = True,
                 cape_augment: bool = True, cape_glob_loc_scale: tuple[float, float, float] = (5000.0, 1.0, 1.4),
                 sparse_self_attn: bool = False, sparse_cross_attn: bool = False, mask_type: str = "diag",
                 mask_random_seed: int = 42, sparse_attn_window: int = 500, global_window: int = 50,
                 auto_sparsity: bool = False, sparsity: float = 0.95, lsh_rounds: int = 32, lsh_buckets: int = 4,
                 lsh_resample: bool = True, attn_backend: str = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"transformer dim {dim} is not divisible by num_heads {num_heads}")
        if emb not in _EMBEDDINGS:
            raise ValueError(f"unknown transformer embedding {emb!r}; expected one of {_EMBEDDINGS}")
        if sparse_self_attn or sparse_cross_attn:
            parts = set() if auto_sparsity else parse_mask_type(mask_type)
            sparse_kwargs = dict(lsh=auto_sparsity, sparsity=sparsity, rounds=lsh_rounds, n_buckets=lsh_buckets,
                                 window=sparse_attn_window if "diag" in parts else None,
                                 global_window=global_window if "global" in parts else 0,
                                 random_keep=1.0 - sparsity if "random" in parts else 0.0, backend=attn_backend,
                                 resample=lsh_resample)
        self.num_layers = num_layers
        self.classic_parity = 1 if cross_first else 0
        self.emb = emb
        self.max_period = max_period
        self.weight_pos_embed = weight_pos_embed
        self.sin_random_shift = sin_random_shift
        if emb == "cape":
            self.cape_mean_normalize = cape_mean_normalize
            self.cape_augment = cape_augment
            self.cape_glob_loc_scale = list(cape_glob_loc_scale)
        if emb == "scaled":
            self.position_embeddings = ScaledEmbedding(max_positions, dim, scale=3.0, init=0.2)
        if norm_in:
            self.norm_in, self.norm_in_t = nn.LayerNorm(dim), nn.LayerNorm(dim)
        elif norm_in_group:
            self.norm_in, self.norm_in_t = TokenGroupNorm(int(norm_in_group), dim), TokenGroupNorm(
                int(norm_in_group), dim)
        else:
            self.norm_in, self.norm_in_t = nn.Identity(), nn.Identity()
        kwargs = dict(d_model=dim, nhead=num_heads, dim_feedforward=int(dim * hidden_scale), dropout=dropout,
                      activation="gelu" if gelu else "relu", group_norm=group_norm, norm_first=norm_first,
                      norm_out=norm_out, layer_scale=layer_scale)
        self.layers = nn.ModuleList()  # spectral stream
        self.layers_t = nn.ModuleList()  # temporal stream
        for idx in range(num_layers):
            is_self = idx % 2 == self.classic_parity
            klass = MyTransformerEncoderLayer if is_self else CrossTransformerEncoderLayer
            for stream, layers in enumerate((self.layers, self.layers_t)):
                sparse = None
                if sparse_self_attn if is_self else sparse_cross_attn:
                    sparse = SparseAttention(**sparse_kwargs, seed=mask_random_seed + 2 * idx + stream)
                layers.append(klass(**kwargs, sparse=sparse))

    def forward(self, x: Tensor, xt: Tensor) -> tuple[Tensor, Tensor]:
        b, c, fr, t1 = x.shape
        x = x.permute(0, 3, 2, 1).reshape(b, t1 * fr, c)  # time-major tokens
        pos_2d = create_2d_sin_embedding(c, fr, t1, x.device, self.max_period).to(x.dtype)
        x = self.norm_in(x) + self.weight_pos_embed * pos_2d
        t2 = xt.shape[-1]
        xt = xt.transpose(1, 2)
        xt = self.norm_in_t(xt) + self.weight_pos_embed * self._get_pos_embedding(t2, b, c, x.device).to(x.dtype)

        for idx in range(self.num_layers):
            if idx % 2 == self.classic_parity:
                x = self.layers[idx](x)
                xt = self.layers_t[idx](xt)
            else:
                old_x = x
                x = self.layers[idx](x, xt)
                xt = self.layers_t[idx](xt, old_x)
        x = x.view(b, t1, fr, c).permute(0, 3, 2, 1)
        return x, xt.transpose(1, 2)

    def _get_pos_embedding(self, length: int, batch: int, dim: int, device) -> Tensor:
        """Temporal positional embedding, ``(length, dim)`` or ``(batch, length, dim)``."""
        if self.emb == "sin":
            shift = int(torch.randint(self.sin_random_shift + 1, ())) if self.training else 0
            return create_sin_embedding(length, dim, shift=shift, device=device, max_period=self.max_period)
        if self.emb == "cape":
            glob, loc, scale = self.cape_glob_loc_scale
            return create_sin_embedding_cape(length, dim, batch, mean_normalize=self.cape_mean_normalize,
                                             augment=self.cape_augment and self.training, max_global_shift=glob,
                                             max_local_shift=loc, max_scale=scale, device=device,
                                             max_period=self.max_period)
        return self.position_embeddings(torch.arange(length, device=device))
