"""Band-split RoPE Transformer separators (BS-RoFormer, Mel-Band RoFormer): shared building blocks and the generic
separator :class:`BandRoformer` that :mod:`mss.models.bs_roformer` and :mod:`mss.models.mel_roformer` specialise
with their band tables.

Pipeline of :class:`BandRoformer` (Lu et al. 2023, Wang et al. 2023):

1. complex STFT of the mixture in float32 (periodic Hann, ``center=True``, reflect padding), also under autocast;
2. stereo folded into frequency **bin-major**: every band's input vector is ``(bin, channel, re/im)`` of length
   ``2 * f_b * C``; bands are lists of bins (contiguous and disjoint for BS, overlapping mel bands for Mel, whose
   shared bins are gathered twice);
3. per band ``RMSNorm -> Linear(2 f_b C, D)``, stacked to ``(B, N, K, D)`` (``N`` frames, ``K`` bands);
4. ``depth`` blocks of [optional linear-attention Transformer over all ``N * K`` tokens], a time Transformer
   (sequence ``N`` for every band) and a band Transformer (sequence ``K`` for every frame). Pre-norm attention with
   RoPE on queries and keys (one rotary table for every time layer and one for every band layer), PyTorch SDPA
   (flash / memory-efficient kernels on GPU), optional sigmoid per-head output gates; GELU feed-forward ``4D``;
5. per stem and band a mask MLP (optional RMSNorm, ``hidden_layers`` x ``Linear + Tanh`` of width
   ``mlp_expansion * D``, ``Linear(., 2 * 2 f_b C)``, GLU) giving an unbounded complex mask per bin and channel;
   overlapping band masks are averaged per bin;
6. complex multiplication with the mixture STFT, optional zeroing of the DC bin, float32 iSTFT with the input length.

Norm placement options cover the paper (``mask_norm``: per-band RMSNorm inside every mask MLP), lucidrains / MSST
BS-RoFormer (``final_norm``: one RMSNorm after the stack) and Mel-RoFormer (``transformer_norm``: an RMSNorm at the end
of every time / band / linear Transformer).

Shape legend: ``B`` batch, ``S`` stems, ``C`` audio channels, ``T`` samples, ``F`` STFT bins, ``N`` frames,
``K`` bands, ``D`` model width, ``H`` heads, ``E`` head width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F_
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mss.audio.spectral import istft, istft_pairs, pair_mul, real_valued_active, stft, stft_pairs
from mss.models.base import Separator

__all__ = ["BandRoformer", "BandSplit", "MaskHead", "RMSNorm", "RotaryEmbedding", "Transformer"]


class RMSNorm(nn.Module):
    """``x / ||x|| * sqrt(dim) * weight`` over the last axis (no epsilon beyond ``F.normalize``'s 1e-12)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim ** 0.5
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F_.normalize(x, dim=-1) * self.scale * self.weight


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over the full head width ``E`` (interleaved pairs, base ``theta``).

    Pair ``(x[2i], x[2i+1])`` at position ``p`` is rotated by ``p * theta^(-2i/E)``. The frequencies are a frozen
    ``nn.Parameter`` (``E / 2`` values): they count as parameters, as in the reference implementation.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head width, got {head_dim}")
        freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
        self.freqs = nn.Parameter(freqs, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        """Rotate ``x``: ``(..., L, E)`` (sequence on the second-to-last axis); computed in float32."""
        length = x.shape[-2]
        pos = torch.arange(length, device=x.device, dtype=torch.float32)
        angles = torch.outer(pos, self.freqs.float()).repeat_interleave(2, dim=-1)  # L E
        xf = x.float()
        pairs = xf.unflatten(-1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return (xf * angles.cos() + rotated * angles.sin()).to(x.dtype)


class Attention(nn.Module):
    """Pre-norm multi-head self-attention with RoPE: ``(B', L, D) -> (B', L, D)`` (residual added by the caller)."""

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float = 0.0, gates: bool = False):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm = RMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.gate = nn.Linear(dim, heads) if gates else None
        self.out = nn.Linear(heads * head_dim, dim, bias=False)
        self.out_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, rope: RotaryEmbedding | None = None) -> Tensor:
        x = self.norm(x)
        q, k, v = rearrange(self.qkv(x), "b l (three h e) -> three b h l e", three=3, h=self.heads)
        if rope is not None:
            q, k = rope(q), rope(k)
        out = F_.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        if self.gate is not None:
            out = out * rearrange(self.gate(x), "b l h -> b h l 1").sigmoid()
        return self.out_drop(self.out(rearrange(out, "b h l e -> b l (h e)")))


class LinearAttention(nn.Module):
    """Cross-covariance ("linear") attention over the feature axis (El-Nouby et al. 2021), as in lucidrains'
    Mel-Band RoFormer: per head, ``softmax(scale * exp(temperature) * q_n k_n^T)`` is an ``E x E`` map applied to
    ``v``; ``q`` and ``k`` are L2-normalised along the sequence. Cost linear in the sequence length ``L``."""

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float = 0.0, scale: float = 8.0):
        super().__init__()
        self.heads, self.scale = heads, scale
        self.norm = RMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.temperature = nn.Parameter(torch.zeros(heads, 1, 1))
        self.attn_drop = nn.Dropout(dropout)
        self.out = nn.Linear(heads * head_dim, dim, bias=False)

    def forward(self, x: Tensor, rope: RotaryEmbedding | None = None) -> Tensor:
        x = self.norm(x)
        q, k, v = rearrange(self.qkv(x), "b l (three h e) -> three b h e l", three=3, h=self.heads)
        q, k = F_.normalize(q, dim=-1), F_.normalize(k, dim=-1)
        q = q * self.temperature.exp()
        attn = self.attn_drop((q @ k.transpose(-1, -2) * self.scale).softmax(dim=-1))  # B H E E
        return self.out(rearrange(attn @ v, "b h e l -> b l (h e)"))


