"""Waveform Demucs: the 2019 paper / released v2 model (:class:`DemucsV2`; the paper's model is its 48-channel
configuration) and the time-only v3 rewrite (:class:`Demucs`).

Both are convolutional U-Nets on the raw waveform with stride-4 convolutions and channel growth 2, GLU "rewrite"
1x1 convolutions, U-Net skips added (not concatenated) to the decoder input and the weight-rescaling trick
(reference scale a=0.1). Optional stages around the network: per-example normalisation by the mono mixture's
mean/std (undone on the output), x2 upsampling of the input and /2 downsampling of the output (``julius``).
``forward`` pads the input symmetrically to :meth:`valid_length` and centre-trims the output, so any input
length gives an output of the same length.

Constructor keywords, attribute meanings and ``state_dict`` keys follow the reference implementations
(``demucs/model.py`` of the v2 release for :class:`DemucsV2`; ``demucs.demucs.Demucs`` for :class:`Demucs`),
so reference checkpoints' kwargs and weights map directly (see ``docs/demucs.md``).

Shape legend: ``B`` batch, ``S`` sources, ``C`` audio channels, ``T`` samples, ``Ch`` feature channels,
``T'`` time steps of a layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import julius
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mss.models.base import Separator
from mss.models.blocks import BLSTM, DConv, center_trim, rescale_module

__all__ = ["Demucs", "DemucsV2"]


class _WaveUNet(Separator):
    """Shared forward of the waveform Demucs models; subclasses build ``encoder``, ``decoder`` (``nn.ModuleList`` of
    ``nn.Sequential``, decoder outermost last), ``lstm`` (or ``None``) and set the geometry attributes."""

    normalize: bool
    resample: bool
    encoder: nn.ModuleList
    decoder: nn.ModuleList
    lstm: nn.Module | None
    kernel_size: int
    stride: int
    depth: int
    _context_loss: int  # time steps lost per decoder layer by unpadded context convolutions

    def _finish(self, channels: int, lstm_layers: int, rescale: float) -> None:
        """After the encoder/decoder: the bottleneck BiLSTM (``lstm_layers`` > 0) and the reference's weight
        rescaling of every layer built so far (``rescale`` > 0)."""
        self.lstm = BLSTM(channels, lstm_layers) if lstm_layers else None
        if rescale:
            rescale_module(self, reference=rescale)

    def valid_length(self, length: int) -> int:
        """Smallest input length ``>= length`` for which every strided convolution consumes its whole input and the
        output covers ``length`` samples (``forward`` pads to it and centre-trims). For the unpadded decoder
        ``context`` convolutions of :class:`DemucsV2` ``context - 1`` steps per layer are added on the way
        down (the v2 rule)."""
        if self.resample:
            length *= 2
        for _ in range(self.depth):
            length = max(1, math.ceil((length - self.kernel_size) / self.stride) + 1) + self._context_loss
        for _ in range(self.depth):
            length = (length - 1) * self.stride + self.kernel_size
        if self.resample:
            length = math.ceil(length / 2)
        return int(length)

    def forward(self, mix: Tensor) -> Tensor:
        """``(B, C, T)`` mixture -> ``(B, S, C, T)`` source estimates."""
        self.check_mixture(mix)
        length = mix.shape[-1]
        x = mix
        if self.normalize:
            mono = mix.mean(dim=1, keepdim=True)
            mean = mono.mean(dim=-1, keepdim=True)
            std = mono.std(dim=-1, keepdim=True)
            x = (x - mean) / (1e-5 + std)
        delta = self.valid_length(length) - length
        x = F.pad(x, (delta // 2, delta - delta // 2))
        if self.resample:
            x = julius.resample_frac(x, 1, 2)
        saved = []
        for encode in self.encoder:
            x = encode(x)
            saved.append(x)
        if self.lstm is not None:
            x = self.lstm(x)
        for decode in self.decoder:
            x = decode(x + center_trim(saved.pop(), x))
        if self.resample:
            x = julius.resample_frac(x, 2, 1)
        if self.normalize:
            x = x * std + mean
        x = center_trim(x, length)
        return rearrange(x, "b (s c) t -> b s c t", s=len(self.sources))


class DemucsV2(_WaveUNet):
    """Demucs of the 2019 paper as released (v1 / v2 ``demucs/model.py``).

    Encoder layer ``i`` (``depth`` layers, ``Ch_i = channels * growth^i``): ``Conv1d(K=kernel_size, S=stride)`` ->
    ReLU -> ``Conv1d(Ch_i, 2 Ch_i, 1)`` -> GLU. Bottleneck: ``lstm_layers``-layer BiLSTM with ``Ch_L`` hidden units
    per direction and a linear map back to ``Ch_L``. Decoder layer ``i`` (reverse order): ``x + skip_i`` ->
    unpadded ``Conv1d(Ch_i, 2 Ch_i, context)`` -> GLU -> ``ConvTranspose1d(Ch_i, Ch_{i-1}, K, S)`` -> ReLU (no ReLU on
    the outermost layer, which emits ``S * C`` channels). With ``glu=False`` the rewrite convs keep ``Ch_i`` channels
    and use ReLU; ``rewrite=False`` drops them.

    ``forward``: ``(B, C, T) -> (B, S, C, T)``; the input is zero-padded to :meth:`valid_length` and the output
    centre-trimmed (the reference did both in its ``apply_model``).

    ``state_dict`` keys (as in released v2 ``.th`` files): ``encoder.<i>.{0,2}.{weight,bias}``,
    ``decoder.<j>.{0,2}.{weight,bias}`` (``decoder.0`` is the innermost layer), ``lstm.lstm.*``, ``lstm.linear.*``.

    Args:
        sources: source names (``S = len(sources)``).
        audio_channels: ``C`` (1 mono, 2 stereo).
        channels: ``Ch_1`` (48 in the paper, 64 in the v2 release, 100 in v1's default).
        depth: encoder / decoder layers ``L``.
        rewrite: add the 1x1 (encoder) and ``context`` (decoder) convolutions.
        glu: GLU after the rewrite convolutions (else ReLU).
        rescale: reference scale ``a`` of the weight-rescaling trick (0 disables it).
        resample: upsample the input x2 and downsample the output /2.
        kernel_size, stride: of the strided (transposed) convolutions.
        growth: channel growth factor per layer.
        lstm_layers: bottleneck BiLSTM layers (0: none).
        context: kernel size of the (unpadded) decoder rewrite convolution.
        normalize: normalise each example by its mono mixture's mean/std (v2 default: off).
        samplerate: sample rate in Hz (metadata; ``sample_rate`` attribute).
        segment_length: overlap-add chunk length in samples used by ``mss.inference.overlap_add.apply_model``.
    """

    def __init__(self, sources: Sequence[str], audio_channels: int = 2, channels: int = 64, depth: int = 6,
                 rewrite: bool = True, glu: bool = True, rescale: float = 0.1, resample: bool = True,
                 kernel_size: int = 8, stride: int = 4, growth: float = 2.0, lstm_layers: int = 2, context: int = 3,
                 normalize: bool = False, samplerate: int = 44100, segment_length: int = 4 * 10 * 44100):
        super().__init__(sources, audio_channels, samplerate, segment_length)
        self.kernel_size, self.stride, self.context, self.depth = kernel_size, stride, context, depth
        self.resample, self.normalize, self.channels = resample, normalize, channels
        self._context_loss = context - 1  # as the reference, also with rewrite=False
        ch_scale = 2 if glu else 1

        def activation() -> nn.Module:
            return nn.GLU(dim=1) if glu else nn.ReLU()

        self.encoder, self.decoder = nn.ModuleList(), nn.ModuleList()
        in_channels = audio_channels
        for index in range(depth):
            encode: list[nn.Module] = [nn.Conv1d(in_channels, channels, kernel_size, stride), nn.ReLU()]
            if rewrite:
                encode += [nn.Conv1d(channels, ch_scale * channels, 1), activation()]
            self.encoder.append(nn.Sequential(*encode))
            out_channels = in_channels if index > 0 else len(self.sources) * audio_channels
            decode: list[nn.Module] = []
            if rewrite:
                decode += [nn.Conv1d(channels, ch_scale * channels, context), activation()]
            decode.append(nn.ConvTranspose1d(channels, out_channels, kernel_size, stride))
            if index > 0:
                decode.append(nn.ReLU())
            self.decoder.insert(0, nn.Sequential(*decode))
            in_channels = channels
            channels = int(growth * channels)
        self._finish(in_channels, lstm_layers, rescale)


class Demucs(_WaveUNet):
    """Time-only Demucs v3 (``demucs.demucs.Demucs``): the waveform U-Net with residual DConv branches.

    Encoder layer ``i``: ``Conv1d(K, S)`` (unpadded) -> GroupNorm(``norm_groups``) if ``i >= norm_starts`` -> GELU ->
    :class:`~mss.models.blocks.DConv` (with ``dconv_mode & 1``; BiLSTM from layer ``dconv_lstm``, LocalState from
    layer ``dconv_attn``) -> ``Conv1d(Ch, 2 Ch, 1)`` -> norm -> GLU. Decoder layer ``i``: ``x + skip`` ->
    ``Conv1d(Ch, 2 Ch, 2 context + 1, padding=context)`` -> norm -> GLU -> DConv (with ``dconv_mode & 2``) ->
    ``ConvTranspose1d(K, S)`` -> norm -> GELU (neither on the outermost layer). Optional bottleneck BiLSTM
    (``lstm_layers``; 0 by default, the DConv LSTMs replace it).

    ``forward``: ``(B, C, T) -> (B, S, C, T)``; normalisation (mono mean/std), symmetric padding to
    :meth:`valid_length`, x2 resampling, centre trim, exactly as the reference.

    Keyword names are the reference's (``samplerate``, ``segment`` in seconds), so a reference checkpoint's kwargs
    build this class unchanged; ``state_dict`` keys equal the reference's (``encoder.<i>.<k>.*``, ``decoder.<j>.<k>.*``
    with the reference's ``nn.Sequential`` indices, ``decoder.0`` innermost). Attributes ``sample_rate`` and
    ``segment_length`` (``segment * samplerate`` samples) follow the mss model contract.

    Args:
        sources: source names. audio_channels: ``C``. channels: ``Ch_1``. growth: channel growth per layer.
        depth: layers. rewrite: 1x1 / context rewrite convolutions. lstm_layers: bottleneck BiLSTM layers.
        kernel_size, stride: strided convolutions. context: half-width of the decoder rewrite convolution.
        gelu: GELU (else ReLU) after the strided convolutions. glu: GLU (else ReLU) after the rewrites.
        norm_starts: first layer index with GroupNorm. norm_groups: its groups.
        dconv_mode: 1 encoder, 2 decoder, 3 both (0 none). dconv_depth, dconv_comp, dconv_init: DConv depth,
        compression and LayerScale init. dconv_attn, dconv_lstm: first layer index with LocalState / BiLSTM.
        normalize: per-example normalisation. resample: x2 / 2 resampling. rescale: weight-rescaling reference.
        samplerate: Hz. segment: overlap-add chunk duration in seconds.
    """

    def __init__(self, sources: Sequence[str], audio_channels: int = 2, channels: int = 64, growth: float = 2.0,
                 depth: int = 6, rewrite: bool = True, lstm_layers: int = 0, kernel_size: int = 8, stride: int = 4,
                 context: int = 1, gelu: bool = True, glu: bool = True, norm_starts: int = 4, norm_groups: int = 4,
                 dconv_mode: int = 1, dconv_depth: int = 2, dconv_comp: float = 4, dconv_attn: int = 4,
                 dconv_lstm: int = 4, dconv_init: float = 1e-4, normalize: bool = True, resample: bool = True,
                 rescale: float = 0.1, samplerate: int = 44100, segment: float = 4 * 10):
        super().__init__(sources, audio_channels, samplerate, round(float(segment) * samplerate))
        self.segment = segment
        self.kernel_size, self.stride, self.context, self.depth = kernel_size, stride, context, depth
        self.resample, self.normalize, self.channels = resample, normalize, channels
        self._context_loss = 0  # the decoder rewrite convolutions are padded
        ch_scale = 2 if glu else 1
        act2 = nn.GELU if gelu else nn.ReLU

        def activation() -> nn.Module:
            return nn.GLU(dim=1) if glu else nn.ReLU()

        self.encoder, self.decoder = nn.ModuleList(), nn.ModuleList()
        in_channels = audio_channels
        for index in range(depth):
            def norm(dim: int, on: bool = index >= norm_starts) -> nn.Module:
                return nn.GroupNorm(norm_groups, dim) if on else nn.Identity()

            def dconv(dim: int, index: int = index) -> DConv:
                return DConv(dim, depth=dconv_depth, init=dconv_init, compress=dconv_comp,
                             attn=index >= dconv_attn, lstm=index >= dconv_lstm)

            encode: list[nn.Module] = [nn.Conv1d(in_channels, channels, kernel_size, stride), norm(channels), act2()]
            if dconv_mode & 1:
                encode.append(dconv(channels))
            if rewrite:
                encode += [nn.Conv1d(channels, ch_scale * channels, 1), norm(ch_scale * channels), activation()]
            self.encoder.append(nn.Sequential(*encode))

            out_channels = in_channels if index > 0 else len(self.sources) * audio_channels
            decode: list[nn.Module] = []
            if rewrite:
                decode += [nn.Conv1d(channels, ch_scale * channels, 2 * context + 1, padding=context),
                           norm(ch_scale * channels), activation()]
            if dconv_mode & 2:
                decode.append(dconv(channels))
            decode.append(nn.ConvTranspose1d(channels, out_channels, kernel_size, stride))
            if index > 0:
                decode += [norm(out_channels), act2()]
            self.decoder.insert(0, nn.Sequential(*decode))
            in_channels = channels
            channels = int(growth * channels)
        self._finish(in_channels, lstm_layers, rescale)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Like ``nn.Module.load_state_dict``; also accepts the reference's previous-generation layout, whose
        rewrite / transposed convolution sat at ``nn.Sequential`` index 2 instead of 3 (renamed on the fly)."""
        state = dict(state_dict)
        for idx in range(self.depth):
            for part in ("encoder", "decoder"):
                for name in ("weight", "bias"):
                    old, new = f"{part}.{idx}.2.{name}", f"{part}.{idx}.3.{name}"
                    if old in state and new not in state:
                        state[new] = state.pop(old)
        return super().load_state_dict(state, strict=strict, assign=assign)
