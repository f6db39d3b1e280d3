"""Hybrid Transformer Demucs (HT Demucs, v4; Rouard, Massa & Défossez, ICASSP 2023).

Data flow of :meth:`HTDemucs.forward` (class defaults: 48 channels, depth 4, STFT 4096/1024)::

    mix (B, C, L) ─ pad to the training segment ─┬─ STFT → CaC (B, 2C, 2048, L/1024) → normalise
                                                 │     freq encoder ×4 (Conv2d [8,1]/[4,1] along F) → (B, 384, 8, T1)
                                                 │     (+ frequency embedding after layer 0)
                                                 └─ normalise → time encoder ×4 (Conv1d 8/4) → (B, 384, L/256)
          [1×1 convs to bottom_channels]  CrossTransformerEncoder(spectral tokens, temporal tokens)  [1×1 back]
          freq decoder ×4 → (B, S·2C, 2048, T1) → complex → iSTFT ─┐
          time decoder ×4 → (B, S·C, L) ───────────────────────────┴─ sum → crop → (B, S, C, L)

The training segment (``segment`` seconds, ``segment_length`` samples) is part of the model: shorter inputs are
zero-padded to it and the output cropped back, longer inputs are an error (use
:func:`mss.inference.overlap_add.apply_model` for full tracks).

Constructor keywords and parameter names equal the reference ``demucs.htdemucs.HTDemucs`` (state dicts load 1:1).
Class defaults: 26,899,536 parameters for 4 stereo sources; the released ``htdemucs`` (dconv_mode 3,
bottom_channels 512, t_dropout 0.02, segment 39/5 s) has 41,984,456.

Shape legend: ``B`` batch, ``S`` sources, ``C`` audio channels, ``L`` samples, ``F`` bins, ``T1`` frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from mss.models.hybrid import HybridSettings, HybridSpec
from mss.models.transformer import CrossTransformerEncoder

__all__ = ["HTDemucs"]


class HTDemucs(HybridSpec):
    """Hybrid Transformer Demucs: ``forward(mix (B, C, L)) -> (B, S, C, L)``.

    Args (reference names; see ``docs/hybrid_demucs.md`` for the full table):
        sources: source names. audio_channels: ``C``. channels: first-layer channels (``channels_time`` for the
            time branch if set); ``growth`` per layer.
        nfft: STFT size (hop ``nfft // 4``). cac: complex-as-channels output (else magnitude masks with
            ``wiener_iters``/``end_iters`` Wiener iterations at test/train time, ``wiener_residual``).
        depth: encoder/decoder layers. rewrite: 1×1 rewrite convs + GLU. multi_freqs / multi_freqs_depth: band
            split (:class:`~mss.models.hybrid.MultiWrap`) of the outer layers. freq_emb / emb_scale / emb_smooth:
            frequency embedding weight, lr boost and smooth init.
        kernel_size, stride, time_stride, context, context_enc: convolution geometry.
        norm_starts, norm_groups: GroupNorm from this layer on. dconv_mode (1 enc, 2 dec, 3 both), dconv_depth,
            dconv_comp, dconv_init: DConv residual branches.
        bottom_channels: 1×1 convs to this width around the transformer (0: none).
        t_*: transformer settings (see :class:`~mss.models.transformer.CrossTransformerEncoder`).
        rescale: weight-rescaling reference (0: off). samplerate: Hz. segment: training segment in seconds.
        use_train_segment: enforce / pad to ``segment`` (else any length is processed as is).
    """

    def __init__(self, sources: Sequence[str], audio_channels: int = 2, channels: int = 48,
                 channels_time: int | None = None, growth: float = 2, nfft: int = 4096, wiener_iters: int = 0,
                 end_iters: int = 0, wiener_residual: bool = False, cac: bool = True, depth: int = 4,
                 rewrite: bool = True, multi_freqs: Sequence[float] | None = None, multi_freqs_depth: int = 3,
                 freq_emb: float = 0.2, emb_scale: float = 10, emb_smooth: bool = True, kernel_size: int = 8,
                 time_stride: int = 2, stride: int = 4, context: int = 1, context_enc: int = 0,
                 norm_starts: int = 4, norm_groups: int = 4, dconv_mode: int = 1, dconv_depth: int = 2,
                 dconv_comp: float = 8, dconv_init: float = 1e-3, bottom_channels: int = 0, t_layers: int = 5,
                 t_emb: str = "sin", t_hidden_scale: float = 4.0, t_heads: int = 8, t_dropout: float = 0.0,
                 t_max_positions: int = 10000, t_norm_in: bool = True, t_norm_in_group: bool = False,
                 t_group_norm: bool = False, t_norm_first: bool = True, t_norm_out: bool = True,
                 t_max_period: float = 10000.0,
                 t_layer_scale: bool = True, t_gelu: bool = True, t_weight_pos_embed: float = 1.0,
                 t_sin_random_shift: int = 0, t_cape_mean_normalize: bool = True, t_cape_augment: bool = True,
                 t_cape_glob_loc_scale: Sequence[float] = (5000.0, 1.0, 1.4), t_sparse_self_attn: bool = False,
                 t_sparse_cross_attn: bool = False, t_mask_type: str = "diag", t_mask_random_seed: int = 42,
                 t_sparse_attn_window: int = 500, t_global_window: int = 100, t_sparsity: float = 0.95,
                 t_auto_sparsity: bool = False, t_lsh_rounds: int = 32, t_lsh_buckets: int = 4,
                 t_lsh_resample: bool = True, t_attn_backend: str = "auto", t_cross_first: bool = False,
                 rescale: float = 0.1, samplerate: int = 44100, segment: float = 10, use_train_segment: bool = True):
        arguments = dict(locals())
        # the U-Nets are built and rescaled here, before the transformer / bottom convs exist (as the reference)
        super().__init__(sources, audio_channels, samplerate, segment, HybridSettings.from_arguments(arguments))
        self.bottom_channels = bottom_channels
        self.use_train_segment = use_train_segment
        dim = int(channels * growth ** (depth - 1))
        if bottom_channels:
            self.channel_upsampler = nn.Conv1d(dim, bottom_channels, 1)
            self.channel_downsampler = nn.Conv1d(bottom_channels, dim, 1)
            self.channel_upsampler_t = nn.Conv1d(dim, bottom_channels, 1)
            self.channel_downsampler_t = nn.Conv1d(bottom_channels, dim, 1)
            dim = bottom_channels
        self.crosstransformer = None
        if t_layers > 0:
            names = {"t_heads": "num_heads", "t_layers": "num_layers"}  # the rest: t_<name> -> <name>
            self.crosstransformer = CrossTransformerEncoder(dim=dim, **{
                names.get(key, key[2:]): value for key, value in arguments.items() if key.startswith("t_")})

    def valid_length(self, length: int) -> int:
        """Length the network runs at for an input of ``length`` samples (the training segment)."""
        if not self.use_train_segment:
            return length
        if length > self.segment_length:
            raise ValueError(f"HTDemucs: input of {length} samples is longer than the training segment of "
                             f"{self.segment_length} samples ({float(self.segment):g} s); split it with "
                             "mss.inference.overlap_add.apply_model (or set model.segment)")
        return self.segment_length

    def _bottom(self, x: Tensor, xt: Tensor) -> tuple[Tensor, Tensor]:
        if self.crosstransformer is None:
            return x, xt
        if self.bottom_channels:
            b, c, f, t = x.shape
            x = self.channel_upsampler(x.reshape(b, c, f * t)).view(b, -1, f, t)
            xt = self.channel_upsampler_t(xt)
        x, xt = self.crosstransformer(x, xt)
        if self.bottom_channels:
            b, c, f, t = x.shape
            x = self.channel_downsampler(x.reshape(b, c, f * t)).view(b, -1, f, t)
            xt = self.channel_downsampler_t(xt)
        return x, xt

    def forward(self, mix: Tensor) -> Tensor:
        """``(B, C, L) -> (B, S, C, L)``."""
        length = mix.shape[-1]
        target = self.valid_length(length)
        if target > length:
            mix = F.pad(mix, (0, target - length))
        out = self._hybrid_forward(mix, self._bottom)
        return out[..., :length] if target > length else out
