"""D3Net (Takahashi & Mitsufuji, "Densely connected multidilated convolutional networks for dense prediction tasks",
CVPR 2021; MSS version arXiv 2010.01733): one multi-dilated DenseNet per target on the magnitude spectrogram.

Follows Sony's official nnabla code (sony/ai-research-code cfe96dfe, ``d3net/d3net_basic_blocks.py`` and
``d3net/music-source-separation/model.py``, ``configs/{target}.yaml``); ``conf/model/d3net.yaml`` holds the four
official per-target configurations.

Pipeline of :class:`D3Net` (the separator):

1. STFT of the mixture (periodic Hann 4096 / 1024, ``center=True``, reflect padding), magnitude ``|X|``;
2. per target (:class:`D3NetTarget`), in the official layout ``(B, C, N, F)`` (frames on the first spatial axis,
   frequency on the second; conv weights are ``[out, in, k_frames, k_freq]``): frames zero-padded at the end to a
   multiple of ``2 ** depth`` (the official graph only takes such patches); ``(|X| - in_offset) / in_scale`` with
   trainable per-bin vectors (no epsilon, as the reference); bands ``[0, band_split[0])``, ...,
   ``[band_split[-1], valid_bins)`` and the full band ``[0, valid_bins)``, each through its own multi-dilated dense
   U-Net (:class:`MD3Net`: 3x3 conv with bias, then ``D`` down blocks (:class:`mss.models.dense_blocks.D3Block` + 2x2
   average pooling), a bottleneck D3 block, ``D`` up blocks (BatchNorm -> 2x2 stride-2 transposed conv with bias ->
   concat ``[x, skip]`` -> D3 block)); a band whose last growth is below the largest gets BatchNorm + 1x1 conv up to
   it ("match_fm_conv"); bands concatenated along frequency, then with the full band along channels; final dilated
   dense block (growth 12, 3 layers); BatchNorm -> ``sigmoid(conv_gate) * conv_filt`` (1x1 to ``C``) ->
   ``* decode_scale + decode_bias`` -> ReLU;
3. **bins >= valid_bins (1600, 17.2 kHz) are not modelled: the output there is the input magnitude**, copied through;
4. eval mode with ``wiener_iterations > 0``: multichannel Wiener EM (1 iteration in the official separation) from the
   target magnitudes, mixture phase; training mode or ``wiener_iterations=0``: magnitude with the mixture phase;
   iSTFT with the input length.

Reference behaviours followed: ``decode_bias`` initialises to **1** (not 0), ``decode_scale`` and ``in_scale`` to 1,
``in_offset`` to 0 (the reference initialises ``in_offset`` / ``in_scale`` from dataset statistics; they are trainable
either way), so ``in_offset`` / ``in_scale`` cover all ``n_fft // 2 + 1`` bins although bins >= ``valid_bins`` never
use them (counted like the reference); BatchNorm epsilon 1e-5 (nnabla's default); layer ``i`` of each dilated dense
block has dilation ``2 ** i``; up block ``i`` takes its unit count from ``blocks[depth + i]`` (the official code zips
the up path's D3-block counts from the bottleneck's index; the shipped configurations have equal counts, so this
changes nothing there); compression rates are 1 (``comp_rates`` in the reference; other values are not supported).
Deviation: the official separation runs the network on 256-frame patches (384 for bass) with half-patch shifts and
crops the patch edges; here a whole chunk of :attr:`segment_length` samples is one input (frames zero-padded at the
end to a multiple of ``2 ** depth``), overlap-added by mss inference.

Sizes: vocals 2,967,407 parameters (= other), drums 2,873,284, bass 2,419,822 (each with the 7,298 of ``in_offset``,
``in_scale``, ``decode_scale``, ``decode_bias``); BatchNorm statistics are buffers.

Shape legend: ``B`` batch, ``S`` targets, ``C`` channels, ``T`` samples, ``F`` bins, ``N`` frames, ``K`` feature
channels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F_
from torch import Tensor, nn

from mss.models.dense_blocks import D3Block, DenseBlock
from mss.models.magnitude import MagnitudeSeparator

__all__ = ["D3Net", "D3NetTarget", "MD3Net"]

TARGET_KEYS = {"band_split", "init_features", "growth", "layers", "blocks", "full_features", "full_growth",
               "full_layers", "full_blocks"}


class MD3Net(nn.Module):
    """Multi-dilated dense U-Net of one band, ``(B, C, N, F) -> (B, K, N, F)`` (``N`` and ``F`` divisible by
    ``2 ** (len(growth) // 2)``).

    Args:
        in_channels: ``C``.
        features: channels of the first 3x3 conv.
        growth, layers, blocks: per D3 block (``2 * D + 1`` entries: ``D`` down, bottleneck, ``D`` up).
        out_channels: if given, BatchNorm + 1x1 conv from the last growth to this many channels.
        eps: BatchNorm epsilon.
    """

    def __init__(self, in_channels: int, features: int, growth: Sequence[int], layers: Sequence[int],
                 blocks: Sequence[int], out_channels: int | None = None, eps: float = 1e-5):
        super().__init__()
        depth = len(growth) // 2
        self.depth = depth
        self.stem = nn.Conv2d(in_channels, features, 3, padding=1)
        self.down = nn.ModuleList()
        channels = features
        for i in range(depth):
            self.down.append(D3Block(channels, growth[i], layers[i], blocks[i], eps=eps))
            channels = growth[i]
        self.bottleneck = D3Block(channels, growth[depth], layers[depth], blocks[depth], eps=eps)
        channels = growth[depth]
        self.up_norm, self.upsample, self.up = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i in range(depth):
            self.up_norm.append(nn.BatchNorm2d(channels, eps=eps))
            self.upsample.append(nn.ConvTranspose2d(channels, channels, 2, stride=2))
            skip = growth[depth - 1 - i]
            # the official code takes the unit count of up block i from blocks[depth + i] (module docstring)
            self.up.append(D3Block(channels + skip, growth[depth + 1 + i], layers[depth + 1 + i], blocks[depth + i],
                                   eps=eps))
            channels = growth[depth + 1 + i]
        self.project = None
        if out_channels is not None:
            self.project = nn.Sequential(nn.BatchNorm2d(channels, eps=eps), nn.Conv2d(channels, out_channels, 1))
            channels = out_channels
        self.out_channels = channels

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F_.avg_pool2d(x, 2)
        x = self.bottleneck(x)
        for norm, upsample, block, skip in zip(self.up_norm, self.upsample, self.up, reversed(skips)):
            x = block(torch.cat([upsample(norm(x)), skip], dim=1))
        return self.project(x) if self.project is not None else x


def _check_target(name: str, spec: Mapping, valid_bins: int) -> dict:
    """Validated settings of one target's configuration."""
    spec = dict(spec)
    unknown, missing = set(spec) - TARGET_KEYS, TARGET_KEYS - set(spec)
    if unknown or missing:
        raise ValueError(f"D3Net target {name!r}: unknown option(s) {sorted(unknown)}, missing {sorted(missing)} "
                         f"(expected {sorted(TARGET_KEYS)})")
    split = [int(b) for b in spec["band_split"]]
    edges = [0, *split, valid_bins]
    if any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"D3Net target {name!r}: band_split={split} must increase strictly within (0, "
                         f"valid_bins={valid_bins})")
    n_bands = len(split) + 1
    per_band = {key: [list(map(int, v)) for v in spec[key]] for key in ("growth", "layers", "blocks")}
    features = [int(f) for f in spec["init_features"]]
    if len(features) != n_bands or any(len(per_band[key]) != n_bands for key in per_band):
        raise ValueError(f"D3Net target {name!r}: init_features, growth, layers and blocks need one entry per band "
                         f"({n_bands} bands from band_split={split})")
    full = dict(features=int(spec["full_features"]), growth=[int(g) for g in spec["full_growth"]],
                layers=[int(n) for n in spec["full_layers"]], blocks=[int(m) for m in spec["full_blocks"]])
    bands = [dict(features=f, growth=g, layers=n, blocks=m)
             for f, g, n, m in zip(features, per_band["growth"], per_band["layers"], per_band["blocks"])]
    for band, width, label in [*zip(bands, [b - a for a, b in zip(edges, edges[1:])], range(n_bands)),
                               (full, valid_bins, "full")]:
        g, n, m = band["growth"], band["layers"], band["blocks"]
        if len(g) < 3 or len(g) % 2 == 0 or not len(g) == len(n) == len(m):
            raise ValueError(f"D3Net target {name!r} band {label}: growth, layers and blocks need the same odd length "
                             f">= 3, got {len(g)}, {len(n)}, {len(m)}")
        if min(g + n + m) < 1 or band["features"] < 1:
            raise ValueError(f"D3Net target {name!r} band {label}: features, growth, layers and blocks must be >= 1")
        if width % 2 ** (len(g) // 2):
            raise ValueError(f"D3Net target {name!r} band {label}: {width} bins are not divisible by "
                             f"2 ** {len(g) // 2} (its pooling depth)")
    return dict(split=split, bands=bands, full=full)


class D3NetTarget(nn.Module):
    """One target network: mixture magnitude ``(B, C, F, N)`` -> target magnitude ``(B, C, F, N)`` (module
    docstring).

    Args:
        channels: ``C``.
        n_bins: ``F``.
        valid_bins: bins modelled (1600); the rest are copied from the input.
        band_split: inner band edges (``[256]``: bands ``[0, 256)`` and ``[256, valid_bins)``).
        init_features, growth, layers, blocks: per band (lists of per-block lists for ``growth`` etc.).
        full_features, full_growth, full_layers, full_blocks: the full band.
        final_growth, final_layers: the final dilated dense block (12 / 3).
        eps: BatchNorm epsilon (nnabla's 1e-5).
    """

    def __init__(self, channels: int, n_bins: int, valid_bins: int, band_split: Sequence[int],
                 init_features: Sequence[int], growth: Sequence[Sequence[int]], layers: Sequence[Sequence[int]],
                 blocks: Sequence[Sequence[int]], full_features: int, full_growth: Sequence[int],
                 full_layers: Sequence[int], full_blocks: Sequence[int], final_growth: int = 12,
                 final_layers: int = 3, eps: float = 1e-5, name: str = "target"):
        super().__init__()
        if not 0 < valid_bins <= n_bins:
            raise ValueError(f"D3Net: valid_bins={valid_bins} must lie in [1, n_fft // 2 + 1 = {n_bins}]")
        settings = _check_target(name, dict(band_split=band_split, init_features=init_features, growth=growth,
                                            layers=layers, blocks=blocks, full_features=full_features,
                                            full_growth=full_growth, full_layers=full_layers,
                                            full_blocks=full_blocks), valid_bins)
        self.valid_bins = valid_bins
        edges = [0, *settings["split"], valid_bins]
        self.sections = [b - a for a, b in zip(edges, edges[1:])]
        self.depth = max(len(b["growth"]) // 2 for b in [*settings["bands"], settings["full"]])
        top = max(b["growth"][-1] for b in settings["bands"])
        self.bands = nn.ModuleList(
            MD3Net(channels, out_channels=top if b["growth"][-1] < top else None, eps=eps, **b)
            for b in settings["bands"])
        self.full = MD3Net(channels, eps=eps, **settings["full"])
        self.final = DenseBlock(top + settings["full"]["growth"][-1], final_growth, final_layers, 3, True, eps)
        self.out_norm = nn.BatchNorm2d(final_growth, eps=eps)
        self.conv_gate = nn.Conv2d(final_growth, channels, 1)
        self.conv_filt = nn.Conv2d(final_growth, channels, 1)
        self.in_offset = nn.Parameter(torch.zeros(n_bins))
        self.in_scale = nn.Parameter(torch.ones(n_bins))
        self.decode_scale = nn.Parameter(torch.ones(valid_bins))
        self.decode_bias = nn.Parameter(torch.ones(valid_bins))  # 1, as the reference

    def forward(self, mag: Tensor) -> Tensor:
        frames = mag.shape[-1]
        x = mag.transpose(2, 3)  # B C N F
        x = F_.pad(x, (0, 0, 0, -frames % 2 ** self.depth))
        scaled = (x - self.in_offset) / self.in_scale
        parts, start = [], 0
        for net, width in zip(self.bands, self.sections):
            parts.append(net(scaled[..., start:start + width]))
            start += width
        y = torch.cat([torch.cat(parts, dim=-1), self.full(scaled[..., :self.valid_bins])], dim=1)
        y = self.out_norm(self.final(y))
        y = torch.sigmoid(self.conv_gate(y)) * self.conv_filt(y)
        y = F_.relu(y * self.decode_scale + self.decode_bias)[:, :, :frames]
        return torch.cat([y.transpose(2, 3), mag[:, :, self.valid_bins:]], dim=2)


class D3Net(MagnitudeSeparator):
    """D3Net separator: mixture ``(B, C, T)`` -> targets ``(B, S, C, T)``, one :class:`D3NetTarget` per target with
    its own configuration (module docstring).

    Args:
        sources: target names; each must have an entry in ``targets``.
        audio_channels, sample_rate: audio constants.
        targets: ``{name: {band_split, init_features, growth, layers, blocks, full_features, full_growth,
            full_layers, full_blocks}}`` (``conf/model/d3net.yaml``: the official four).
        n_fft, hop_length: STFT (4096 / 1024).
        valid_bins: bins modelled (1600); bins above are copied from the mixture.
        final_growth, final_layers: the final dilated dense block (12 / 3).
        wiener_iterations: EM iterations at inference (1 as the official separation; 0 = mixture phase).
        wiener_window: frames per Wiener window (300).
        residual: also estimate ``mix - sum(targets)`` for the EM (dropped from the output).
        segment: seconds per chunk for overlap-add inference (:attr:`segment_length`).
        eps: BatchNorm epsilon.
    """

    def __init__(self, sources: Sequence[str], audio_channels: int = 2, sample_rate: int = 44100,
                 targets: Mapping[str, Mapping] | None = None, n_fft: int = 4096, hop_length: int = 1024,
                 valid_bins: int = 1600, final_growth: int = 12, final_layers: int = 3, wiener_iterations: int = 1,
                 wiener_window: int | None = 300, residual: bool = False, segment: float = 6.0, eps: float = 1e-5):
        super().__init__(sources, audio_channels, sample_rate, round(segment * sample_rate))
        targets = dict(targets or {})
        missing = [name for name in self.sources if name not in targets]
        if missing:
            raise ValueError(f"D3Net: no configuration in `targets` for source(s) {missing} (configured: "
                             f"{sorted(targets)})")
        if n_fft < 2 or not 0 < hop_length <= n_fft:
            raise ValueError(f"D3Net: need n_fft >= 2 and 0 < hop_length <= n_fft, got {n_fft}, {hop_length}")
        self.set_masking(n_fft, hop_length, wiener_iterations, wiener_window, residual)
        n_bins = n_fft // 2 + 1
        self.targets = nn.ModuleDict()
        for name in self.sources:
            spec = dict(targets[name])
            unknown = set(spec) - TARGET_KEYS
            if unknown:
                raise ValueError(f"D3Net target {name!r}: unknown option(s) {sorted(unknown)} "
                                 f"(expected {sorted(TARGET_KEYS)})")
            self.targets[name] = D3NetTarget(audio_channels, n_bins, valid_bins, final_growth=final_growth,
                                             final_layers=final_layers, eps=eps, name=name, **spec)