class FeedForward(nn.Module):
    """Pre-norm ``Linear(D, mult D) -> GELU -> Dropout -> Linear(mult D, D) -> Dropout``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.fc1 = nn.Linear(dim, mult * dim)
        self.fc2 = nn.Linear(mult * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(F_.gelu(self.fc1(self.norm(x))))))


class TransformerLayer(nn.Module):
    """``x = attn(x) + x; x = ff(x) + x``."""

    def __init__(self, attn: nn.Module, ff: FeedForward):
        super().__init__()
        self.attn, self.ff = attn, ff

    def forward(self, x: Tensor, rope: RotaryEmbedding | None = None) -> Tensor:
        x = self.attn(x, rope) + x
        return self.ff(x) + x


class Transformer(nn.Module):
    """``depth`` pre-norm layers over ``(B', L, D)`` sequences, with an optional output RMSNorm.

    Args:
        linear: cross-covariance attention (:class:`LinearAttention`, no RoPE) instead of softmax attention.
        gates: sigmoid per-head output gates (lucidrains / MSST checkpoints; not in the paper).
        norm_output: RMSNorm after the last layer (Mel-RoFormer placement).
    """

    def __init__(self, dim: int, depth: int, heads: int, head_dim: int, attn_dropout: float = 0.0,
                 ff_dropout: float = 0.0, gates: bool = False, linear: bool = False, norm_output: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(LinearAttention(dim, heads, head_dim, attn_dropout) if linear
                             else Attention(dim, heads, head_dim, attn_dropout, gates),
                             FeedForward(dim, 4, ff_dropout))
            for _ in range(depth))
        self.norm = RMSNorm(dim) if norm_output else None

    def forward(self, x: Tensor, rope: RotaryEmbedding | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, rope)
        return x if self.norm is None else self.norm(x)


class BandProjection(nn.Module):
    """One band's ``RMSNorm(k) -> Linear(k, D)``."""

    def __init__(self, width: int, dim: int):
        super().__init__()
        self.norm = RMSNorm(width)
        self.proj = nn.Linear(width, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.norm(x))


class BandSplit(nn.Module):
    """``(B, N, sum_k w_k)`` band-concatenated reals -> ``(B, N, K, D)`` band embeddings."""

    def __init__(self, widths: Sequence[int], dim: int):
        super().__init__()
        self.widths = [int(w) for w in widths]
        self.bands = nn.ModuleList(BandProjection(w, dim) for w in self.widths)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([band(part) for band, part in zip(self.bands, x.split(self.widths, dim=-1))], dim=-2)


class MaskMLP(nn.Module):
    """One band's mask MLP: [RMSNorm] -> ``hidden_layers`` x (Linear + Tanh) -> Linear(., 2 w) -> GLU -> ``w``."""

    def __init__(self, dim: int, width: int, hidden: int, hidden_layers: int, norm: bool):
        super().__init__()
        self.norm = RMSNorm(dim) if norm else None
        dims = [dim] + [hidden] * hidden_layers + [2 * width]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        if self.norm is not None:
            x = self.norm(x)
        for layer in self.layers[:-1]:
            x = torch.tanh(layer(x))
        return F_.glu(self.layers[-1](x), dim=-1)


class MaskHead(nn.Module):
    """One stem's masks: ``(B, N, K, D)`` -> band-concatenated reals ``(B, N, sum_k w_k)``."""

    def __init__(self, dim: int, widths: Sequence[int], hidden_layers: int = 1, mlp_expansion: int = 4,
                 norm: bool = False):
        super().__init__()
        self.bands = nn.ModuleList(MaskMLP(dim, w, mlp_expansion * dim, hidden_layers, norm) for w in widths)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([mlp(band) for mlp, band in zip(self.bands, x.unbind(dim=-2))], dim=-1)


class RoformerBlock(nn.Module):
    """[linear Transformer over all tokens] -> time Transformer (per band) -> band Transformer (per frame)."""

    def __init__(self, linear: Transformer | None, time: Transformer, band: Transformer):
        super().__init__()
        self.linear, self.time, self.band = linear, time, band

    def forward(self, x: Tensor, time_rope: RotaryEmbedding, band_rope: RotaryEmbedding) -> Tensor:
        """``x``: ``(B, N, K, D)`` -> same."""
        batch, frames, bands, _ = x.shape
        if self.linear is not None:
            x = self.linear(x.flatten(1, 2)).unflatten(1, (frames, bands))
        x = rearrange(x, "b n k d -> (b k) n d")
        x = self.time(x, time_rope)
        x = rearrange(x, "(b k) n d -> (b n) k d", b=batch)
        x = self.band(x, band_rope)
        return rearrange(x, "(b n) k d -> b n k d", b=batch)


class BandRoformer(Separator):
    """Generic band-split RoFormer separator: mixture ``(B, C, T)`` -> stems ``(B, S, C, T)``.

    Use :class:`mss.models.bs_roformer.BSRoformer` or :class:`mss.models.mel_roformer.MelRoformer`, which build
    ``bands`` (a list of bin-index lists, one per band, covering every STFT bin at least once).

    Args:
        sources: stem names (one mask head each).
        bands: bins of every band (ascending within a band).
        audio_channels, sample_rate: audio constants.
        dim, depth: model width ``D`` and number of (time, band) blocks ``L``.
        heads, head_dim: attention heads and width per head (paper: 8 x 48 = D; lucidrains / MSST: 8 x 64).
        time_depth, band_depth: Transformer layers per block in each direction (1 in the papers).
        linear_depth: layers of a cross-covariance attention Transformer over all tokens at the start of every block
            (lucidrains Mel default 1; 0 in the papers and the MSST configs).
        attn_dropout, ff_dropout: dropout in attention (weights and output) and feed-forward.
        gates: sigmoid per-head attention gates (lucidrains / MSST).
        final_norm: RMSNorm after the block stack (lucidrains / MSST BS-RoFormer).
        mask_norm: per-band RMSNorm at the input of every mask MLP (paper BS-RoFormer).
        transformer_norm: RMSNorm after every Transformer (lucidrains / MSST Mel-RoFormer).
        mask_hidden_layers, mlp_expansion: hidden layers of each mask MLP and their width in units of ``D``.
        skip_connection: add the outputs of all previous blocks before each block (MSST option).
        n_fft, hop_length: STFT (Hann window of ``n_fft``).
        zero_dc: zero the DC bin of the output spectrograms (MSST default for BS-RoFormer).
        segment_length: samples per chunk for overlap-add inference.
        gradient_checkpointing: recompute each block in the backward pass instead of storing its activations
            (training memory; the paper trains this way).
    """

    def __init__(self, sources: Sequence[str], bands: Sequence[Sequence[int]], *, audio_channels: int = 2,
                 sample_rate: int = 44100, dim: int = 384, depth: int = 6, heads: int = 8, head_dim: int = 48,
                 time_depth: int = 1, band_depth: int = 1, linear_depth: int = 0, attn_dropout: float = 0.1,
                 ff_dropout: float = 0.1, gates: bool = False, final_norm: bool = True, mask_norm: bool = True,
                 transformer_norm: bool = False, mask_hidden_layers: int = 1, mlp_expansion: int = 4,
                 skip_connection: bool = False, n_fft: int = 2048, hop_length: int = 441, zero_dc: bool = False,
                 segment_length: int = 352_800, gradient_checkpointing: bool = False):
        super().__init__(sources, audio_channels, sample_rate, segment_length)
        if segment_length < hop_length:
            raise ValueError(f"segment_length={segment_length} must be >= hop_length={hop_length}")
        n_bins = n_fft // 2 + 1
        bands = [[int(b) for b in band] for band in bands]
        if len(bands) < 2 or any(not band for band in bands):
            raise ValueError(f"need at least 2 bands, none of them empty; got sizes {[len(b) for b in bands]}")
        flat = [b for band in bands for b in band]
        if min(flat) < 0 or max(flat) >= n_bins:
            raise ValueError(f"band bins must lie in [0, {n_bins}) for n_fft={n_fft}")
        counts = [0] * n_bins
        for b in flat:
            counts[b] += 1
        missing = [b for b, c in enumerate(counts) if c == 0]
        if missing:
            raise ValueError(f"bands must cover every one of the {n_bins} STFT bins; missing {missing[:10]}")

        self.n_fft, self.hop_length, self.zero_dc = n_fft, hop_length, zero_dc
        self.skip_connection = skip_connection
        self.gradient_checkpointing = gradient_checkpointing
        self.band_sizes = [len(band) for band in bands]
        # identity gather (contiguous, disjoint, ascending bands covering all bins once): concatenation suffices
        self.overlapping = flat != list(range(n_bins))
        self.register_buffer("bin_index", torch.tensor(flat), persistent=False)
        self.register_buffer("bin_count", torch.tensor(counts, dtype=torch.float32), persistent=False)

        widths = [2 * size * audio_channels for size in self.band_sizes]
        self.band_split = BandSplit(widths, dim)
        self.time_rope = RotaryEmbedding(head_dim)
        self.band_rope = RotaryEmbedding(head_dim)
        kw = dict(dim=dim, heads=heads, head_dim=head_dim, attn_dropout=attn_dropout, ff_dropout=ff_dropout,
                  gates=gates, norm_output=transformer_norm)
        self.blocks = nn.ModuleList(
            RoformerBlock(Transformer(depth=linear_depth, linear=True, **kw) if linear_depth > 0 else None,
                          Transformer(depth=time_depth, **kw), Transformer(depth=band_depth, **kw))
            for _ in range(depth))
        self.final_norm = RMSNorm(dim) if final_norm else None
        self.mask_heads = nn.ModuleList(MaskHead(dim, widths, mask_hidden_layers, mlp_expansion, mask_norm)
                                        for _ in self.sources)

    def _spectrogram(self, mix: Tensor) -> Tensor:
        """Complex float32 STFT ``(B, C, T) -> (B, C, F, N)`` (reflect padding when the input is long enough)."""
        pad_mode = "reflect" if mix.shape[-1] > self.n_fft // 2 else "constant"
        if real_valued_active():  # ONNX export: real pairs (B, C, F, N, 2)
            return stft_pairs(mix.float(), self.n_fft, self.hop_length, pad_mode=pad_mode)
        return stft(mix.float(), self.n_fft, self.hop_length, pad_mode=pad_mode)

    def _band_features(self, spec: Tensor) -> Tensor:
        """``(B, C, F, N)`` complex -> band-concatenated reals ``(B, N, sum_k 2 f_k C)`` ordered (bin, channel,
        re/im) within each band."""
        x = rearrange(spec if spec.dim() == 5 else torch.view_as_real(spec), "b c f n r -> b n f (c r)")
        if self.overlapping:
            x = x.index_select(2, self.bin_index)
        return x.flatten(2)

    def _merge_masks(self, masks: Tensor) -> Tensor:
        """Band-concatenated mask reals ``(B, S, N, sum_k 2 f_k C)`` -> complex masks ``(B, S, C, F, N)``, averaged
        over the bands that share a bin."""
        masks = rearrange(masks.float(), "b s n (g c r) -> b s c g n r", c=self.audio_channels, r=2)
        pairs = real_valued_active()  # ONNX export: real pairs (B, S, C, F, N, 2)
        if not pairs:
            masks = torch.view_as_complex(masks.contiguous())
        if not self.overlapping:
            return masks
        merged = masks.new_zeros(*masks.shape[:3], self.bin_count.numel(), *masks.shape[4:])
        merged.index_add_(3, self.bin_index, masks)
        return merged / (self.bin_count[:, None, None] if pairs else self.bin_count[:, None])

    def forward(self, mix: Tensor) -> Tensor:
        """Separate ``mix``: ``(B, C, T)`` -> ``(B, S, C, T)`` (same ``T``)."""
        self.check_mixture(mix)
        length = mix.shape[-1]
        device_type = mix.device.type
        with torch.autocast(device_type, enabled=False):
            spec = self._spectrogram(mix)  # B C F N, float32 even under autocast
        x = self.band_split(self._band_features(spec))  # B N K D
        outputs: list[Tensor] = []
        for block in self.blocks:
            if self.skip_connection and outputs:
                x = x + sum(outputs)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, self.time_rope, self.band_rope, use_reentrant=False)
            else:
                x = block(x, self.time_rope, self.band_rope)
            if self.skip_connection:
                outputs.append(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
        masks = torch.stack([head(x) for head in self.mask_heads], dim=1)  # B S N sum_k w_k
        with torch.autocast(device_type, enabled=False):
            if real_valued_active():  # ONNX export: real pairs
                out = pair_mul(self._merge_masks(masks), spec.unsqueeze(1))  # B S C F N 2
                if self.zero_dc:
                    out = torch.cat([torch.zeros_like(out[..., :1, :, :]), out[..., 1:, :, :]], dim=-3)
                return istft_pairs(out, self.n_fft, self.hop_length, length)
            out = self._merge_masks(masks) * spec.unsqueeze(1)  # B S C F N
            if self.zero_dc:
                out = torch.cat([torch.zeros_like(out[..., :1, :]), out[..., 1:, :]], dim=-2)
            return istft(out, self.n_fft, self.hop_length, length)

