"""Spleeter U-Net (Deezer) in PyTorch, faithful to ``spleeter/model/functions/unet.py``.

Pipeline of :class:`SpleeterUNet` (one independent U-Net per source):

1. STFT of the mixture (periodic Hann, ``n_fft`` 4096 / hop 1024), magnitude of the first ``freq_bins``
   bins (no log compression, no normalisation), zero-padded so both image axes divide
   ``2 ** len(filters)``.
2. Each source's U-Net sees the magnitude as an image ``(B, C, F, N)`` (audio channels = image channels)
   and emits a mask: sigmoid (``unet``) or logits soft-maxed across the stacked sources (``softmax_unet``,
   5stems); mask times input magnitude is the source magnitude estimate ``y_j``.
3. Ratio masks ``(y_j^p + eps/S) / (sum_k y_k^p + eps)`` (separation exponent ``p``) on the ``freq_bins``
   band, extended to all ``n_fft // 2 + 1`` bins with zeros (hard cutoff, 11 kHz for F=1024) or their
   frequency average, multiplied with the complex mixture STFT (mixture phase), iSTFT. In eval mode with
   ``wiener_iterations > 0`` a multichannel Wiener filter replaces step 3 (Spleeter ``--mwf``).

U-Net quirks kept from Spleeter: TF "same" padding (1 before / 2 after for the stride-2 5x5 convs); skips
are the **raw conv outputs** (before BN / activation); the decoder is fed the raw ``conv6`` (BN6 +
activation exist but their output is discarded); decoder order transposed conv -> activation -> BN;
dropout 0.5 on the first three decoder blocks; concatenation order ``[skip, decoder]``; 4x4 dilation-2
head; He-uniform init with zero biases; Keras BN hyper-parameters (``eps=1e-3``, momentum 0.99, i.e.
torch ``momentum=0.01``).

Inference fast path (gradients off and eager: not compiling, tracing, exporting or under
:func:`mss.audio.spectral.real_valued`; same weights and state dict, same outputs up to float rounding): the U-Net
runs on channels-last images; the decoder layers with at most :data:`SUBPIXEL_MAX_OUT` output channels (``UNet2d.
subpixel``) run as one ``Conv2d`` + pixel shuffle (:mod:`mss.models.subpixel`); the
1-channel head is a sum of shifted weighted images; the ratio masks multiply only the ``freq_bins`` band of the STFT,
written in the layout the iSTFT reads (:meth:`SpleeterUNet.masked_spectrogram`). With gradients on (training) every
step is the plain one above.

Shape legend: ``B`` batch, ``S`` sources, ``C`` audio channels, ``T`` samples, ``F`` frequency bins,
``N`` STFT frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F_
from einops import rearrange
from torch import Tensor, nn

from mss.audio.spectral import istft, istft_pairs, magnitude, pair_abs, real_valued_active, stft, stft_pairs
from mss.audio.wiener import wiener
from mss.models.base import Separator
from mss.models.subpixel import conv_transpose2d_stride2, subpixel_bias, subpixel_weight

__all__ = ["SpleeterUNet", "UNet2d"]

_ACTIVATIONS = ("leaky_relu", "elu", "relu")
_MASKS = ("sigmoid", "softmax")
_EXTENSIONS = ("zeros", "average")
_BN_EPS = 1e-3  # Keras BatchNormalization defaults (epsilon=1e-3, momentum=0.99 = torch momentum 0.01)
SUBPIXEL_MAX_OUT = 16  # decoder layers with at most this many output channels use the sub-pixel path (inference)


def _activation(name: str) -> nn.Module:
    """Spleeter activation by name: ``leaky_relu`` (slope 0.2), ``elu`` or ``relu``."""
    if name == "leaky_relu":
        return nn.LeakyReLU(0.2)
    if name == "elu":
        return nn.ELU()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {name!r}; expected one of {_ACTIVATIONS}")


def _tf_same_pad(size: int, kernel: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's ``padding="same"`` along one axis (extra sample goes after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


class UNet2d(nn.Module):
    """One Spleeter U-Net: magnitude image ``(B, C, F, N)`` -> mask (or mask logits) ``(B, C, F, N)``.

    ``F`` and ``N`` must be divisible by ``2 ** len(filters)`` (:class:`SpleeterUNet` pads for it).

    Args:
        channels: audio channels ``C`` (input image channels and head outputs).
        filters: encoder filters; the decoder mirrors them and ends with 1 filter before the head.
        kernel_size: encoder / decoder kernel size (5).
        conv_activation, deconv_activation: ``leaky_relu`` | ``elu`` | ``relu``.
        dropout: dropout probability of the first three decoder blocks.
        sigmoid: apply the sigmoid of Spleeter's ``unet``; ``False`` returns logits (``softmax_unet``).
    """

    def __init__(self, channels: int, filters: Sequence[int] = (16, 32, 64, 128, 256, 512),
                 kernel_size: int = 5, conv_activation: str = "elu", deconv_activation: str = "elu",
                 dropout: float = 0.5, sigmoid: bool = True, batchnorm_momentum: float = 0.01) -> None:
        super().__init__()
        depth = len(filters)
        self.kernel_size = kernel_size
        self.sigmoid = sigmoid
        ins = [channels, *filters[:-1]]
        self.enc_conv = nn.ModuleList(nn.Conv2d(i, o, kernel_size, stride=2) for i, o in zip(ins, filters))
        # enc_bn[-1] / enc_act[-1] (BN6 + activation) exist as in Spleeter but their output is discarded
        self.enc_bn = nn.ModuleList(nn.BatchNorm2d(o, eps=_BN_EPS, momentum=batchnorm_momentum) for o in filters)
        self.enc_act = nn.ModuleList(_activation(conv_activation) for _ in filters)
        outs = [*reversed(filters[:-1]), 1]
        dec_ins = [filters[-1], *(2 * o for o in outs[:-1])]  # from block 2 on: [skip, up] concatenated
        # full transposed-conv output (2n + k - 2) is cropped to 2n as TF "same" does (see _crop_deconv)
        self.dec_conv = nn.ModuleList(
            nn.ConvTranspose2d(i, o, kernel_size, stride=2) for i, o in zip(dec_ins, outs))
        self.dec_act = nn.ModuleList(_activation(deconv_activation) for _ in outs)
        self.dec_bn = nn.ModuleList(nn.BatchNorm2d(o, eps=_BN_EPS, momentum=batchnorm_momentum) for o in outs)
        self.dec_drop = nn.ModuleList(
            nn.Dropout(dropout) if (i < 3 and i < depth - 1) else nn.Identity() for i in range(depth))
        self.head = nn.Conv2d(1, channels, kernel_size=4, dilation=2)
        # inference only (grad disabled, eager): these decoder layers run as a sub-pixel conv (mss.models.subpixel),
        # same weights, re-arranged at each call
        self.subpixel = [o <= SUBPIXEL_MAX_OUT for o in outs]
        self.channels_last = True  # inference (same condition): run the convolutions on channels-last images
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-uniform weights (``U(+-sqrt(6 / fan_in))``, Keras convention), zero biases, BN to identity."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()

    def _crop_deconv(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """Crop a full stride-2 transposed-conv output (``2n + k - 2`` per axis) to ``2n`` like TF "same".

        TF drops ``(k - 2) // 2`` rows first and the rest at the end (k=5: 1 before, 2 after).
        """
        start = (self.kernel_size - 2) // 2
        return x[..., start:start + size[0], start:start + size[1]]

    @staticmethod
    def fast_path_active() -> bool:
        """Whether the inference fast path (sub-pixel decoder, channels-last, tap head) may run: gradients off,
        eager (not compiling, tracing or exporting, not under :func:`mss.audio.spectral.real_valued`)."""
        return not (torch.is_grad_enabled() or real_valued_active() or torch.compiler.is_compiling()
                    or torch.compiler.is_exporting() or torch.jit.is_tracing())

    def _deconv(self, i: int, x: Tensor, size: tuple[int, int]) -> Tensor:
        """Decoder block ``i``'s transposed conv, cropped to ``size`` (:meth:`_crop_deconv`)."""
        if self.subpixel[i] and self.fast_path_active():
            conv = self.dec_conv[i]  # few output channels: re-arranging the weight costs next to nothing
            bias = None if conv.bias is None else subpixel_bias(conv.bias)
            start = (self.kernel_size - 2) // 2
            return conv_transpose2d_stride2(x, subpixel_weight(conv.weight), bias, conv.kernel_size, (start, start),
                                            size)
        return self._crop_deconv(self.dec_conv[i](x), size)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: magnitude ``(B, C, F, N)`` -> mask (sigmoid) or mask logits ``(B, C, F, N)``."""
        if self.channels_last and self.fast_path_active():
            return self._forward(x.contiguous(memory_format=torch.channels_last))  # the head returns NCHW
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        skips: list[Tensor] = []
        for conv, bn, act in zip(self.enc_conv[:-1], self.enc_bn[:-1], self.enc_act[:-1]):
            pad_f, pad_n = (_tf_same_pad(s, self.kernel_size, 2) for s in x.shape[-2:])
            raw = conv(F_.pad(x, (*pad_n, *pad_f)))
            skips.append(raw)  # Spleeter concatenates the raw conv output, not the activated one
            x = act(bn(raw))
        pad_f, pad_n = (_tf_same_pad(s, self.kernel_size, 2) for s in x.shape[-2:])
        x = self.enc_conv[-1](F_.pad(x, (*pad_n, *pad_f)))  # raw conv6 = bottleneck (BN6 + act discarded)

        for i, (act, bn, drop) in enumerate(zip(self.dec_act, self.dec_bn, self.dec_drop)):
            size = (2 * x.shape[-2], 2 * x.shape[-1])
            x = drop(bn(act(self._deconv(i, x, size))))
            if i < len(skips):
                x = torch.cat([skips[-1 - i], x], dim=1)
        pad_f, pad_n = (_tf_same_pad(s, 4, 1, 2) for s in x.shape[-2:])
        x = F_.pad(x, (*pad_n, *pad_f))
        x = self._tap_head(x) if self.head.in_channels == 1 and self.fast_path_active() else self.head(x)
        return torch.sigmoid(x) if self.sigmoid else x

    def _tap_head(self, x: Tensor) -> Tensor:
        """The 1-channel dilated head as a sum of its ``kh * kw`` shifted, weighted images (inference; about twice
        as fast as oneDNN's convolution for one input and ``C`` output channels). ``x``: padded ``(B, 1, H', W')``
        -> ``(B, C, H, W)`` contiguous."""
        weight, bias = self.head.weight, self.head.bias  # (C, 1, kh, kw), (C,)
        (kh, kw), (dh, dw) = self.head.kernel_size, self.head.dilation
        h, w = x.shape[-2] - dh * (kh - 1), x.shape[-1] - dw * (kw - 1)
        out = x.new_zeros(x.shape[0], weight.shape[0], h, w)
        if bias is not None:
            out += bias.view(1, -1, 1, 1)
        for i in range(kh):
            for j in range(kw):
                out.addcmul_(x[..., i * dh:i * dh + h, j * dw:j * dw + w], weight[:, :, i, j].view(1, -1, 1, 1))
        return out


class SpleeterUNet(Separator):
    """Spleeter's U-Net separator: mixture waveform ``(B, C, T)`` -> sources ``(B, S, C, T)``.

    Spleeter configs: 2stems = ``conv_activation="leaky_relu", deconv_activation="relu"``; 4stems = ELU/ELU;
    5stems = ELU/ELU with ``mask="softmax"``; all with STFT 4096/1024, ``freq_bins=1024`` (``1536`` for the
    ``-16kHz`` variants, same weights), ``frames=512``, ``separation_exponent=2``, ``mask_extension="zeros"``.
    Stereo with ``freq_bins=1024`` gives 9,823,749 trainable parameters per source (Spleeter's count).

    Deviations from Spleeter:

    * the head has ``audio_channels`` outputs (Spleeter hard-codes 2, even for mono input);
    * the whole input is processed as one spectrogram image, zero-padded at the end to a multiple of
      ``2 ** len(filters)`` frames (Spleeter pads to a multiple of ``frames`` and batches 512-frame segments;
      long-track chunking is left to the framework's overlap-add inference with :attr:`segment_length`);
      ``freq_bins`` not divisible by ``2 ** len(filters)`` is zero-padded likewise (never the case for
      1024/1536);
    * STFT uses ``center=True`` with zero padding and an exact iSTFT instead of Spleeter's 4096-sample
      pre-pad and 2/3 window compensation;
    * BN6's forward pass is skipped (its output is discarded in Spleeter anyway; its running statistics
      stay at their initial values). BN6's gamma/beta therefore never receive gradients, exactly as in
      Spleeter; under DDP use ``find_unused_parameters=True``.

    Args:
        sources: source names ``S``, one U-Net each.
        audio_channels: ``C`` of the input waveform.
        sample_rate: audio sample rate (metadata).
        n_fft, hop_length: STFT parameters.
        freq_bins: number of low-frequency bins fed to the U-Nets.
        frames: Spleeter's training/inference segment in frames (defines :attr:`segment_length`).
        filters, kernel_size, conv_activation, deconv_activation, dropout: U-Net hyper-parameters.
        mask: ``sigmoid`` (``unet``) or ``softmax`` (``softmax_unet``, masks sum to 1 across sources).
        separation_exponent: ``p`` of the ratio masks.
        mask_extension: ``zeros`` or ``average`` for bins above ``freq_bins``.
        eps: ratio-mask / Wiener regulariser.
        wiener_iterations: if > 0, eval-mode forward uses multichannel Wiener EM (softmask init) instead of
            ratio masks (Spleeter ``--mwf`` uses 1).
        batchnorm_momentum: torch BN momentum of the running statistics; 0.01 is Keras' 0.99 (Spleeter). Short
            runs validate better with a faster 0.1 (PyTorch's default).
    """

    def __init__(self, sources: list[str], audio_channels: int = 2, sample_rate: int = 44100,
                 n_fft: int = 4096, hop_length: int = 1024, freq_bins: int = 1024, frames: int = 512,
                 filters: tuple[int, ...] = (16, 32, 64, 128, 256, 512), kernel_size: int = 5,
                 conv_activation: str = "elu", deconv_activation: str = "elu", dropout: float = 0.5,
                 mask: str = "sigmoid", separation_exponent: float = 2.0, mask_extension: str = "zeros",
                 eps: float = 1e-10, wiener_iterations: int = 0, batchnorm_momentum: float = 0.01) -> None:
        super().__init__(sources, audio_channels, sample_rate, (frames - 1) * hop_length)  # `frames` STFT frames
        if not 1 <= freq_bins <= n_fft // 2 + 1:
            raise ValueError(f"freq_bins={freq_bins} must be in [1, n_fft // 2 + 1 = {n_fft // 2 + 1}]")
        if not filters or any(int(f) < 1 for f in filters):
            raise ValueError(f"filters must be a non-empty sequence of positive ints, got {filters}")
        if kernel_size < 2:
            raise ValueError(f"kernel_size must be >= 2 (to double sizes when upsampling), got {kernel_size}")
        for name in (conv_activation, deconv_activation):
            if name not in _ACTIVATIONS:
                raise ValueError(f"unknown activation {name!r}; expected one of {_ACTIVATIONS}")
        if mask not in _MASKS:
            raise ValueError(f"unknown mask {mask!r}; expected one of {_MASKS}")
        if mask_extension not in _EXTENSIONS:
            raise ValueError(f"unknown mask_extension {mask_extension!r}; expected one of {_EXTENSIONS}")
        if wiener_iterations < 0:
            raise ValueError(f"wiener_iterations must be >= 0, got {wiener_iterations}")

        self.n_fft = n_fft
        self.hop_length = hop_length
        self.freq_bins = freq_bins
        self.frames = frames
        self.mask = mask
        self.separation_exponent = separation_exponent
        self.mask_extension = mask_extension
        self.eps = eps
        self.wiener_iterations = wiener_iterations
        self.multiple = 2 ** len(filters)
        self.unets = nn.ModuleDict({
            name: UNet2d(audio_channels, tuple(int(f) for f in filters), kernel_size, conv_activation,
                         deconv_activation, dropout, sigmoid=(mask == "sigmoid"),
                         batchnorm_momentum=batchnorm_momentum)
            for name in self.sources})

    def spectrogram(self, mix: Tensor) -> Tensor:
        """Complex mixture STFT: ``(B, C, T)`` -> ``(B, C, n_fft // 2 + 1, N)``."""
        return stft(mix, self.n_fft, self.hop_length)

    def estimate_magnitudes(self, mag: Tensor) -> Tensor:
        """U-Net magnitude estimates (what Spleeter's L1 loss compares with the target magnitudes).

        Args:
            mag: mixture magnitude ``(B, C, F, N)`` with ``F = freq_bins``, any ``N``.

        Returns:
            ``y_j = mask_j * mag``: ``(B, S, C, F, N)``.
        """
        freqs, frames = mag.shape[-2:]
        pad_f, pad_n = (-freqs) % self.multiple, (-frames) % self.multiple
        x = F_.pad(mag, (0, pad_n, 0, pad_f))
        masks = torch.stack([unet(x) for unet in self.unets.values()], dim=1)  # B S C F' N'
        if self.mask == "softmax":
            masks = torch.softmax(masks, dim=1)
        return masks[..., :freqs, :frames] * mag.unsqueeze(1)

    def ratio_masks(self, est: Tensor) -> Tensor:
        """Spleeter's ratio masks ``(y_j^p + eps/S) / (sum_k y_k^p + eps)`` on ``est``: ``(B, S, C, F, N)``.

        They sum to exactly 1 across sources in every bin.
        """
        power = est.pow(self.separation_exponent)
        return (power + self.eps / len(self.sources)) / (power.sum(dim=1, keepdim=True) + self.eps)

    def extend_mask(self, mask: Tensor) -> Tensor:
        """Extend ``(B, S, C, freq_bins, N)`` masks to ``(B, S, C, n_fft // 2 + 1, N)``.

        ``zeros``: bins above ``freq_bins`` are zero (hard cutoff); ``average``: they take the mask's mean
        over frequency (per source, channel and frame).
        """
        extra = self.n_fft // 2 + 1 - self.freq_bins
        if extra == 0:
            return mask
        if self.mask_extension == "zeros":
            return F_.pad(mask, (0, 0, 0, extra))
        fill = mask.mean(dim=-2, keepdim=True).expand(*mask.shape[:-2], extra, mask.shape[-1])
        return torch.cat([mask, fill], dim=-2)

    def masked_spectrogram(self, mask: Tensor, spec: Tensor) -> Tensor:
        """``extend_mask(mask) * spec.unsqueeze(1)`` without the extended mask (inference: no autograd).

        The real mask multiplies the real and imaginary parts of the ``freq_bins`` band
        (:func:`torch.view_as_real`, exactly the complex product with a real factor); the bins above get zeros or
        the frequency-averaged mask. The result is stored frame-major (``F`` has stride 1), the layout the iSTFT's
        inverse FFT reads, so it needs no transposed copy.

        Args:
            mask: band masks ``(B, S, C, freq_bins, N)``.
            spec: complex mixture STFT ``(B, C, n_fft // 2 + 1, N)``.

        Returns:
            complex ``(B, S, C, n_fft // 2 + 1, N)``.
        """
        b, s, c, f, n = mask.shape
        out = torch.empty(b, s, c, n, spec.shape[-2], dtype=spec.dtype, device=spec.device).transpose(-1, -2)
        res, mix = torch.view_as_real(out), torch.view_as_real(spec).unsqueeze(1)  # (..., F_all, N, 2)
        torch.mul(mix[..., :f, :, :], mask.unsqueeze(-1), out=res[..., :f, :, :])
        if spec.shape[-2] > f:
            if self.mask_extension == "zeros":
                res[..., f:, :, :].zero_()
            else:
                torch.mul(mix[..., f:, :, :], mask.mean(dim=-2, keepdim=True).unsqueeze(-1), out=res[..., f:, :, :])
        return out

    def forward(self, mix: Tensor) -> Tensor:
        """Separate ``mix``: ``(B, C, T)`` -> ``(B, S, C, T)`` (same ``T``)."""
        self.check_mixture(mix)
        length = mix.shape[-1]
        if real_valued_active():  # ONNX export: the same on real pairs
            return self._forward_pairs(mix)
        spec = self.spectrogram(mix)  # B C F_all N
        est = self.estimate_magnitudes(magnitude(spec[..., :self.freq_bins, :]))  # B S C F N
        if self.wiener_iterations > 0 and not self.training:
            targets = F_.pad(est, (0, 0, 0, spec.shape[-2] - self.freq_bins))
            out = wiener(targets, spec, iterations=self.wiener_iterations, softmask=True, eps=self.eps)
        elif torch.is_grad_enabled():
            out = self.extend_mask(self.ratio_masks(est)) * spec.unsqueeze(1)
        else:
            out = self.masked_spectrogram(self.ratio_masks(est), spec)
        wav = istft(rearrange(out, "b s c f n -> (b s) c f n"), self.n_fft, self.hop_length, length)
        return rearrange(wav, "(b s) c t -> b s c t", s=len(self.sources))

    def _forward_pairs(self, mix: Tensor) -> Tensor:
        """:meth:`forward` on real pairs ``(..., 2)`` (:func:`mss.audio.spectral.real_valued`, ONNX export)."""
        if self.wiener_iterations > 0 and not self.training:
            raise ValueError("SpleeterUNet: the Wiener filter (wiener_iterations > 0) has no real-valued path; "
                             "export with wiener_iterations=0 (python -m mss.export ... wiener_iterations=0)")
        length = mix.shape[-1]
        spec = stft_pairs(mix, self.n_fft, self.hop_length)  # B C F_all N 2
        est = self.estimate_magnitudes(pair_abs(spec[..., :self.freq_bins, :, :]))  # B S C F N
        out = self.extend_mask(self.ratio_masks(est)).unsqueeze(-1) * spec.unsqueeze(1)
        wav = istft_pairs(rearrange(out, "b s c f n r -> (b s) c f n r"), self.n_fft, self.hop_length, length)
        return rearrange(wav, "(b s) c t -> b s c t", s=len(self.sources))
