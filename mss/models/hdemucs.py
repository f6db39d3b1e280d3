"""Hybrid Demucs (v3; Défossez, MDX 2021): a bi-U-Net over the waveform and the spectrogram.

Class defaults (48 channels, depth 6, STFT 4096/1024, CaC): the frequency branch convolves along frequency only,
2048 → 512 → 128 → 32 → 8 bins, then layer 4 collapses the last 8 bins (kernel 8, no padding). The time branch
has four layers of stride 4 and an ``empty`` fifth layer (conv only) whose output, at the hop stride 1024, is
**injected** (added) into the frequency branch; layer 5 is a shared time conv (kernel 4, stride 2). The decoder is
symmetric, its input is zeros (signal flows through the skips), and the time decoder starts from the frequency
decoder's pre-transposed-conv activation. Layers from 4 on use GroupNorm(4) and DConv branches with BiLSTM and
local attention. Output: iSTFT of the frequency branch + the time branch.

Constructor keywords and parameter names equal the reference ``demucs.hdemucs.HDemucs`` (state dicts load 1:1);
class defaults give 83,637,832 parameters for 4 stereo sources. ``segment`` (seconds) only sets
``segment_length``, the chunk used by :func:`mss.inference.overlap_add.apply_model`; any input length works.

Shape legend: ``B`` batch, ``S`` sources, ``C`` audio channels, ``L`` samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mss.models.hybrid import HybridSettings, HybridSpec

__all__ = ["HDemucs"]


class HDemucs(HybridSpec):
    """Hybrid Demucs v3: ``forward(mix (B, C, L)) -> (B, S, C, L)``.

    Args: as :class:`~mss.models.htdemucs.HTDemucs` (without the transformer), plus
        hybrid: add the time branch (else a spectrogram-only Demucs).
        hybrid_old: reproduce the zero-padding STFT convention of some MDX 2021 checkpoints.
        dconv_lstm, dconv_attn: first layer index whose DConv gets a BiLSTM / local attention.
    """

    def __init__(self, sources: Sequence[str], audio_channels: int = 2, channels: int = 48,
                 channels_time: int | None = None, growth: float = 2, nfft: int = 4096, wiener_iters: int = 0,
                 end_iters: int = 0, wiener_residual: bool = False, cac: bool = True, depth: int = 6,
                 rewrite: bool = True, hybrid: bool = True, hybrid_old: bool = False,
                 multi_freqs: Sequence[float] | None = None, multi_freqs_depth: int = 2, freq_emb: float = 0.2,
                 emb_scale: float = 10, emb_smooth: bool = True, kernel_size: int = 8, time_stride: int = 2,
                 stride: int = 4, context: int = 1, context_enc: int = 0, norm_starts: int = 4,
                 norm_groups: int = 4, dconv_mode: int = 1, dconv_depth: int = 2, dconv_comp: float = 4,
                 dconv_attn: int = 4, dconv_lstm: int = 4, dconv_init: float = 1e-4, rescale: float = 0.1,
                 samplerate: int = 44100, segment: float = 4 * 10):
        super().__init__(sources, audio_channels, samplerate, segment, HybridSettings.from_arguments(locals()))

    def _bottom(self, x: Tensor, xt: Tensor | None) -> tuple[Tensor, Tensor | None]:
        # the decoders start from zeros: the signal reaches them through the skip connections only
        zeros = torch.zeros_like(x)
        return zeros, (zeros if self.hybrid else None)

    def forward(self, mix: Tensor) -> Tensor:
        """``(B, C, L) -> (B, S, C, L)``."""
        return self._hybrid_forward(mix, self._bottom)
