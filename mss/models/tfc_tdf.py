"""TFC-TDF U-Nets: MDX23C (TFC-TDF-U-Net v3; kuielab SDX'23, ZFTurbo MSST ``mdx23c``) and KUIELab-MDX-Net
(TFC-TDF-U-Net v2; MDX Challenge 2021, one network per source).

Both estimate the target's complex spectrogram directly (no mask), as real and imaginary parts stacked on the channel
axis ("complex as channels": ``L_re, L_im, R_re, R_im`` for stereo), with a U-Net whose blocks mix a 3x3 convolution
stack (TFC, time-frequency convolutions) with a fully connected layer across frequency (TDF, time-distributed fully
connected). Shared pipeline of :class:`MDX23C` and :class:`MDXNetV2`:

1. the mixture ``(B, C, T)`` is zero-padded on the right to ``T' = hop * (N - 1)`` samples, ``N`` the smallest
   frame count the U-Net accepts (a multiple of ``2 ** depth``) with ``T' >= T``; at the reference chunk
   (``hop * (dim_t - 1)``, 261,120 samples) nothing is padded, so the output equals the reference's;
2. STFT (:func:`mss.audio.spectral.stft`: periodic Hann, ``center=True`` with **reflect** padding, as
   :func:`torch.stft`'s default that both references use; unnormalised), the first ``dim_f`` bins kept, complex as
   channels ``(B, 2C, dim_f, N)`` with ``re, im`` interleaved per audio channel;
3. the network; 4. the dropped bins (``dim_f`` .. ``n_fft // 2``) are zeros; iSTFT to ``T'`` samples, cropped to
   ``T``. The STFT/iSTFT run in float32 outside autocast.

**MDX23C** (:class:`MDX23C`, reference ``models/mdx23c_tfc_tdf_v3.py`` of MSST ccc011ab, the same network as SDX'23
``tfc_tdf_v3.py``), joint over all sources:

* channel-wise subbands: the ``dim_f`` bins are cut into ``num_subbands`` contiguous bands moved to channels
  (channel ``c * k + j`` = spectrogram channel ``c``, band ``j``): ``(B, 2C * k, dim_f / k, N)``, the "mix";
* ``first_conv`` 1x1 (no bias), then **time and frequency swapped** (``(B, ch, N, F)``: frequency is the last
  axis, which the TDF linears act on);
* ``num_scales`` encoder scales of a :class:`TFCTDFStack` (``l`` pre-activation residual blocks: ``tfc1`` = norm,
  act, 3x3 conv; ``x + tdf(x)`` with ``tdf`` = norm, act, Linear(F -> F/bn), norm, act, Linear(F/bn -> F);
  ``tfc2`` = norm, act, 3x3 conv; plus a 1x1 ``shortcut`` of the block input; no biases anywhere) followed by a
  strided-conv ``downscale`` (norm, act, conv ``scale`` x ``scale``, channels ``+ growth``); a bottleneck stack; the
  decoder upscales (norm, act, transposed conv, channels ``- growth``), **concatenates** the skip and runs a stack
  on ``2 ch`` inputs;
* axes swapped back, the result **multiplied by the first_conv output** (the reference's "reduce artifacts"),
  concatenated after the "mix" (mix first), then ``final_conv`` = 1x1 conv, act, 1x1 conv to ``S * 2C * k``;
  subbands undone. Norm: ``InstanceNorm`` (affine, per-example statistics: no buffers), ``BatchNorm``,
  ``GroupNorm<g>`` or ``none``; activation ``gelu``, ``relu`` or ``elu<alpha>``.

**KUIELab-MDX-Net** (:class:`MDXNetV2`, reference ``src/models/mdxnet.py`` + ``modules.py`` of kuielab/mdx-net
branch Leaderboard_A 1537f1dd): one :class:`TFCTDFNetV2` per source, each with its own ``n_fft`` (vocals 6144,
drums 4096, bass 16384, other 8192: ``dim_f`` = 2048 bins fixes each net's cut-off, bins above it are zeros in the
output) and the same hop. Per net: ``first_conv`` = 1x1 conv (bias) + BatchNorm + ReLU, then **time and frequency
swapped**; encoder = ``TFC_TDF`` (``l`` x [3x3 conv + BN + ReLU], then ``x + tdf(x)``, ``tdf`` = Linear(F -> F/bn)
+ BN + ReLU + Linear(F/bn -> F) + BN + ReLU, linears without bias) and ``ds`` (2x2 stride-2 conv + BN + ReLU,
channels ``+ g``); bottleneck; decoder ``us`` (transposed conv + BN + ReLU, channels ``- g``) whose output is
**multiplied** (not concatenated) with the encoder output of the same scale, then ``TFC_TDF``; ``final_conv`` 1x1
(bias) to ``2C`` channels. The reference's STFT ``window`` and zero ``freq_pad`` are frozen ``nn.Parameter``s; here
they are not module state at all (the window is :mod:`mss.audio.spectral`'s, the pad is made in ``forward``), so
:meth:`~torch.nn.Module.parameters` counts the 7,423,236 trainable weights per source, and the importer drops the two
keys.

Generalisations over the references (identical at their settings): any number of audio channels (the references
reshape for stereo only), any input length (step 1; the references require exactly ``dim_t`` frames), and MDX23C's
output is always ``(B, S, C, T)`` also for one source (as MSST; the SDX copy drops ``S`` then).

Parameter names equal the references' (``encoder_blocks.0.tfc_tdf.blocks.0.tdf.2.weight``,
``targets.vocals.encoding_blocks.0.tdf.0.weight``, ...), so importing is key-for-key (``mss.pretrained.msst_mdx23c``).
Sizes: MDX23C 111,994,368 parameters for 4 stereo sources (MSST ``config_musdb18_mdx23c.yaml``); MDX-Net 7,423,236
per stereo source.

Shape legend: ``B`` batch, ``S`` sources, ``C`` audio channels, ``T`` samples, ``F`` bins (``dim_f``, or
``dim_f / num_subbands`` per subband), ``N`` frames.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F_
from einops import rearrange
from torch import Tensor, nn

from mss.audio.spectral import istft_pairs, stft_pairs
from mss.models.base import Separator

__all__ = ["MDX23C", "MDXNET_N_FFT", "MDXNetV2", "TFCTDFNetV2", "TFCTDFStack", "from_channels", "make_activation",
           "make_norm", "to_channels", "valid_length"]


# ----------------------------------------------------------------------------------------------------------------
# shared spectral glue


def valid_length(length: int, hop_length: int, multiple: int) -> int:
    """Smallest ``hop * (N - 1) >= length`` with the frame count ``N`` a multiple of ``multiple``."""
    frames = -(-(length + hop_length) // hop_length)  # ceil(length / hop) + 1
    frames = -(-frames // multiple) * multiple
    return hop_length * (frames - 1)


def to_channels(mix: Tensor, n_fft: int, hop_length: int, dim_f: int) -> Tensor:
    """Waveform ``(B, C, T)`` -> complex-as-channels spectrogram ``(B, 2C, dim_f, N)`` (re, im per channel)."""
    pad_mode = "reflect" if mix.shape[-1] > n_fft // 2 else "constant"
    spec = stft_pairs(mix.float(), n_fft, hop_length, pad_mode=pad_mode)[:, :, :dim_f]
    return rearrange(spec, "b c f n r -> b (c r) f n")


def from_channels(spec: Tensor, n_fft: int, hop_length: int, length: int) -> Tensor:
    """Complex-as-channels ``(..., 2C, F, N)`` (``F <= n_fft // 2 + 1``; missing high bins are zeros) -> waveform
    ``(..., C, length)``."""
    spec = F_.pad(spec.float(), (0, 0, 0, n_fft // 2 + 1 - spec.shape[-2]))
    spec = rearrange(spec, "... (c r) f n -> ... c f n r", r=2).contiguous()
    return istft_pairs(spec, n_fft, hop_length, length)


def make_norm(kind: str | None, channels: int) -> nn.Module:
    """MSST ``model.norm``: ``InstanceNorm`` (affine), ``BatchNorm``, ``GroupNorm<groups>``, or ``none``."""
    if kind == "InstanceNorm":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "BatchNorm":
        return nn.BatchNorm2d(channels)
    if isinstance(kind, str) and kind.startswith("GroupNorm") and kind[len("GroupNorm"):].isdigit():
        return nn.GroupNorm(int(kind[len("GroupNorm"):]), channels)
    if kind is None or str(kind).lower() in ("none", "identity"):
        return nn.Identity()
    raise ValueError(f"norm={kind!r}: expected InstanceNorm, BatchNorm, GroupNorm<groups> or none")


def make_activation(kind: str) -> nn.Module:
    """MSST ``model.act``: ``gelu``, ``relu`` or ``elu<alpha>`` (e.g. ``elu1.0``)."""
    if kind == "gelu":
        return nn.GELU()
    if kind == "relu":
        return nn.ReLU()
    if isinstance(kind, str) and kind.startswith("elu"):
        try:
            return nn.ELU(float(kind[3:]))
        except ValueError:
            pass
    raise ValueError(f"act={kind!r}: expected gelu, relu or elu<alpha>")


# ----------------------------------------------------------------------------------------------------------------
# MDX23C (TFC-TDF-U-Net v3)


def _pre_act(norm: str, act: str, channels: int, layer: nn.Module) -> nn.Sequential:
    """norm -> activation -> ``layer`` (indices 0, 1, 2 as in the reference state dicts)."""
    return nn.Sequential(make_norm(norm, channels), make_activation(act), layer)


class _TFCTDFBlock(nn.Module):
    """One pre-activation residual TFC-TDF block on ``(B, ch, N, F)``: ``tfc2(y + tdf(y)) + shortcut(x)`` with
    ``y = tfc1(x)``."""

    def __init__(self, in_channels: int, channels: int, bins: int, bottleneck: int, norm: str, act: str):
        super().__init__()
        self.tfc1 = _pre_act(norm, act, in_channels, nn.Conv2d(in_channels, channels, 3, padding=1, bias=False))
        self.tdf = nn.Sequential(make_norm(norm, channels), make_activation(act),
                                 nn.Linear(bins, bins // bottleneck, bias=False),
                                 make_norm(norm, channels), make_activation(act),
                                 nn.Linear(bins // bottleneck, bins, bias=False))
        self.tfc2 = _pre_act(norm, act, channels, nn.Conv2d(channels, channels, 3, padding=1, bias=False))
        self.shortcut = nn.Conv2d(in_channels, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.tfc1(x)
        return self.tfc2(y + self.tdf(y)) + self.shortcut(x)


class TFCTDFStack(nn.Module):
    """``num_blocks`` TFC-TDF v3 blocks (the first maps ``in_channels`` to ``channels``) on ``(B, ch, N, F)``."""

    def __init__(self, in_channels: int, channels: int, num_blocks: int, bins: int, bottleneck: int, norm: str,
                 act: str):
        super().__init__()
        self.blocks = nn.ModuleList(
            _TFCTDFBlock(in_channels if i == 0 else channels, channels, bins, bottleneck, norm, act)
            for i in range(num_blocks))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class _Rescale(nn.Module):
    """norm, activation, then a strided (transposed) convolution by ``scale`` (``conv.{0,2}`` in the reference)."""

    def __init__(self, in_channels: int, out_channels: int, scale: tuple[int, int], norm: str, act: str,
                 up: bool):
        super().__init__()
        kind = nn.ConvTranspose2d if up else nn.Conv2d
        self.conv = _pre_act(norm, act, in_channels, kind(in_channels, out_channels, scale, stride=scale, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class MDX23C(Separator):
    """MDX23C (TFC-TDF-U-Net v3), joint separator: mixture ``(B, C, T)`` -> sources ``(B, S, C, T)``.

    Args:
        sources, audio_channels, sample_rate: audio constants.
        n_fft, hop_length: STFT (8192 / 1024).
        dim_f: bins kept (4096 of 4097; must be divisible by ``num_subbands * scale[1] ** num_scales``).
        num_subbands: channel-wise subbands ``k`` (4).
        num_scales: encoder / decoder scales (5).
        scale: (time, frequency) down-sampling factor of every scale ((2, 2)).
        num_blocks_per_scale: TFC-TDF blocks ``l`` per scale (2).
        num_channels: channels of the first scale ``c`` (128).
        growth: channels added per scale ``g`` (128).
        bottleneck_factor: TDF bottleneck ``bn`` (4).
        norm, act: normalisation / activation (``InstanceNorm`` / ``gelu``; see :func:`make_norm`,
            :func:`make_activation`).
        segment_length: samples per overlap-add chunk (261,120 = 1024 * 255: 256 frames, MSST ``chunk_size``).
    """

    def __init__(self, sources: Sequence[str], audio_channels: int = 2, sample_rate: int = 44100,
                 n_fft: int = 8192, hop_length: int = 1024, dim_f: int = 4096, num_subbands: int = 4,
                 num_scales: int = 5, scale: Sequence[int] = (2, 2), num_blocks_per_scale: int = 2,
                 num_channels: int = 128, growth: int = 128, bottleneck_factor: int = 4,
                 norm: str = "InstanceNorm", act: str = "gelu", segment_length: int | None = 261_120):
        super().__init__(sources, audio_channels, sample_rate, segment_length)
        scale = tuple(int(s) for s in scale)
        if len(scale) != 2 or min(scale) < 1:
            raise ValueError(f"scale must be two positive factors (time, frequency), got {scale}")
        for name, value in (("n_fft", n_fft), ("hop_length", hop_length), ("num_subbands", num_subbands),
                            ("num_scales", num_scales), ("num_blocks_per_scale", num_blocks_per_scale),
                            ("num_channels", num_channels), ("bottleneck_factor", bottleneck_factor)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if growth < 0:
            raise ValueError(f"growth must be >= 0, got {growth}")
        if not 1 <= dim_f <= n_fft // 2 + 1:
            raise ValueError(f"dim_f={dim_f} must lie in [1, n_fft // 2 + 1 = {n_fft // 2 + 1}]")
        bins = dim_f // num_subbands
        if dim_f % num_subbands or bins % scale[1] ** num_scales:
            raise ValueError(f"dim_f={dim_f} must be divisible by num_subbands * scale[1] ** num_scales = "
                             f"{num_subbands * scale[1] ** num_scales}")
        if bins // scale[1] ** num_scales < bottleneck_factor:
            raise ValueError(f"bottleneck_factor={bottleneck_factor} exceeds the {bins // scale[1] ** num_scales} "
                             "bins of the deepest scale")
        make_norm(norm, num_channels), make_activation(act)  # unknown kinds are refused here, by name
        self.n_fft, self.hop_length, self.dim_f = int(n_fft), int(hop_length), int(dim_f)
        self.num_subbands, self.num_scales, self.scale = int(num_subbands), int(num_scales), scale
        spec_channels = 2 * audio_channels * num_subbands

        self.first_conv = nn.Conv2d(spec_channels, num_channels, 1, bias=False)
        c, f = num_channels, bins
        self.encoder_blocks = nn.ModuleList()
        for _ in range(num_scales):
            block = nn.Module()
            block.tfc_tdf = TFCTDFStack(c, c, num_blocks_per_scale, f, bottleneck_factor, norm, act)
            block.downscale = _Rescale(c, c + growth, scale, norm, act, up=False)
            self.encoder_blocks.append(block)
            c, f = c + growth, f // scale[1]
        self.bottleneck_block = TFCTDFStack(c, c, num_blocks_per_scale, f, bottleneck_factor, norm, act)
        self.decoder_blocks = nn.ModuleList()
        for _ in range(num_scales):
            block = nn.Module()
            block.upscale = _Rescale(c, c - growth, scale, norm, act, up=True)
            c, f = c - growth, f * scale[1]
            block.tfc_tdf = TFCTDFStack(2 * c, c, num_blocks_per_scale, f, bottleneck_factor, norm, act)
            self.decoder_blocks.append(block)
        self.final_conv = nn.Sequential(nn.Conv2d(c + spec_channels, c, 1, bias=False), make_activation(act),
                                        nn.Conv2d(c, len(self.sources) * spec_channels, 1, bias=False))

    def network(self, spec: Tensor) -> Tensor:
        """Complex-as-channels ``(B, 2C, dim_f, N)`` -> sources ``(B, S, 2C, dim_f, N)`` (``N`` a multiple of
        ``scale[0] ** num_scales``)."""
        k = self.num_subbands
        mix = rearrange(spec, "b c (k f) n -> b (c k) f n", k=k)
        first = self.first_conv(mix)
        x = first.transpose(-1, -2)  # B ch N F
        skips = []
        for block in self.encoder_blocks:
            x = block.tfc_tdf(x)
            skips.append(x)
            x = block.downscale(x)
        x = self.bottleneck_block(x)
        for block in self.decoder_blocks:
            x = block.tfc_tdf(torch.cat([block.upscale(x), skips.pop()], dim=1))
        x = x.transpose(-1, -2) * first
        x = self.final_conv(torch.cat([mix, x], dim=1))
        return rearrange(x, "b (s c k) f n -> b s c (k f) n", s=len(self.sources), k=k)

    def forward(self, mix: Tensor) -> Tensor:
        """Separate ``mix``: ``(B, C, T)`` -> ``(B, S, C, T)``."""
        self.check_mixture(mix)
        length = mix.shape[-1]
        padded = valid_length(length, self.hop_length, self.scale[0] ** self.num_scales)
        with torch.autocast(mix.device.type, enabled=False):
            spec = to_channels(F_.pad(mix.float(), (0, padded - length)), self.n_fft, self.hop_length, self.dim_f)
        est = self.network(spec)
        with torch.autocast(mix.device.type, enabled=False):
            return from_channels(est, self.n_fft, self.hop_length, padded)[..., :length]


# ----------------------------------------------------------------------------------------------------------------
# KUIELab-MDX-Net (TFC-TDF-U-Net v2)


def _conv_bn_relu(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.ReLU())


class _TFC(nn.Module):
    """``l`` x [3x3 conv (bias) + BN + ReLU] (``H.{j}.{0,1}`` in the reference)."""

    def __init__(self, channels: int, layers: int, kernel: int):
        super().__init__()
        self.H = nn.ModuleList(
            _conv_bn_relu(nn.Conv2d(channels, channels, kernel, padding=kernel // 2), channels)
            for _ in range(layers))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.H:
            x = layer(x)
        return x


class _TFCTDFV2(nn.Module):
    """``y + tdf(y)`` with ``y = tfc(x)`` on ``(B, ch, N, F)``; ``bottleneck`` 0 = one full-size TDF linear."""

    def __init__(self, channels: int, layers: int, bins: int, kernel: int, bottleneck: int, bias: bool):
        super().__init__()
        self.tfc = _TFC(channels, layers, kernel)
        if bottleneck == 0:
            self.tdf = nn.Sequential(nn.Linear(bins, bins, bias=bias), nn.BatchNorm2d(channels), nn.ReLU())
        else:
            self.tdf = nn.Sequential(nn.Linear(bins, bins // bottleneck, bias=bias), nn.BatchNorm2d(channels),
                                     nn.ReLU(), nn.Linear(bins // bottleneck, bins, bias=bias),
                                     nn.BatchNorm2d(channels), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        y = self.tfc(x)
        return y + self.tdf(y)


class TFCTDFNetV2(nn.Module):
    """One KUIELab-MDX-Net source network: complex-as-channels ``(B, 2C, dim_f, N)`` -> the source's spectrogram in
    the same layout (``N`` a multiple of ``2 ** (num_blocks // 2)``).

    Args:
        spec_channels: ``2C`` (reference ``dim_c`` = 4).
        dim_f: bins (2048).
        num_blocks: U-Net blocks (11: 5 down, bottleneck, 5 up).
        layers: convolutions per TFC ``l`` (3).
        growth: channels of the first scale and added per scale ``g`` (32).
        kernel: TFC kernel ``k`` (3).
        bottleneck: TDF bottleneck ``bn`` (8; 0 = one full-size linear).
        bias: TDF linears with bias (False).
    """

    def __init__(self, spec_channels: int = 4, dim_f: int = 2048, num_blocks: int = 11, layers: int = 3,
                 growth: int = 32, kernel: int = 3, bottleneck: int = 8, bias: bool = False):
        super().__init__()
        depth = num_blocks // 2
        self.first_conv = _conv_bn_relu(nn.Conv2d(spec_channels, growth, 1), growth)
        c, f = growth, dim_f
        self.encoding_blocks, self.ds = nn.ModuleList(), nn.ModuleList()
        for _ in range(depth):
            self.encoding_blocks.append(_TFCTDFV2(c, layers, f, kernel, bottleneck, bias))
            self.ds.append(_conv_bn_relu(nn.Conv2d(c, c + growth, 2, stride=2), c + growth))
            c, f = c + growth, f // 2
        self.bottleneck_block = _TFCTDFV2(c, layers, f, kernel, bottleneck, bias)
        self.decoding_blocks, self.us = nn.ModuleList(), nn.ModuleList()
        for _ in range(depth):
            self.us.append(_conv_bn_relu(nn.ConvTranspose2d(c, c - growth, 2, stride=2), c - growth))
            c, f = c - growth, f * 2
            self.decoding_blocks.append(_TFCTDFV2(c, layers, f, kernel, bottleneck, bias))
        self.final_conv = nn.Sequential(nn.Conv2d(c, spec_channels, 1))

    def forward(self, spec: Tensor) -> Tensor:
        x = self.first_conv(spec).transpose(-1, -2)  # B ch N F
        skips = []
        for block, down in zip(self.encoding_blocks, self.ds):
            x = block(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck_block(x)
        for up, block in zip(self.us, self.decoding_blocks):
            x = block(up(x) * skips.pop())  # multiplicative skip
        return self.final_conv(x.transpose(-1, -2))


# reference per-source STFT sizes (configs/model/ConvTDFNet_<source>.yaml)
MDXNET_N_FFT = {"vocals": 6144, "drums": 4096, "bass": 16384, "other": 8192}


class MDXNetV2(Separator):
    """KUIELab-MDX-Net TFC-TDF-U-Net v2: one :class:`TFCTDFNetV2` per source (``targets.<name>``); mixture
    ``(B, C, T)`` -> ``(B, S, C, T)``.

    Args:
        sources, audio_channels, sample_rate: audio constants.
        n_fft: FFT size, one for every source or a mapping source -> size that names every source
            (reference: vocals 6144, drums 4096, bass 16384, other 8192).
        hop_length: hop (1024).
        dim_f: bins kept per source (2048).
        dim_t: frames per training chunk (256); ``segment_length = hop * (dim_t - 1)`` unless given.
        num_blocks, layers, growth, kernel, bottleneck, bias: see :class:`TFCTDFNetV2`.
        segment_length: samples per overlap-add chunk (``None``: ``hop * (dim_t - 1)``).
    """

    def __init__(self, sources: Sequence[str], audio_channels: int = 2, sample_rate: int = 44100,
                 n_fft: int | Mapping[str, int] = 8192, hop_length: int = 1024, dim_f: int = 2048,
                 dim_t: int = 256, num_blocks: int = 11, layers: int = 3, growth: int = 32, kernel: int = 3,
                 bottleneck: int = 8, bias: bool = False, segment_length: int | None = None):
        if dim_t < 1 or hop_length < 1:
            raise ValueError(f"dim_t and hop_length must be >= 1, got {dim_t} and {hop_length}")
        super().__init__(sources, audio_channels, sample_rate,
                         hop_length * (dim_t - 1) if segment_length is None else segment_length)
        if isinstance(n_fft, Mapping):
            missing = [s for s in self.sources if s not in n_fft]
            if missing:
                raise ValueError(f"n_fft gives no FFT size for source(s) {missing} (it names {sorted(n_fft)})")
            sizes = {s: int(n_fft[s]) for s in self.sources}
        else:
            sizes = {s: int(n_fft) for s in self.sources}
        depth = num_blocks // 2
        if num_blocks < 1 or layers < 1 or growth < 1 or kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"num_blocks, layers, growth must be >= 1 and kernel odd, got {num_blocks}, {layers}, "
                             f"{growth}, {kernel}")
        if dim_f % 2 ** depth or bottleneck < 0 or (bottleneck and dim_f // 2 ** depth < bottleneck):
            raise ValueError(f"dim_f={dim_f} must be divisible by 2 ** (num_blocks // 2) = {2 ** depth} and leave "
                             f"at least bottleneck={bottleneck} bins at the deepest scale")
        for source, size in sizes.items():
            if dim_f > size // 2 + 1:
                raise ValueError(f"dim_f={dim_f} exceeds the {size // 2 + 1} bins of n_fft={size} ({source})")
        self.n_fft, self.hop_length, self.dim_f, self.depth = sizes, int(hop_length), int(dim_f), depth
        self.targets = nn.ModuleDict({
            s: TFCTDFNetV2(2 * audio_channels, dim_f, num_blocks, layers, growth, kernel, bottleneck, bias)
            for s in self.sources})

    def forward(self, mix: Tensor) -> Tensor:
        """Separate ``mix``: ``(B, C, T)`` -> ``(B, S, C, T)``."""
        self.check_mixture(mix)
        length = mix.shape[-1]
        padded = valid_length(length, self.hop_length, 2 ** self.depth)
        specs: dict[int, Tensor] = {}
        outs = []
        for source, net in self.targets.items():
            n_fft = self.n_fft[source]
            with torch.autocast(mix.device.type, enabled=False):
                if n_fft not in specs:
                    specs[n_fft] = to_channels(F_.pad(mix.float(), (0, padded - length)), n_fft, self.hop_length,
                                               self.dim_f)
            est = net(specs[n_fft])
            with torch.autocast(mix.device.type, enabled=False):
                outs.append(from_channels(est, n_fft, self.hop_length, padded)[..., :length])
        return torch.stack(outs, dim=1)
