"""SCNet (Tong et al., ICASSP 2024, "SCNet: Sparse Compression Network for Music Source Separation"): one joint
network that estimates the complex spectrograms of all stems directly (no mask).

Pipeline of :class:`SCNet` (official code starrytong/SCNet ``scnet/SCNet.py``, commit 5d95bf96):

1. right-pad the mixture so that its length is a multiple of ``hop_length`` and ``length / hop_length`` is **odd**
   (one more hop if needed; a length that already is a multiple still gets a full hop), so that the centred STFT has
   an **even** frame count ``N`` (the frequency-domain feature conversions below need it); the padding is cut off at
   the end;
2. STFT ``n_fft`` 4096 / hop 1024 / ``center=True`` with reflect padding, **rectangular window** (the reference
   passes no window to :func:`torch.stft`, so it uses ones) and ``normalized=True`` (torch's ``1/sqrt(n_fft)``
   scaling); real and imaginary parts as channels ``[L_re, L_im, R_re, R_im]`` -> ``(B, 2C, F, N)``;
3. **input normalisation** (official code; not in MSST's copy, ``normalize_input=False`` there): the spectrogram is
   standardised by its mean and unbiased standard deviation over ``(2C, F, N)`` per example,
   ``(x - mean) / (1e-5 + std)``, and the network output is de-normalised with the same two numbers;
4. encoder, ``len(dims) - 1`` sparse down-sampling blocks (:class:`SDBlock`): the frequency axis is split into bands
   at ``ceil(F * cumulative ratio)`` (low / mid / high = 0.175 / 0.392 / 0.433 of the bins); each band gets its own
   ``Conv2d`` with kernel ``(k, 1)`` and stride ``(s, 1)`` along frequency (stride 1: ``k - 1`` bins of zero padding,
   keeps the resolution; stride ``s > 1``: zero-padded to a multiple of ``s``, split half before / half after), then
   its own convolution module along **time** (frequency folded into the batch; per layer GroupNorm(1) -> Conv1d to
   ``2 C / compress`` -> GLU -> depthwise Conv1d -> GroupNorm(1) -> Swish -> pointwise Conv1d, residual), then GELU;
   the concatenated bands are the skip and go through a 3x3 "global" Conv2d;
5. separation network: ``dual_path_layers`` dual-path BLSTM layers; after even layers an ``rfft`` along time
   (``norm="ortho"``; real and imaginary parts concatenated on channels: ``C -> 2C``, ``N -> N/2 + 1``), after odd
   layers the matching ``irfft``; each dual-path layer is [GroupNorm(1) over ``(C, F, N)`` -> BLSTM across
   frequency (``C * expand`` units per direction) -> Linear -> residual] then the same across time;
6. decoder, one sparse up-sampling block per encoder block in reverse order (:class:`SUBlock`): ``x + skip``, channels
   repeated twice, 3x3 Conv2d and GLU (the fusion layer), then per band a ``ConvTranspose2d`` (kernel ``(k, 1)``,
   stride ``(s, 1)``) whose output is trimmed symmetrically to the encoder band's width; the last block outputs
   ``dims[0] * S`` channels, source-major (channel ``2C * s + 2 * c + r``, ``r`` re/im);
7. iSTFT with the same settings, padding removed -> ``(B, S, C, T)``.

Quirks followed: the rectangular window (exact reconstruction with hop ``n_fft / 4``, but spectra differ from a Hann
STFT); band edges with ``ceil`` and symmetric trimming of the up-sampled bands; GroupNorm with one group (statistics
over all of ``(C, F, N)`` / ``(C, N)``); an even frame count from the odd-hop padding; the BLSTM outputs and the
feature conversions are computed in float32 as the reference's ``x.float()``; the STFT / iSTFT always run in float32.
Deviation: for inputs shorter than ``n_fft / 2`` after padding, where :func:`torch.stft`'s reflect padding (and so the
reference) fails, the STFT pads with zeros instead.

Parameter names: ``encoder.<i>.down.<b>`` (band down-sampling convs), ``encoder.<i>.convs.<b>.layers.<j>.*``,
``encoder.<i>.global_conv``, ``separation.<i>.{freq,time}.{norm,rnn,proj}``, ``decoder.<i>.fusion``,
``decoder.<i>.up.<b>``; ``decoder.0`` is the deepest block as in the reference.
:func:`mss.pretrained.msst_scnet.convert_state_dict` renames the official / MSST keys.

Sizes: 10,578,768 parameters (dims 4/32/64/128, SCNet) and 42,181,232 (4/64/128/256, SCNet-large).

Shape legend: ``B`` batch, ``S`` sources, ``C`` audio channels, ``T`` samples, ``F`` frequency bins (or bands' rows
inside the net), ``N`` frames.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import accumulate

import torch
import torch.nn.functional as F_
from einops import rearrange
from torch import Tensor, nn

from mss.audio.spectral import (
    irfft_ortho_real,
    istft,
    istft_pairs,
    real_valued_active,
    rfft_ortho_real,
    stft,
    stft_pairs,
)
from mss.models.base import Separator
from mss.models.blocks import run_rnn

__all__ = ["SCNet", "SDBlock", "SUBlock", "DualPathLayer", "band_edges"]


def band_edges(n_bins: int, ratios: Sequence[float]) -> list[tuple[int, int]]:
    """``[start, end)`` rows of each band: cut at ``ceil(n_bins * cumulative ratio)``, the last band takes the rest."""
    cuts = [math.ceil(n_bins * r) for r in accumulate(ratios[:-1])]
    bounds = [0, *cuts, n_bins]
    return list(zip(bounds[:-1], bounds[1:]))


class ConvLayer(nn.Module):
    """One residual layer of an SD block's convolution module, along time: ``(B', C, N) -> (B', C, N)``."""

    def __init__(self, channels: int, hidden: int, kernel: int):
        super().__init__()
        self.norm_in = nn.GroupNorm(1, channels)
        self.expand = nn.Conv1d(channels, 2 * hidden, kernel, padding=kernel // 2)
        self.depthwise = nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden)
        self.norm_hidden = nn.GroupNorm(1, hidden)
        self.project = nn.Conv1d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = F_.glu(self.expand(self.norm_in(x)), dim=1)
        return x + self.project(F_.silu(self.norm_hidden(self.depthwise(y))))


class ConvModule(nn.Module):
    """``depth`` :class:`ConvLayer` s (compression ``compress``, odd ``kernel``)."""

    def __init__(self, channels: int, depth: int, compress: float, kernel: int):
        super().__init__()
        self.layers = nn.ModuleList(ConvLayer(channels, int(channels / compress), kernel) for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class SDBlock(nn.Module):
    """Sparse down-sampling block: ``(B, C_in, F, N) -> (B, C_out, F', N)`` plus the skip and the band sizes."""

    def __init__(self, channels_in: int, channels_out: int, ratios: Sequence[float], strides: Sequence[int],
                 kernels: Sequence[int], depths: Sequence[int], compress: float, conv_kernel: int):
        super().__init__()
        self.ratios, self.strides, self.kernels = list(ratios), list(strides), list(kernels)
        self.down = nn.ModuleList(nn.Conv2d(channels_in, channels_out, (k, 1), (s, 1))
                                  for s, k in zip(strides, kernels))
        self.convs = nn.ModuleList(ConvModule(channels_out, d, compress, conv_kernel) for d in depths)
        self.global_conv = nn.Conv2d(channels_out, channels_out, 3, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, list[int], list[int]]:
        bands, widths = [], []
        for (start, end), down, conv, stride, kernel in zip(band_edges(x.shape[2], self.ratios), self.down,
                                                             self.convs, self.strides, self.kernels):
            width = end - start
            if width < 1:
                raise ValueError(f"SCNet: a frequency band of the {x.shape[2]}-row input is empty (band ratios "
                                 f"{self.ratios}): use a larger n_fft or fewer dims")
            pad = kernel - 1 if stride == 1 else (-width) % stride
            band = down(F_.pad(x[:, :, start:end], (0, 0, pad // 2, pad - pad // 2)))  # B C f N
            y = conv(rearrange(band, "b c f n -> (b f) c n"))
            bands.append(F_.gelu(rearrange(y, "(b f) c n -> b c f n", b=band.shape[0])))
            widths.append(width)
        skip = torch.cat(bands, dim=2)
        return self.global_conv(skip), skip, [b.shape[2] for b in bands], widths


class SUBlock(nn.Module):
    """Fusion with the skip and sparse up-sampling: ``(B, C_in, F', N) -> (B, C_out, F, N)``."""

    def __init__(self, channels_in: int, channels_out: int, strides: Sequence[int], kernels: Sequence[int]):
        super().__init__()
        self.fusion = nn.Conv2d(2 * channels_in, 2 * channels_in, 3, padding=1)
        self.up = nn.ModuleList(nn.ConvTranspose2d(channels_in, channels_out, (k, 1), (s, 1))
                                for s, k in zip(strides, kernels))

    def forward(self, x: Tensor, skip: Tensor, lengths: Sequence[int], widths: Sequence[int]) -> Tensor:
        x = F_.glu(self.fusion((x + skip).repeat(1, 2, 1, 1)), dim=1)
        outs, start = [], 0
        for up, length, width in zip(self.up, lengths, widths):
            y = up(x[:, :, start:start + length])
            start += length
            trim = abs(width - y.shape[2]) // 2
            outs.append(y[:, :, trim:trim + width])
        return torch.cat(outs, dim=2)


class RNNPath(nn.Module):
    """GroupNorm(1) -> BLSTM -> Linear of one dual-path direction (the residual is added by the caller)."""

    def __init__(self, channels: int, expand: int):
        super().__init__()
        self.norm = nn.GroupNorm(1, channels)
        self.rnn = nn.LSTM(channels, channels * expand, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * channels * expand, channels)

    def forward(self, seq: Tensor) -> Tensor:
        return self.proj(run_rnn(self.rnn, seq)[0])


class DualPathLayer(nn.Module):
    """BLSTM across frequency, then across time, each residual: ``(B, C, F, N) -> (B, C, F, N)``."""

    def __init__(self, channels: int, expand: int):
        super().__init__()
        self.freq = RNNPath(channels, expand)
        self.time = RNNPath(channels, expand)

    def forward(self, x: Tensor) -> Tensor:
        batch, _, bins, _ = x.shape
        y = self.freq(rearrange(self.freq.norm(x), "b c f n -> (b n) f c"))
        x = x + rearrange(y, "(b n) f c -> b c f n", b=batch)
        y = self.time(rearrange(self.time.norm(x), "b c f n -> (b f) n c"))
        return x + rearrange(y, "(b f) n c -> b c f n", f=bins)


def _to_frequency(x: Tensor) -> Tensor:
    """``rfft`` along frames, real and imaginary parts on channels: ``(B, C, F, N) -> (B, 2C, F, N/2 + 1)``."""
    if real_valued_active():  # ONNX export: the DFT by a matmul
        return torch.cat(rfft_ortho_real(x.float()), dim=1)
    z = torch.fft.rfft(x.float(), dim=3, norm="ortho")
    return torch.cat([z.real, z.imag], dim=1)


def _to_time(x: Tensor) -> Tensor:
    """Inverse of :func:`_to_frequency` (an even frame count): ``(B, 2C, F, N/2 + 1) -> (B, C, F, N)``."""
    x = x.float()
    half = x.shape[1] // 2
    if real_valued_active():  # ONNX export: the inverse DFT by a matmul
        return irfft_ortho_real(x[:, :half], x[:, half:], 2 * (x.shape[3] - 1))
    return torch.fft.irfft(torch.complex(x[:, :half], x[:, half:]), dim=3, norm="ortho")


class SCNet(Separator):
    """SCNet separator: mixture ``(B, C, T)`` -> stems ``(B, S, C, T)``.

    Args:
        sources: output stems (the official order is drums, bass, other, vocals).
        audio_channels, sample_rate: audio constants.
        dims: channels of the STFT input (``2 * audio_channels``) and after each encoder block
            (SCNet 4/32/64/128, SCNet-large 4/64/128/256).
        n_fft, hop_length: STFT (4096 / 1024; rectangular window of ``n_fft`` samples).
        normalized: torch's ``1/sqrt(n_fft)`` STFT scaling (True in both published configurations).
        band_ratios: share of the frequency rows per band (low / mid / high), summing to 1.
        band_strides, band_kernels: frequency stride and kernel of each band's down-/up-sampling conv.
        conv_depths: layers of each band's convolution module.
        compress: channel compression inside the convolution modules.
        conv_kernel: (odd) kernel of the convolution modules' time convolutions.
        dual_path_layers: dual-path BLSTM layers (even: every rfft has its irfft).
        expand: BLSTM units per direction as a multiple of the channels.
        normalize_input: standardise the input spectrogram and de-normalise the output (official code, which the
            released starrytong weights expect); False for checkpoints trained with MSST's copy.
        segment: seconds per chunk for overlap-add inference (:attr:`segment_length`; 20 s as the official
            ``apply_model``).
    """

    def __init__(self, sources: Sequence[str], audio_channels: int = 2, sample_rate: int = 44100,
                 dims: Sequence[int] = (4, 32, 64, 128), n_fft: int = 4096, hop_length: int = 1024,
                 normalized: bool = True, band_ratios: Sequence[float] = (0.175, 0.392, 0.433),
                 band_strides: Sequence[int] = (1, 4, 16), band_kernels: Sequence[int] = (3, 4, 16),
                 conv_depths: Sequence[int] = (3, 2, 1), compress: float = 4, conv_kernel: int = 3,
                 dual_path_layers: int = 6, expand: int = 1, normalize_input: bool = True, segment: float = 20.0):
        super().__init__(sources, audio_channels, sample_rate, round(segment * sample_rate))
        dims, band_ratios = [int(d) for d in dims], [float(r) for r in band_ratios]
        band_strides, band_kernels = [int(s) for s in band_strides], [int(k) for k in band_kernels]
        conv_depths = [int(d) for d in conv_depths]
        if len(dims) < 2 or min(dims) < 1:
            raise ValueError(f"SCNet: dims must list at least two positive channel counts, got {dims}")
        if dims[0] != 2 * self.audio_channels:
            raise ValueError(f"SCNet: dims[0]={dims[0]} must be 2 * audio_channels = {2 * self.audio_channels} "
                             "(real and imaginary STFT parts per channel)")
        bands = len(band_ratios)
        if not (len(band_strides) == len(band_kernels) == len(conv_depths) == bands) or bands < 1:
            raise ValueError(f"SCNet: band_ratios, band_strides, band_kernels and conv_depths need one entry per "
                             f"band, got {band_ratios}, {band_strides}, {band_kernels}, {conv_depths}")
        if min(band_ratios) <= 0 or abs(sum(band_ratios) - 1.0) > 1e-3:
            raise ValueError(f"SCNet: band_ratios must be positive and sum to 1, got {band_ratios}")
        if min(band_strides) < 1 or min(band_kernels) < 1 or min(conv_depths) < 0:
            raise ValueError(f"SCNet: band_strides / band_kernels must be >= 1 and conv_depths >= 0, got "
                             f"{band_strides}, {band_kernels}, {conv_depths}")
        if conv_kernel < 1 or conv_kernel % 2 == 0:
            raise ValueError(f"SCNet: conv_kernel must be odd and positive, got {conv_kernel}")
        if compress <= 0 or int(min(dims[1:]) / compress) < 1:
            raise ValueError(f"SCNet: compress={compress} leaves no hidden channels for dims {dims}")
        if dual_path_layers < 0 or dual_path_layers % 2:
            raise ValueError(f"SCNet: dual_path_layers must be even and >= 0 (each rfft needs its irfft), "
                             f"got {dual_path_layers}")
        if expand < 1:
            raise ValueError(f"SCNet: expand must be >= 1, got {expand}")
        if n_fft < 2 or hop_length < 1 or hop_length > n_fft:
            raise ValueError(f"SCNet: need 1 <= hop_length <= n_fft, got n_fft={n_fft}, hop_length={hop_length}")
        self.dims, self.n_fft, self.hop_length, self.normalized = dims, int(n_fft), int(hop_length), bool(normalized)
        self.normalize_input = bool(normalize_input)
        self.encoder = nn.ModuleList(
            SDBlock(c_in, c_out, band_ratios, band_strides, band_kernels, conv_depths, compress, conv_kernel)
            for c_in, c_out in zip(dims[:-1], dims[1:]))
        self.separation = nn.ModuleList(DualPathLayer(dims[-1] * (2 if i % 2 else 1), int(expand))
                                        for i in range(dual_path_layers))
        outs = [dims[0] * len(self.sources), *dims[1:-1]]
        self.decoder = nn.ModuleList(SUBlock(c_in, c_out, band_strides, band_kernels)
                                     for c_in, c_out in reversed(list(zip(dims[1:], outs))))

    def padding(self, length: int) -> int:
        """Samples appended to a ``length``-sample mixture: ``length + pad`` is an odd number of hops."""
        hop = self.hop_length
        pad = hop - length % hop
        return pad + hop if (length + pad) // hop % 2 == 0 else pad

    def forward(self, mix: Tensor) -> Tensor:
        """Separate ``mix``: ``(B, C, T)`` -> ``(B, S, C, T)``."""
        self.check_mixture(mix)
        length = mix.shape[-1]
        padded = length + self.padding(length)
        spectral = dict(n_fft=self.n_fft, hop_length=self.hop_length, normalized=self.normalized,
                        window="rectangular")
        with torch.autocast(mix.device.type, enabled=False):
            wav = F_.pad(mix.float(), (0, padded - length))
            pad_mode = "reflect" if padded > self.n_fft // 2 else "constant"
            spec = (stft_pairs if real_valued_active() else stft)(wav, pad_mode=pad_mode, **spectral)
        x = rearrange(spec if not spec.is_complex() else torch.view_as_real(spec), "b c f n r -> b (c r) f n")
        if self.normalize_input:
            mean, std = x.mean(dim=(1, 2, 3), keepdim=True), x.std(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) / (1e-5 + std)
        saved = []
        for block in self.encoder:
            x, skip, lengths, widths = block(x)
            saved.append((skip, lengths, widths))
        for i, layer in enumerate(self.separation):
            x = layer(x)
            x = _to_frequency(x) if i % 2 == 0 else _to_time(x)
        for block, (skip, lengths, widths) in zip(self.decoder, reversed(saved)):
            x = block(x, skip, lengths, widths)
        with torch.autocast(mix.device.type, enabled=False):
            x = x.float()
            if self.normalize_input:
                x = x * std + mean
            x = rearrange(x, "b (s c r) f n -> b s c f n r", s=len(self.sources), r=2)
            if real_valued_active():  # ONNX export: real pairs
                out = istft_pairs(x, length=padded, **spectral)
            else:
                out = istft(torch.view_as_complex(x.contiguous()), length=padded, **spectral)
        return out[..., :length]
