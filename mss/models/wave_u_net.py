"""Wave-U-Net (Stoller, Ewert & Dixon, ISMIR 2018, "Wave-U-Net: A Multi-Scale Neural Network for End-to-End Audio
Source Separation"): a 1-D U-Net on the raw waveform with **valid** (unpadded) convolutions, so that every output
sample sees real input context and the network predicts only the centre of its input window.

One configurable :class:`WaveUNet` expresses both published versions:

* ``model=wave_u_net``: the paper's multi-instrument model M6 (= SiSEC 2018 submission STL2; original TensorFlow code
  f90/Wave-U-Net 75eeae69, ``Config.py`` ``full_multi_instrument``, ``Models/UnetAudioSeparator.py``,
  ``Models/OutputLayer.py``): ``block="single"``. Level ``i`` of 12: Conv1d(k=15, ``24 (i+1)`` filters) ->
  LeakyReLU(0.2), kept as the skip, then **decimation** by dropping every other sample; a bottleneck Conv1d(k=15,
  312); per up level: **linear interpolation** from ``n`` to ``2n - 1`` samples (no parameters), crop-and-concat
  ``[skip, upsampled]``, Conv1d(k=5) -> LeakyReLU(0.2); then the (cropped) input mixture is concatenated
  (``mix_skip``) and a Conv1d(k=1) per source gives bass, drums and other through ``tanh``, while vocals = cropped
  mixture - their sum ("difference" output, clipped to [-1, 1] at test time only). The network runs at 22.05 kHz:
  147,443 input samples -> 16,389 output samples (16,384 requested). 10,263,498 parameters.
* ``model=wave_u_net_pytorch``: the defaults of f90/Wave-U-Net-Pytorch 86c113da (``model/waveunet.py``,
  ``model/conv.py``, ``model/resample.py``, ``train.py``), a different and larger model: ``block="double"``, one
  network per source (``per_source``), widths 32 doubling over 6 levels (5 down / up blocks), kernel 5, stride 4,
  each conv followed by GroupNorm(C/8 groups) -> ReLU. Down block: conv -> skip -> conv to the next width -> fixed
  **sinc low-pass resampling** by 4 (depthwise, kernel 15, reflect padding; frozen ``nn.Parameter`` filters);
  bottleneck conv 1024 -> 1024; up block: sinc up-sampling by 4 (transposed, cropped to ``4 (n - 1) + 1``) -> conv
  -> crop-and-concat ``[skip, features]`` -> conv; output Conv1d(32 -> 2, k=1), linear, clamped to [-1, 1] only in
  eval mode. 44.1 kHz, 97,961 input -> 88,409 output samples (2 s requested). 70,148,232 parameters for 4 sources,
  of which 69,910,152 trainable (17,477,538 per source; the rest are the frozen filters).

The mss contract is ``forward(mix (B, C, T)) -> (B, S, C, T)`` at ``sample_rate`` for any ``T``. The forward pass:

1. resample the mixture to ``model_rate`` with :func:`mss.audio.io.resample` (julius' band-limited sinc; the
   reference resamples with librosa when it loads the audio) to ``T' = ceil(T * model_rate / sample_rate)``;
2. tile as the references' prediction loops do: zero-pad the end to a whole number of output windows, zero-pad
   ``(input - output) / 2`` samples of context on both sides, cut the windows (hop = output window) into the batch;
3. run the net on every window (in groups of ``window_batch`` when gradients are off, to bound memory);
4. concatenate the windows' outputs, crop to ``T'``, resample back to ``sample_rate`` and length ``T``.

Quirks followed: valid convolutions everywhere (the window sizes come from the smallest bottleneck length whose
output covers ``output_size``, as both references' ``get_padding`` / ``check_padding``); crops put the extra sample
at the end (TF ``Utils.crop``); the TF decimation is plain subsampling (aliasing) and its up-sampling is linear
interpolation with aligned corners; the difference source is computed from the **resampled** mixture, so at
44.1 kHz the stems sum to the mixture low-passed at ``model_rate / 2`` (the reference's outputs are 22.05 kHz
signals too); WUP's sinc filter is a windowed sinc whose window term ``0.08 cos(4 pi M)`` (not ``4 pi i / M``) is
the constant 0.08, i.e. a Hann window, normalised to unit sum; the sinc resamplers require ``n % stride == 1``,
which the window sizes guarantee. Differences: the references' last window is shifted back (TF) or zero-padded
(WUP); here it is zero-padded. With ``depth > 1`` WUP's up blocks re-concatenate the skip before every merge conv
(and then fail, their channel counts do not fit); here only the first merge conv sees the skip. Training in mss
feeds excerpts whose context outside the excerpt is zeros, where the references train on windows with real context.

Parameter names: ``nets.<net>.down.<i>.{skip_convs,convs}.<j>.{conv,norm}.*`` and ``down.<i>.resample.filter``,
``nets.<net>.bottleneck.<j>.*``, ``nets.<net>.up.<i>.{resample.filter,convs.<j>,merge_convs.<j>}``,
``nets.<net>.output.*``; ``<net>`` is the source name with ``per_source``, else ``all``. The output conv of a joint
net is source-major (channel ``C * k + c`` for the ``k``-th directly estimated source).
:func:`mss.pretrained.import_waveunet.convert_state_dict` renames WUP's ``waveunets.<instrument>.…`` keys.

Shape legend: ``B`` batch, ``S`` sources, ``C`` audio channels, ``T`` samples at ``sample_rate``, ``T'`` samples at
``model_rate``, ``N`` windows, ``I`` / ``O`` window input / output samples, ``F`` feature channels, ``L`` samples at
a level of the net.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F_
from einops import rearrange
from torch import Tensor, nn

from mss.audio.io import resample
from mss.models.base import Separator

__all__ = ["WaveUNet", "WaveUNetNet", "ConvLayer", "SincResample", "sinc_filter", "widths_of"]

BLOCKS = ("single", "double")
RESAMPLINGS = ("naive", "sinc")
NORMS = (None, "group")
ACTIVATIONS = ("leaky_relu", "relu")
OUTPUTS = ("difference", "direct")
OUTPUT_ACTIVATIONS = ("tanh", "linear")
GROWTHS = ("add", "double")


def widths_of(features: int, levels: int, growth: str) -> list[int]:
    """Feature widths ``w_0 .. w_levels`` of the levels: ``features * (i + 1)`` ("add") or ``features * 2**i``."""
    return [features * (i + 1) if growth == "add" else features * 2 ** i for i in range(levels + 1)]


def sinc_filter(kernel_size: int, cutoff: float) -> Tensor:
    """WUP's low-pass filter ``(kernel_size,)``: a sinc of cutoff ``cutoff`` (cycles per sample) times the window
    ``0.42 - 0.5 cos(2 pi i / M) + 0.08 cos(4 pi M)`` (the reference's term; = a Hann window), normalised to sum 1."""
    m = kernel_size - 1
    i = torch.arange(kernel_size, dtype=torch.float64)
    t = i - m // 2
    safe = torch.where(t == 0, torch.ones_like(t), t)
    window = 0.42 - 0.5 * torch.cos(2 * math.pi * i / m) + 0.08 * math.cos(4 * math.pi * m)
    h = torch.sin(2 * math.pi * cutoff * t) / safe * window
    h = torch.where(t == 0, torch.full_like(t, 2 * math.pi * cutoff), h)
    h = h.float()
    return h / h.sum()


class ConvLayer(nn.Module):
    """Valid Conv1d -> [GroupNorm(F / norm_channels groups)] -> ReLU or LeakyReLU:
    ``(N, F_in, L) -> (N, F, L - k + 1)``."""

    def __init__(self, channels_in: int, channels_out: int, kernel_size: int, norm: str | None, norm_channels: int,
                 activation: str, negative_slope: float):
        super().__init__()
        self.conv = nn.Conv1d(channels_in, channels_out, kernel_size)
        self.norm = nn.GroupNorm(channels_out // norm_channels, channels_out) if norm == "group" else None
        self.activation, self.negative_slope = activation, negative_slope

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return F_.relu(x) if self.activation == "relu" else F_.leaky_relu(x, self.negative_slope)


class SincResample(nn.Module):
    """WUP's fixed resampler: reflect padding, then a depthwise sinc low-pass (cutoff ``0.5 / stride``) with stride
    (down: ``(N, F, L) -> (N, F, (L - 1) / stride + 1)``, needs ``L % stride == 1``) or transposed (up:
    ``(N, F, L) -> (N, F, (L - 1) stride + 1)``, centre-cropped). The filter is a frozen ``nn.Parameter``."""

    def __init__(self, channels: int, stride: int, kernel_size: int = 15, up: bool = False):
        super().__init__()
        self.stride, self.kernel_size, self.up, self.channels = stride, kernel_size, up, channels
        taps = sinc_filter(kernel_size, 0.5 / stride)
        self.filter = nn.Parameter(taps.expand(channels, 1, kernel_size).clone(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        length, pad = x.shape[-1], (self.kernel_size - 1) // 2
        x = F_.pad(x, (pad, pad), mode="reflect")
        if not self.up:
            return F_.conv1d(x, self.filter, stride=self.stride, groups=self.channels)
        x = F_.conv_transpose1d(x, self.filter, stride=self.stride, groups=self.channels)
        extra = x.shape[-1] - ((length - 1) * self.stride + 1)
        return x[..., extra // 2: x.shape[-1] - extra // 2]


def crop_to(x: Tensor, length: int) -> Tensor:
    """Centre crop of the last axis to ``length`` (an odd excess: one more sample off the end, as TF's crop)."""
    start = (x.shape[-1] - length) // 2
    return x[..., start:start + length]


class DownBlock(nn.Module):
    """``skip_convs`` (to the skip width; kept as the skip), ``convs`` (to the next width; "double" blocks only),
    then down-sampling by ``stride``: ``(N, F_in, L) -> (N, F_out, L'), (N, F_skip, L_skip)``."""

    def __init__(self, channels_in: int, skip: int, out: int | None, depth: int, kernel: int, stride: int,
                 resampling: str, resampling_kernel: int, conv):
        super().__init__()
        self.skip_convs = nn.ModuleList([conv(channels_in if j == 0 else skip, skip, kernel) for j in range(depth)])
        self.convs = nn.ModuleList([] if out is None else [conv(skip if j == 0 else out, out, kernel)
                                                           for j in range(depth)])
        self.stride = stride
        self.resample = SincResample(out or skip, stride, resampling_kernel) if resampling == "sinc" else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        for layer in self.skip_convs:
            x = layer(x)
        skip = x
        for layer in self.convs:
            x = layer(x)
        x = x[..., ::self.stride] if self.resample is None else self.resample(x)
        return x, skip


class UpBlock(nn.Module):
    """Up-sampling by ``stride`` (linear interpolation to ``(L - 1) stride + 1`` or the sinc resampler), ``convs``
    ("double" blocks only), crop-and-concat ``[skip, x]``, ``merge_convs``: ``(N, F_in, L), skip -> (N, F_out, L')``."""

    def __init__(self, channels_in: int, skip: int, out: int, double: bool, depth: int, kernel: int, stride: int,
                 resampling: str, resampling_kernel: int, conv):
        super().__init__()
        self.stride = stride
        self.resample = SincResample(channels_in, stride, resampling_kernel, up=True) if resampling == "sinc" else None
        self.convs = nn.ModuleList([conv(channels_in if j == 0 else out, out, kernel) for j in range(depth)]
                                   if double else [])
        merged = skip + (out if double else channels_in)
        self.merge_convs = nn.ModuleList([conv(merged if j == 0 else out, out, kernel) for j in range(depth)])

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        if self.resample is None:
            x = F_.interpolate(x, size=(x.shape[-1] - 1) * self.stride + 1, mode="linear", align_corners=True)
        else:
            x = self.resample(x)
        for layer in self.convs:
            x = layer(x)
        x = torch.cat([crop_to(skip, x.shape[-1]), x], dim=1)
        for layer in self.merge_convs:
            x = layer(x)
        return x


class WaveUNetNet(nn.Module):
    """One Wave-U-Net, valid convolutions: ``(N, C_in, I) -> (N, C_out, O)`` (output conv, no output activation).

    ``widths`` ``w_0 .. w_levels``; "single" blocks: level ``i`` convolves to ``w_i`` and the bottleneck to
    ``w_levels``; "double" blocks: level ``i`` convolves to ``w_i`` (the skip) and then to ``w_{i+1}``, the bottleneck
    keeps ``w_levels``. Up level ``i`` (from the bottom) outputs ``w_{levels - 1 - i}``."""

    def __init__(self, channels_in: int, channels_out: int, widths: Sequence[int], *, block: str, depth: int,
                 kernel_size: int, up_kernel_size: int, stride: int, resampling: str, resampling_kernel: int,
                 norm: str | None, norm_channels: int, activation: str, negative_slope: float, mix_skip: bool):
        super().__init__()

        def conv(cin: int, cout: int, k: int) -> ConvLayer:
            return ConvLayer(cin, cout, k, norm, norm_channels, activation, negative_slope)

        levels, double = len(widths) - 1, block == "double"
        self.kernel_size, self.up_kernel_size, self.stride = kernel_size, up_kernel_size, stride
        self.resampling_pad = (resampling_kernel - 1) // 2 if resampling == "sinc" else 0
        self.mix_skip = mix_skip
        self.down = nn.ModuleList()
        for i in range(levels):
            cin = channels_in if i == 0 else widths[i] if double else widths[i - 1]
            self.down.append(DownBlock(cin, widths[i], widths[i + 1] if double else None, depth, kernel_size, stride,
                                       resampling, resampling_kernel, conv))
        bottom_in = widths[levels] if double else widths[levels - 1]
        self.bottleneck = nn.ModuleList([conv(bottom_in if j == 0 else widths[levels], widths[levels], kernel_size)
                                         for j in range(depth)])
        self.up = nn.ModuleList([
            UpBlock(widths[levels - i], widths[levels - 1 - i], widths[levels - 1 - i], double, depth,
                    up_kernel_size, stride, resampling, resampling_kernel, conv) for i in range(levels)])
        self.output = nn.Conv1d(widths[0] + (channels_in if mix_skip else 0), channels_out, 1)

    def output_length(self, bottom: int) -> int | None:
        """Output samples for a bottleneck output of ``bottom`` samples, or ``None`` if a level would be empty (or
        too short for the sinc resampler's reflect padding)."""
        n = bottom
        for block in self.up:
            if n <= self.resampling_pad:
                return None
            n = (n - 1) * self.stride + 1 - (len(block.convs) + len(block.merge_convs)) * (self.up_kernel_size - 1)
            if n < 1:
                return None
        return n

    def input_length(self, bottom: int) -> int | None:
        """Input samples that give a bottleneck output of ``bottom`` samples (``None``: too short to resample)."""
        n = bottom + len(self.bottleneck) * (self.kernel_size - 1)
        for block in reversed(self.down):
            n = (n - 1) * self.stride + 1
            if n <= self.resampling_pad:
                return None
            n += (len(block.skip_convs) + len(block.convs)) * (self.kernel_size - 1)
        return n

    def window(self, target: int) -> tuple[int, int]:
        """``(input, output)`` samples of the smallest window whose output covers ``target`` samples (the smallest
        bottleneck length >= 2 that fits, as the references' padding search)."""
        bottom = 2
        while True:
            out, inp = self.output_length(bottom), self.input_length(bottom)
            if out is not None and inp is not None and out >= target:
                return inp, out
            bottom += 1

    def forward(self, x: Tensor) -> Tensor:
        mix, skips = x, []
        for block in self.down:
            x, skip = block(x)
            skips.append(skip)
        for layer in self.bottleneck:
            x = layer(x)
        for block, skip in zip(self.up, reversed(skips)):
            x = block(x, skip)
        if self.mix_skip:
            x = torch.cat([crop_to(mix, x.shape[-1]), x], dim=1)
        return self.output(x)


class WaveUNet(Separator):
    """Wave-U-Net separator (see the module docstring): ``forward(mix (B, C, T)) -> (B, S, C, T)``, any ``T >= 1``.

    Args:
        sources, audio_channels, sample_rate: the separator contract (``sample_rate``: the rate of the mixture).
        model_rate: rate the network runs at (TF M6: 22050; WUP: 44100); resampled inside ``forward``.
        levels: down-/up-sampling blocks (TF ``num_layers`` 12; WUP ``--levels`` counts widths: 6 there = 5 here).
        features, growth: widths ``features * (i + 1)`` ("add", TF) or ``features * 2**i`` ("double", WUP).
        block: "single" (TF: one conv per level, the skip is the conv's output) or "double" (WUP: conv -> skip ->
            conv to the next width; an extra conv before the merge on the way up).
        depth: convolutions per conv stage (1 in both references).
        kernel_size: down-path and bottleneck kernel (TF 15, WUP 5); up_kernel_size: up-path kernel (TF 5, WUP 5).
        stride: resampling factor per level (TF 2, WUP 4).
        resampling: "naive" (decimation / linear interpolation, TF) or "sinc" (WUP's fixed sinc filters).
        resampling_kernel: sinc filter taps (WUP 15, odd).
        norm: None or "group" (GroupNorm with ``norm_channels`` channels per group, WUP "gn").
        activation, negative_slope: "leaky_relu" (TF slope 0.2; WUP "normal" 0.01) or "relu" (WUP "gn").
        mix_skip: concatenate the cropped mixture before the output conv (TF).
        output: "difference" (``difference_source`` = cropped mixture - the sum of the others, joint net only) or
            "direct" (every source from the output conv).
        difference_source: the source computed by difference (None: the last one).
        output_activation: "tanh" or "linear" (clamped to [-1, 1] in eval mode only).
        per_source: one network per source (WUP ``separate=1``) instead of one joint network.
        output_size: requested output samples per window at ``model_rate`` (TF 16384; WUP 2 s = 88200).
        segment: seconds per overlap-add chunk at inference (:attr:`segment_length`).
        window_batch: windows per network call when gradients are off (bounds inference memory).
    """

    def __init__(self, sources: Sequence[str], audio_channels: int = 2, sample_rate: int = 44100,
                 model_rate: int = 22050, levels: int = 12, features: int = 24, growth: str = "add",
                 block: str = "single", depth: int = 1, kernel_size: int = 15, up_kernel_size: int = 5,
                 stride: int = 2, resampling: str = "naive", resampling_kernel: int = 15, norm: str | None = None,
                 norm_channels: int = 8, activation: str = "leaky_relu", negative_slope: float = 0.2,
                 mix_skip: bool = True, output: str = "difference", difference_source: str | None = "vocals",
                 output_activation: str = "tanh", per_source: bool = False, output_size: int = 16384,
                 segment: float = 10.0, window_batch: int = 16):
        super().__init__(sources, audio_channels, sample_rate, max(1, round(segment * sample_rate)))
        choices = dict(block=(block, BLOCKS), resampling=(resampling, RESAMPLINGS), norm=(norm, NORMS),
                       activation=(activation, ACTIVATIONS), output=(output, OUTPUTS),
                       output_activation=(output_activation, OUTPUT_ACTIVATIONS), growth=(growth, GROWTHS))
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"WaveUNet: {key}={value!r} is not supported; expected one of {list(allowed)}")
        positive = dict(model_rate=model_rate, levels=levels, features=features, depth=depth,
                        output_size=output_size, window_batch=window_batch, norm_channels=norm_channels)
        for key, value in positive.items():
            if int(value) < 1:
                raise ValueError(f"WaveUNet: {key} must be a positive integer, got {value}")
        for key, value in dict(kernel_size=kernel_size, up_kernel_size=up_kernel_size,
                               resampling_kernel=resampling_kernel).items():
            if int(value) < 1 or int(value) % 2 == 0:
                raise ValueError(f"WaveUNet: {key} must be odd and positive (valid convolutions, centred "
                                 f"outputs), got {value}")
        if int(stride) < 2:
            raise ValueError(f"WaveUNet: stride must be >= 2 (the resampling factor per level), got {stride}")
        if resampling == "sinc" and int(resampling_kernel) < 3:
            raise ValueError(f"WaveUNet: resampling_kernel must be >= 3 for sinc resampling, got {resampling_kernel}")
        widths = widths_of(int(features), int(levels), growth)
        if norm == "group" and any(w % int(norm_channels) for w in widths):
            raise ValueError(f"WaveUNet: with norm='group' every width must be a multiple of norm_channels="
                             f"{norm_channels}; features={features}, growth={growth!r} give widths {widths}")
        if output == "difference":
            if per_source:
                raise ValueError("WaveUNet: output='difference' needs one joint network (per_source=false): the "
                                 "difference source is the mixture minus the other sources' estimates")
            if len(self.sources) < 2:
                raise ValueError(f"WaveUNet: output='difference' needs at least two sources, got {self.sources}")
            difference_source = self.sources[-1] if difference_source is None else difference_source
            if difference_source not in self.sources:
                raise ValueError(f"WaveUNet: difference_source={difference_source!r} is not one of the sources "
                                 f"{self.sources}; set model.difference_source (null: the last source)")
        self.model_rate, self.output_activation = int(model_rate), output_activation
        self.per_source, self.window_batch = bool(per_source), int(window_batch)
        self.difference = self.sources.index(difference_source) if output == "difference" else None
        direct = len(self.sources) - (self.difference is not None)
        c = self.audio_channels
        options = dict(block=block, depth=int(depth), kernel_size=int(kernel_size), up_kernel_size=int(up_kernel_size),
                       stride=int(stride), resampling=resampling, resampling_kernel=int(resampling_kernel), norm=norm,
                       norm_channels=int(norm_channels), activation=activation, negative_slope=float(negative_slope),
                       mix_skip=bool(mix_skip))
        names = self.sources if self.per_source else ["all"]
        self.nets = nn.ModuleDict({name: WaveUNetNet(c, c if self.per_source else c * direct, widths, **options)
                                   for name in names})
        self.input_frames, self.output_frames = next(iter(self.nets.values())).window(int(output_size))

    def _activate(self, y: Tensor) -> Tensor:
        if self.output_activation == "tanh":
            return torch.tanh(y)
        return y if self.training else y.clamp(-1.0, 1.0)

    def separate_windows(self, windows: Tensor) -> Tensor:
        """The network on exact windows: ``(N, C, I) -> (N, S, C, O)`` at ``model_rate``."""
        c = self.audio_channels
        if self.per_source:
            return torch.stack([self._activate(net(windows)) for net in self.nets.values()], dim=1)
        est = self._activate(rearrange(self.nets["all"](windows), "n (k c) o -> n k c o", c=c))
        if self.difference is None:
            return est
        rest = crop_to(windows, est.shape[-1]) - est.sum(dim=1)
        rest = rest if self.training else rest.clamp(-1.0, 1.0)
        return torch.cat([est[:, :self.difference], rest[:, None], est[:, self.difference:]], dim=1)

    def forward(self, mix: Tensor) -> Tensor:
        self.check_mixture(mix)
        batch, _, length = mix.shape
        if length < 1:
            raise ValueError(f"WaveUNet: expected at least one sample, got a mixture of shape {tuple(mix.shape)}")
        inner = math.ceil(length * self.model_rate / self.sample_rate)
        x = resample(mix, self.sample_rate, self.model_rate, output_length=inner)  # (B, C, T')
        n = math.ceil(inner / self.output_frames)
        context = (self.input_frames - self.output_frames) // 2
        back = n * self.output_frames - inner + self.input_frames - self.output_frames - context
        windows = F_.pad(x, (context, back)).unfold(-1, self.input_frames, self.output_frames)  # (B, C, N, I)
        windows = rearrange(windows, "b c n i -> (b n) c i")
        if torch.is_grad_enabled() or windows.shape[0] <= self.window_batch:
            est = self.separate_windows(windows)
        else:
            est = torch.cat([self.separate_windows(w) for w in windows.split(self.window_batch)])
        est = rearrange(est, "(b n) s c o -> b s c (n o)", b=batch)[..., :inner]  # (B, S, C, T')
        return resample(est, self.model_rate, self.sample_rate, output_length=length)
