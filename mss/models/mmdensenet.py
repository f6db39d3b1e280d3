"""MMDenseNet and MMDenseLSTM (Takahashi & Mitsufuji, WASPAA 2017; Takahashi, Goswami & Mitsufuji, IWAENC 2018):
multi-scale multi-band DenseNets, one magnitude network per target.

There is no official code. The structure follows the papers as read by tky823/DNN-based_source_separation
(commit 8663d6fc, ``src/models/mm_densenet.py``, ``mm_dense_rnn.py``, ``m_densenet.py``, ``dense_rnn.py``), whose
configurations ``egs/musdb18/mm-dense-lstm/config/lstm-after-dense`` and ``mm-densenet/config/paper`` are
``conf/model/mmdenselstm.yaml`` and ``mmdensenet.yaml``; parameter names map onto that code's with
:func:`mss.pretrained.tky_dense.convert_state_dict`.

Pipeline of :class:`MMDenseNet` (the separator; an LSTM-free configuration is MMDenseNet, one with ``lstm`` sizes is
MMDenseLSTM):

1. STFT of the mixture (periodic Hann ``n_fft`` / ``hop_length``, ``center=True``, reflect padding), magnitude
   ``|X|`` ``(B, C, F, N)``;
2. per target (:class:`MMDenseTarget`): the first ``sum(bins)`` bins are normalised ``(|X| - in_bias) /
   (|in_scale| + eps)`` with trainable per-bin vectors; split into bands (e.g. low / middle / high) along frequency;
   every band and the full band go through their own multi-scale dense U-Net (:class:`BandNet`); band outputs are
   concatenated along frequency, then with the full-band output along channels; a final dense block, BatchNorm, a
   gated 1x1 conv to ``C`` channels (``value * sigmoid(gate)``), the per-bin output affine ``out_scale * y +
   out_bias`` and a ReLU give the target magnitude (the network predicts the magnitude, not a mask);
3. eval mode with ``wiener_iterations > 0``: multichannel Wiener EM from the target magnitudes with the mixture phase
   (:func:`mss.audio.wiener.wiener`; the papers' post-processing, Nugraha et al. 2016); with one target the residual
   is added as a second source for the EM. Training mode, or ``wiener_iterations=0``: target magnitude with the
   mixture phase (tky823's ``TimeDomainWrapper``);
4. iSTFT with the input length.

:class:`BandNet` (one band): zero "same" padding + conv (``features`` channels); ``D = len(growth) // 2`` down
blocks (dense block, then 2x2 average pooling; an odd size is first zero-padded by one row / column at the end and the
skip is cropped back); a bottleneck block; ``D`` up blocks (BatchNorm -> 2x2 stride-2 transposed conv -> crop to the
skip (centred, the extra row / column removed at the end) -> concat ``[x, skip]`` -> block); bands whose last growth
is smaller than the largest band's get BatchNorm + a 1x1 conv up to it. A bottleneck or up block with ``lstm[i] > 0``
is "LSTM after dense" (:class:`DenseLSTMBlock`): the dense block's output is squeezed to one channel by a 1x1 conv, a
one-layer BiLSTM of ``lstm[i]`` units per direction runs over frames with the ``F_i`` bins of that scale as features,
a linear layer maps back to ``F_i`` bins, and that one channel is appended to the dense output; with ``layers[i] = 0``
the block is the LSTM branch alone, applied to the block input (tky823's ``RNNBlock``: MMDenseLSTM's high band).
Dense blocks are :class:`mss.models.dense_blocks.DenseBlock`.

Reference behaviours followed (tky823): BatchNorm epsilon and the input-normalisation epsilon are ``1e-12``; even
kernels (MMDenseNet's 4x3 and the final 2x1) pad the extra row at the end; down blocks pad odd sizes at the end;
bins above ``sum(bins)`` (none in the shipped configurations) bypass the network: the output there is the input
magnitude. Down-path blocks and the last block of a band cannot hold an LSTM (tky823 neither); this raises.

Sizes: 1,370,784 parameters per stereo target for ``mmdenselstm`` (n_fft 4096: bands 380 / 644 / 1025 bins), 339,468
for ``mmdensenet`` (n_fft 2048: 512 / 513 bins). These are tky823's reading of the papers, not Sony's SiSEC 2018
TAK1-TAK3 systems, whose exact configurations are unpublished.

Shape legend: ``B`` batch, ``S`` targets, ``C`` channels, ``T`` samples, ``F`` bins, ``N`` frames, ``K`` feature
channels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F_
from torch import Tensor, nn

from mss.models.blocks import run_rnn
from mss.models.dense_blocks import DenseBlock, pad_same, pair
from mss.models.magnitude import MagnitudeSeparator

__all__ = ["BandNet", "DenseLSTMBlock", "MMDenseNet", "MMDenseTarget"]

BAND_KEYS = {"bins", "features", "growth", "layers", "lstm", "kernel", "dilated"}


class DenseLSTMBlock(nn.Module):
    """Dense block (if ``layers > 0``) followed by an optional BiLSTM branch over frames (module docstring).

    ``(B, in, F, N) -> (B, out_channels, F, N)`` with ``out_channels = growth * (layers > 0) + (lstm > 0)``.
    """

    def __init__(self, in_channels: int, growth: int, layers: int, kernel_size: Sequence[int] | int,
                 dilated: bool, lstm: int, n_bins: int, eps: float):
        super().__init__()
        if layers <= 0 and lstm <= 0:
            raise ValueError("a dense block needs layers > 0 or an LSTM (lstm > 0)")
        self.dense = DenseBlock(in_channels, growth, layers, kernel_size, dilated, eps) if layers > 0 else None
        channels = growth if self.dense is not None else in_channels
        self.lstm = None
        if lstm > 0:
            self.lstm_in = nn.Conv2d(channels, 1, 1)
            self.lstm = nn.LSTM(n_bins, lstm, batch_first=True, bidirectional=True)
            self.lstm_out = nn.Linear(2 * lstm, n_bins)
        self.out_channels = (growth if self.dense is not None else 0) + (1 if lstm > 0 else 0)

    def forward(self, x: Tensor) -> Tensor:
        y = self.dense(x) if self.dense is not None else x
        if self.lstm is None:
            return y
        z = self.lstm_in(y)[:, 0].transpose(1, 2)  # B N F
        z = self.lstm_out(run_rnn(self.lstm, z)[0]).transpose(1, 2).unsqueeze(1)  # B 1 F N
        return torch.cat([y, z], dim=1) if self.dense is not None else z


class UpBlock(nn.Module):
    """BatchNorm -> 2x2 transposed conv (stride 2) -> crop to the skip -> concat ``[x, skip]`` -> block."""

    def __init__(self, in_channels: int, skip_channels: int, block: dict, eps: float):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels, eps=eps)
        self.upsample = nn.ConvTranspose2d(in_channels, in_channels, 2, stride=2)
        self.block = DenseLSTMBlock(in_channels + skip_channels, eps=eps, **block)
        self.out_channels = self.block.out_channels

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.upsample(self.norm(x))
        df, dn = x.shape[-2] - skip.shape[-2], x.shape[-1] - skip.shape[-1]
        x = x[..., df // 2:x.shape[-2] - (df - df // 2), dn // 2:x.shape[-1] - (dn - dn // 2)]
        return self.block(torch.cat([x, skip], dim=1))


class BandNet(nn.Module):
    """Multi-scale dense U-Net of one band: ``(B, C, F, N) -> (B, out, F, N)``.

    Args:
        in_channels: ``C``.
        n_bins: ``F`` of the band (sets the LSTM sizes).
        features: channels of the first conv.
        growth, layers, lstm: per block (``2 * D + 1`` entries: ``D`` down, bottleneck, ``D`` up).
        kernel: conv kernel ``(bins, frames)``.
        dilated: dilated dense blocks.
        out_channels: if given, BatchNorm + 1x1 conv from the last growth to this many channels.
        eps: BatchNorm epsilon.
    """

    def __init__(self, in_channels: int, n_bins: int, features: int, growth: Sequence[int], layers: Sequence[int],
                 lstm: Sequence[int], kernel: Sequence[int] | int = 3, dilated: bool = False,
                 out_channels: int | None = None, eps: float = 1e-12):
        super().__init__()
        depth = len(growth) // 2
        self.kernel = pair(kernel)
        self.stem = nn.Conv2d(in_channels, features, self.kernel)
        bins = [n_bins]
        for _ in range(depth):
            bins.append(math.ceil(bins[-1] / 2))
        blocks = [dict(growth=growth[i], layers=layers[i], kernel_size=self.kernel, dilated=dilated, lstm=lstm[i],
                       n_bins=bins[i] if i <= depth else bins[2 * depth - i]) for i in range(2 * depth + 1)]
        self.down = nn.ModuleList()
        channels = features
        for i in range(depth):
            self.down.append(DenseBlock(channels, growth[i], layers[i], self.kernel, dilated, eps))
            channels = growth[i]
        self.bottleneck = DenseLSTMBlock(channels, eps=eps, **blocks[depth])
        channels = self.bottleneck.out_channels
        self.up = nn.ModuleList()
        for i in range(depth):
            self.up.append(UpBlock(channels, growth[depth - 1 - i], blocks[depth + 1 + i], eps))
            channels = self.up[-1].out_channels
        self.project = None
        if out_channels is not None:
            self.project = nn.Sequential(nn.BatchNorm2d(channels, eps=eps), nn.Conv2d(channels, out_channels, 1))
            channels = out_channels
        self.out_channels = channels

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(pad_same(x, self.kernel))
        skips = []
        for block in self.down:
            f, n = x.shape[-2:]
            x = F_.pad(x, (0, n % 2, 0, f % 2))
            x = block(x)
            skips.append(x[..., :f, :n])
            x = F_.avg_pool2d(x, 2)
        x = self.bottleneck(x)
        for block, skip in zip(self.up, reversed(skips)):
            x = block(x, skip)
        return self.project(x) if self.project is not None else x


def _band_settings(name: str, spec: Mapping, full: bool) -> dict:
    """Validated :class:`BandNet` keyword arguments of one band's configuration."""
    spec = dict(spec)
    allowed = BAND_KEYS - {"bins"} if full else BAND_KEYS
    unknown = set(spec) - allowed
    if unknown:
        raise ValueError(f"MMDenseNet band {name!r}: unknown option(s) {sorted(unknown)} (allowed: {sorted(allowed)})")
    for key in ("features", "growth", "layers") + (() if full else ("bins",)):
        if key not in spec:
            raise ValueError(f"MMDenseNet band {name!r}: missing {key!r}")
    growth, layers = [int(g) for g in spec["growth"]], [int(n) for n in spec["layers"]]
    lstm = [int(h) for h in spec.get("lstm") or [0] * len(growth)]
    if len(growth) < 3 or len(growth) % 2 == 0 or not len(growth) == len(layers) == len(lstm):
        raise ValueError(f"MMDenseNet band {name!r}: growth, layers and lstm need the same odd length >= 3 "
                         f"(down blocks, bottleneck, up blocks), got {len(growth)}, {len(layers)}, {len(lstm)}")
    depth = len(growth) // 2
    if any(h > 0 for h in lstm[:depth]):
        raise ValueError(f"MMDenseNet band {name!r}: lstm={lstm}: down-path blocks cannot hold an LSTM")
    if lstm[-1] > 0:
        raise ValueError(f"MMDenseNet band {name!r}: lstm={lstm}: the last block cannot hold an LSTM")
    if any(n < 1 for i, n in enumerate(layers) if i != depth) or any(g < 1 for g, n in zip(growth, layers) if n):
        raise ValueError(f"MMDenseNet band {name!r}: layers={layers}, growth={growth}: every block needs layers >= 1 "
                         f"and growth >= 1 (only the bottleneck may have 0 layers, with an LSTM)")
    if layers[depth] < 1 and lstm[depth] < 1:
        raise ValueError(f"MMDenseNet band {name!r}: a bottleneck with 0 layers needs an LSTM")
    if int(spec["features"]) < 1 or (not full and int(spec["bins"]) < 1):
        raise ValueError(f"MMDenseNet band {name!r}: features and bins must be >= 1")
    return dict(features=int(spec["features"]), growth=growth, layers=layers, lstm=lstm,
                kernel=pair(spec.get("kernel", 3)), dilated=bool(spec.get("dilated", False)))


class MMDenseTarget(nn.Module):
    """One target network: mixture magnitude ``(B, C, F, N)`` -> target magnitude ``(B, C, F, N)``.

    Args:
        channels: ``C``.
        n_bins: ``F``.
        bands: ``{name: {bins, features, growth, layers, lstm, kernel, dilated}}`` in frequency order.
        full: the full band's settings (no ``bins``).
        final: ``{growth, layers, kernel, dilated}`` of the final dense block.
        eps: BatchNorm and input-normalisation epsilon.
    """

    def __init__(self, channels: int, n_bins: int, bands: Mapping[str, Mapping], full: Mapping,
                 final: Mapping, eps: float = 1e-12):
        super().__init__()
        if not bands:
            raise ValueError("MMDenseNet: bands must name at least one band")
        settings = {name: _band_settings(name, spec, False) for name, spec in bands.items()}
        if "full" in settings:
            raise ValueError("MMDenseNet: 'full' is the full-band network; name the bands otherwise")
        self.sections = [int(bands[name]["bins"]) for name in settings]
        self.valid_bins = sum(self.sections)
        if self.valid_bins > n_bins:
            raise ValueError(f"MMDenseNet: band bins {self.sections} sum to {self.valid_bins} > n_fft // 2 + 1 = "
                             f"{n_bins}")
        unknown = set(final) - {"growth", "layers", "kernel", "dilated"}
        if unknown or not {"growth", "layers"} <= set(final):
            raise ValueError(f"MMDenseNet final: needs growth and layers (optional kernel, dilated); got {dict(final)}")
        self.eps = eps
        top = max(s["growth"][-1] for s in settings.values())
        nets = {name: BandNet(channels, bins, eps=eps, out_channels=top if s["growth"][-1] < top else None, **s)
                for (name, s), bins in zip(settings.items(), self.sections)}
        full_settings = _band_settings("full", full, True)
        nets["full"] = BandNet(channels, self.valid_bins, eps=eps, **full_settings)
        self.bands = nn.ModuleDict(nets)
        growth = int(final["growth"])
        self.final = DenseBlock(top + full_settings["growth"][-1], growth, int(final["layers"]),
                                pair(final.get("kernel", 3)), bool(final.get("dilated", False)), eps)
        self.out_norm = nn.BatchNorm2d(growth, eps=eps)
        self.out_value = nn.Conv2d(growth, channels, 1)
        self.out_gate = nn.Conv2d(growth, channels, 1)
        self.in_scale = nn.Parameter(torch.ones(self.valid_bins))
        self.in_bias = nn.Parameter(torch.zeros(self.valid_bins))
        self.out_scale = nn.Parameter(torch.ones(self.valid_bins))
        self.out_bias = nn.Parameter(torch.zeros(self.valid_bins))

    def forward(self, mag: Tensor) -> Tensor:
        valid = mag[:, :, :self.valid_bins]
        x = (valid - self.in_bias[:, None]) / (self.in_scale.abs()[:, None] + self.eps)
        names = [name for name in self.bands if name != "full"]
        parts = [self.bands[name](part) for name, part in zip(names, x.split(self.sections, dim=2))]
        x = torch.cat([torch.cat(parts, dim=2), self.bands["full"](x)], dim=1)
        x = self.out_norm(self.final(x))
        x = self.out_value(x) * torch.sigmoid(self.out_gate(x))
        x = F_.relu(self.out_scale[:, None] * x + self.out_bias[:, None])
        return torch.cat([x, mag[:, :, self.valid_bins:]], dim=2)


class MMDenseNet(MagnitudeSeparator):
    """MMDenseNet / MMDenseLSTM separator: mixture ``(B, C, T)`` -> targets ``(B, S, C, T)``, one
    :class:`MMDenseTarget` per target (module docstring).

    Args:
        sources: target names.
        audio_channels, sample_rate: audio constants.
        n_fft, hop_length: STFT (4096 / 1024 MMDenseLSTM; 2048 / 512 in the MMDenseNet paper configuration).
        bands, full, final: network settings (:class:`MMDenseTarget`).
        wiener_iterations: EM iterations at inference (1; 0 = mixture phase only).
        wiener_window: frames per Wiener window (300).
        residual: also estimate ``mix - sum(targets)`` for the EM (dropped from the output).
        segment: seconds per chunk for overlap-add inference (:attr:`segment_length`).
        eps: BatchNorm / input-normalisation epsilon (1e-12 as tky823).
    """

    def __init__(self, sources: Sequence[str], audio_channels: int = 2, sample_rate: int = 44100,
                 n_fft: int = 4096, hop_length: int = 1024, bands: Mapping[str, Mapping] | None = None,
                 full: Mapping | None = None, final: Mapping | None = None, wiener_iterations: int = 1,
                 wiener_window: int | None = 300, residual: bool = False, segment: float = 6.0,
                 eps: float = 1e-12):
        super().__init__(sources, audio_channels, sample_rate, round(segment * sample_rate))
        if bands is None or full is None or final is None:
            raise ValueError("MMDenseNet: bands, full and final must be given (see conf/model/mmdensenet.yaml)")
        if n_fft < 2 or not 0 < hop_length <= n_fft:
            raise ValueError(f"MMDenseNet: need n_fft >= 2 and 0 < hop_length <= n_fft, got {n_fft}, {hop_length}")
        self.set_masking(n_fft, hop_length, wiener_iterations, wiener_window, residual)
        self.targets = nn.ModuleDict({
            name: MMDenseTarget(audio_channels, n_fft // 2 + 1, bands, full, final, eps) for name in self.sources})
