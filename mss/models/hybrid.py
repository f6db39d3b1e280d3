"""Building blocks shared by the hybrid (time + spectrogram) Demucs models, :class:`~mss.models.hdemucs.HDemucs`
(v3) and :class:`~mss.models.htdemucs.HTDemucs` (v4).

* :class:`HybridSettings`: the U-Nets' settings. :class:`HybridSpec`: the hybrid STFT convention (the normalised
  :func:`mss.audio.spectral.stft` with reflect padding, hop = n_fft/4, reflect pad ``3·hop/2``, Nyquist bin dropped,
  frames ``[2, 2 + ceil(L/hop))`` kept, so a signal of ``L`` samples gives exactly ``L/hop`` frames aligned with a
  time branch of total stride ``hop``), complex-as-channels (CaC) packing, masking / Wiener output, per-example
  normalisation and the shared encoder/decoder loops of the two U-Nets.
* :class:`HEncLayer` / :class:`HDecLayer`: one encoder / decoder layer of either branch (freq layers convolve only
  along frequency, with a :class:`~mss.models.blocks.DConv` residual branch over time for every frequency row).
* :class:`MultiWrap`: per-frequency-band copies of an outer layer. :class:`ScaledEmbedding`: frequency embedding.

Module and parameter names equal those of the reference package so its state dicts load unchanged.

Shape legend: ``B`` batch, ``S`` sources, ``C`` channels, ``F`` frequency bins, ``T`` frames or samples, ``L``
input samples.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mss.audio.spectral import istft, istft_pairs, pair_abs, real_valued_active, stft, stft_pairs
from mss.audio.wiener import wiener
from mss.models.base import Separator
from mss.models.blocks import DConv, rescale_module

__all__ = ["HDecLayer", "HEncLayer", "HybridSettings", "HybridSpec", "MultiWrap", "ScaledEmbedding",
           "pad1d"]


def pad1d(x: Tensor, paddings: tuple[int, int], mode: str = "constant", value: float = 0.0) -> Tensor:
    """:func:`torch.nn.functional.pad` on the last axis that also reflect-pads inputs shorter than the padding
    (zeros are inserted on the right first, as in the reference)."""
    length = x.shape[-1]
    left, right = paddings
    if mode == "reflect":
        max_pad = max(left, right)
        if length <= max_pad:
            extra = max_pad - length + 1
            extra_right = min(right, extra)
            extra_left = extra - extra_right
            left, right = left - extra_left, right - extra_right
            x = F.pad(x, (extra_left, extra_right))
    if mode == "constant":
        return F.pad(x, (left, right), value=value)
    return F.pad(x, (left, right), mode=mode)


class ScaledEmbedding(nn.Module):
    """Embedding table with a learning-rate boost: stored as ``init·w/scale`` and multiplied by ``scale`` in forward
    (Adam-like optimisers then move it ``scale`` times faster). ``smooth`` initialises it as a normalised
    cumulative sum of Gaussians (smooth across indices, e.g. frequency bins)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, scale: float = 10.0, smooth: bool = False,
                 init: float = 1.0):
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        with torch.no_grad():
            weight = self.embedding.weight
            if smooth:
                weight.copy_(weight.cumsum(0) / torch.arange(1, num_embeddings + 1).to(weight).sqrt()[:, None])
            weight.mul_(init / scale)
        self.scale = scale

    @property
    def weight(self) -> Tensor:
        return self.embedding.weight * self.scale

    def forward(self, x: Tensor) -> Tensor:
        return self.embedding(x) * self.scale


def _norm_fn(norm: bool, groups: int):
    return (lambda d: nn.GroupNorm(groups, d)) if norm else (lambda d: nn.Identity())


def _dconv_over_time(dconv: nn.Module, y: Tensor) -> Tensor:
    """Apply a DConv over time to every frequency row of ``y`` ``(B, C, F, T)``."""
    b, c, fr, t = y.shape
    y = dconv(y.permute(0, 2, 1, 3).reshape(b * fr, c, t))
    return y.view(b, fr, c, t).permute(0, 2, 1, 3)


class HEncLayer(nn.Module):
    """Encoder layer of the frequency branch (``freq=True``, ``(B, C, F, T) -> (B, C', F/stride, T)``, convolution
    along frequency only) or of the time branch (``(B, C, T) -> (B, C', T/stride)``, input right-padded to a multiple
    of ``stride``): conv → (+ injected time features) → norm → GELU → DConv → 1×1 ``rewrite`` conv → norm → GLU.

    Args:
        chin, chout: input / output channels. kernel_size, stride: of the main conv.
        norm_groups: GroupNorm groups (``norm=True``). empty: only the main conv (used before branches merge).
        freq: frequency layer. dconv: add the DConv residual branch (``dconv_kw`` are its arguments).
        context: context of the rewrite conv (kernel ``1 + 2·context``). pad: pad by ``kernel_size // 4`` so the
            output length is input length / stride. rewrite: add the 1×1 rewrite conv + GLU.
    """

    def __init__(self, chin: int, chout: int, kernel_size: int = 8, stride: int = 4, norm_groups: int = 1,
                 empty: bool = False, freq: bool = True, dconv: bool = True, norm: bool = True, context: int = 0,
                 dconv_kw: dict | None = None, pad: bool = True, rewrite: bool = True):
        super().__init__()
        norm_fn = _norm_fn(norm, norm_groups)
        pad = kernel_size // 4 if pad else 0
        self.freq = freq
        self.kernel_size = kernel_size
        self.stride = stride
        self.empty = empty
        self.norm = norm
        self.pad = pad
        if freq:
            klass, kernel_size, stride, pad = nn.Conv2d, [kernel_size, 1], [stride, 1], [pad, 0]
        else:
            klass = nn.Conv1d
        self.conv = klass(chin, chout, kernel_size, stride, pad)
        if empty:
            return
        self.norm1 = norm_fn(chout)
        self.rewrite = None
        if rewrite:
            self.rewrite = klass(chout, 2 * chout, 1 + 2 * context, 1, context)
            self.norm2 = norm_fn(2 * chout)
        self.dconv = DConv(chout, **(dconv_kw or {})) if dconv else None

    def forward(self, x: Tensor, inject: Tensor | None = None) -> Tensor:
        """``inject``: time-branch features with the same length, added after the conv (branch merge)."""
        if not self.freq:
            if x.dim() == 4:
                x = x.flatten(1, 2)
            rest = x.shape[-1] % self.stride
            if rest:
                x = F.pad(x, (0, self.stride - rest))
        y = self.conv(x)
        if self.empty:
            return y
        if inject is not None:
            if inject.shape[-1] != y.shape[-1]:
                raise ValueError(f"injected time features {tuple(inject.shape)} do not match {tuple(y.shape)}")
            if inject.dim() == 3 and y.dim() == 4:
                inject = inject[:, :, None]
            y = y + inject
        y = F.gelu(self.norm1(y))
        if self.dconv is not None:
            y = _dconv_over_time(self.dconv, y) if self.freq else self.dconv(y)
        if self.rewrite is not None:
            y = F.glu(self.norm2(self.rewrite(y)), dim=1)
        return y


class HDecLayer(nn.Module):
    """Decoder layer (mirror of :class:`HEncLayer`): ``+ skip`` → rewrite conv (kernel ``1 + 2·context``; 3×3 in
    freq layers unless ``context_freq=False``) → norm → GLU → DConv → transposed conv → norm → crop → GELU (not on the
    ``last`` layer). Returns ``(output, pre)`` where ``pre`` is the input of the transposed conv."""

    def __init__(self, chin: int, chout: int, last: bool = False, kernel_size: int = 8, stride: int = 4,
                 norm_groups: int = 1, empty: bool = False, freq: bool = True, dconv: bool = True, norm: bool = True,
                 context: int = 1, dconv_kw: dict | None = None, pad: bool = True, context_freq: bool = True,
                 rewrite: bool = True):
        super().__init__()
        norm_fn = _norm_fn(norm, norm_groups)
        self.pad = kernel_size // 4 if pad else 0
        self.last = last
        self.freq = freq
        self.chin = chin
        self.empty = empty
        self.stride = stride
        self.kernel_size = kernel_size
        self.norm = norm
        self.context_freq = context_freq
        klass, klass_tr = nn.Conv1d, nn.ConvTranspose1d
        if freq:
            kernel_size, stride = [kernel_size, 1], [stride, 1]
            klass, klass_tr = nn.Conv2d, nn.ConvTranspose2d
        self.conv_tr = klass_tr(chin, chout, kernel_size, stride)
        self.norm2 = norm_fn(chout)
        if empty:
            return
        self.rewrite = None
        if rewrite:
            if context_freq:
                self.rewrite = klass(chin, 2 * chin, 1 + 2 * context, 1, context)
            else:
                self.rewrite = klass(chin, 2 * chin, [1, 1 + 2 * context], 1, [0, context])
            self.norm1 = norm_fn(2 * chin)
        self.dconv = DConv(chin, **(dconv_kw or {})) if dconv else None

    def forward(self, x: Tensor, skip: Tensor | None, length: int | None,
                activation: bool | None = None) -> tuple[Tensor, Tensor]:
        """``length``: time-branch output length (crop). ``activation``: GELU on the output (default: not
        ``last``)."""
        if self.freq and x.dim() == 3:
            x = x.view(x.shape[0], self.chin, -1, x.shape[-1])
        if self.empty:
            if skip is not None:
                raise ValueError("an empty decoder layer takes no skip connection")
            y = x
        else:
            x = x + skip
            y = F.glu(self.norm1(self.rewrite(x)), dim=1) if self.rewrite is not None else x
            if self.dconv is not None:
                y = _dconv_over_time(self.dconv, y) if self.freq else self.dconv(y)
        # on CPU, oneDNN's NHWC transposed convolution is faster than its NCHW one (same result; 3-4 % of a forward)
        cl = self.freq and y.device.type == "cpu"
        z = self.conv_tr(y.contiguous(memory_format=torch.channels_last) if cl else y)
        z = self.norm2(z.contiguous() if cl else z)
        if self.freq:
            if self.pad:
                z = z[..., self.pad:-self.pad, :]
        else:
            z = z[..., self.pad:self.pad + length]
            if z.shape[-1] != length:
                raise ValueError(f"decoder output has {z.shape[-1]} steps, expected {length}")
        if (not self.last) if activation is None else activation:
            z = F.gelu(z)
        return z, y


class MultiWrap(nn.Module):
    """Replicates a frequency :class:`HEncLayer` / :class:`HDecLayer` (no norm, padded) into ``len(split_ratios)+1``
    independently-weighted copies, each acting on one frequency band (``split_ratios`` are the band edges as
    fractions of the bins). With equal weights it equals the wrapped layer on all frequencies."""

    def __init__(self, layer: nn.Module, split_ratios: Sequence[float]):
        super().__init__()
        if layer.norm or not layer.freq or not layer.pad:
            raise ValueError("MultiWrap needs a padded frequency layer without norm")
        self.conv = isinstance(layer, HEncLayer)
        if not self.conv and layer.context_freq:
            raise ValueError("MultiWrap decoder layers need context_freq=False")
        self.split_ratios = list(split_ratios)
        self.layers = nn.ModuleList()
        for _ in range(len(self.split_ratios) + 1):
            lay = copy.deepcopy(layer)
            if self.conv:
                lay.conv.padding = (0, 0)
            else:
                lay.pad = False
            for m in lay.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
            self.layers.append(lay)

    def forward(self, x: Tensor, skip: Tensor | None = None, length: int | None = None):
        fr = x.shape[2]
        ratios = self.split_ratios + [1]
        start, outs = 0, []
        for ratio, layer in zip(ratios, self.layers):
            if self.conv:
                pad = layer.kernel_size // 4
                if ratio == 1:
                    limit = fr
                else:
                    limit = int(round(fr * ratio))
                    le = limit - start + (pad if start == 0 else 0)
                    frames = round((le - layer.kernel_size) / layer.stride + 1)
                    limit = start + (frames - 1) * layer.stride + layer.kernel_size - (pad if start == 0 else 0)
                if not 0 < limit - start or limit > fr:
                    raise ValueError(f"MultiWrap band [{start}, {limit}) is invalid for {fr} bins")
                y = x[:, :, start:limit, :]
                if start == 0:
                    y = F.pad(y, (0, 0, pad, 0))
                if ratio == 1:
                    y = F.pad(y, (0, 0, 0, pad))
                outs.append(layer(y))
                start = limit - layer.kernel_size + layer.stride
            else:
                limit = fr if ratio == 1 else int(round(fr * ratio))
                out, _ = layer(x[:, :, start:limit], skip[:, :, start:limit], None, activation=False)
                if outs:
                    outs[-1][:, :, -layer.stride:] += out[:, :, :layer.stride] - layer.conv_tr.bias.view(1, -1, 1, 1)
                    out = out[:, :, layer.stride:]
                if ratio == 1:
                    out = out[:, :, :-layer.stride // 2, :]
                if start == 0:
                    out = out[:, :, layer.stride // 2:, :]
                outs.append(out)
                start = limit
        out = torch.cat(outs, dim=2)
        if self.conv:
            return out
        if not self.layers[-1].last:
            out = F.gelu(out)
        return out, None


@dataclass(frozen=True)
class HybridSettings:
    """Settings of the two U-Nets of a hybrid Demucs (reference names; see ``docs/hybrid_demucs.md``), read by
    :class:`HybridSpec`. The last four exist only in :class:`~mss.models.hdemucs.HDemucs`; HTDemucs keeps their
    defaults (always hybrid, no DConv LSTM/attention)."""

    channels: int
    channels_time: int | None
    growth: float
    nfft: int
    wiener_iters: int
    end_iters: int
    wiener_residual: bool
    cac: bool
    depth: int
    rewrite: bool
    multi_freqs: Sequence[float] | None
    multi_freqs_depth: int
    freq_emb: float
    emb_scale: float
    emb_smooth: bool
    kernel_size: int
    time_stride: int
    stride: int
    context: int
    context_enc: int
    norm_starts: int
    norm_groups: int
    dconv_mode: int
    dconv_depth: int
    dconv_comp: float
    dconv_init: float
    rescale: float
    hybrid: bool = True
    hybrid_old: bool = False
    dconv_lstm: int | None = None
    dconv_attn: int | None = None

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> HybridSettings:
        """The settings among a model constructor's arguments (``locals()``); other names are ignored."""
        return cls(**{f.name: arguments[f.name] for f in fields(cls) if f.name in arguments})


class HybridSpec(Separator):
    """Shared machinery of the hybrid Demucs models (HDemucs, HTDemucs): layer construction from a
    :class:`HybridSettings`, STFT/CaC conventions, output masking and the encoder/decoder loops.

    Args:
        sources, audio_channels: the separator contract. samplerate: Hz (the reference's name).
        segment: training segment in seconds (``segment_length = round(segment * samplerate)`` samples).
        settings: the U-Nets' settings; the weights are rescaled (``settings.rescale``) once the U-Nets exist.
    """

    def __init__(self, sources: Sequence[str], audio_channels: int, samplerate: int, segment: float,
                 settings: HybridSettings):
        super().__init__(sources, audio_channels, samplerate, int(round(float(segment) * samplerate)))
        name = type(self).__name__
        if settings.hybrid_old and not settings.hybrid:
            raise ValueError(f"{name}: hybrid_old=True needs hybrid=True")
        if settings.hybrid and settings.wiener_iters != settings.end_iters:
            raise ValueError(f"{name} needs wiener_iters == end_iters, got {settings.wiener_iters} and "
                             f"{settings.end_iters}")
        if settings.nfft % 4:
            raise ValueError(f"{name}: nfft must be a multiple of 4, got {settings.nfft}")
        self.segment, self.settings = segment, settings
        self.hybrid, self.hybrid_old = settings.hybrid, settings.hybrid_old
        self.wiener_iters, self.end_iters = settings.wiener_iters, settings.end_iters
        self.wiener_residual = settings.wiener_residual
        self._build_unets(settings)
        if settings.rescale:
            rescale_module(self, reference=settings.rescale)

    def _build_unets(self, s: HybridSettings) -> None:
        """Create ``encoder``/``decoder`` (frequency branch), ``tencoder``/``tdecoder`` (time branch, when
        ``hybrid``) and ``freq_emb``, with the reference's channel/kernel/stride schedule."""
        channels, growth, nfft, cac, depth = s.channels, s.growth, s.nfft, s.cac, s.depth
        kernel_size, stride, context, multi_freqs = s.kernel_size, s.stride, s.context, s.multi_freqs
        self.cac = cac
        self.kernel_size = kernel_size
        self.context = context
        self.stride = stride
        self.depth = depth
        self.channels = channels
        self.nfft = nfft
        self.hop_length = nfft // 4
        self.freq_emb = None
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        if self.hybrid:
            self.tencoder = nn.ModuleList()
            self.tdecoder = nn.ModuleList()

        chin = self.audio_channels
        chin_z = chin * 2 if cac else chin
        chout = s.channels_time or channels
        chout_z = channels
        freqs = nfft // 2
        for index in range(depth):
            freq = freqs > 1
            ker, stri = kernel_size, stride
            if not freq:
                ker, stri = s.time_stride * 2, s.time_stride
            pad, last_freq = True, False
            if freq and freqs <= kernel_size:
                ker, pad, last_freq = freqs, False, True
            dconv_kw = {"depth": s.dconv_depth, "compress": s.dconv_comp, "init": s.dconv_init, "gelu": True}
            if s.dconv_lstm is not None:
                dconv_kw["lstm"] = index >= s.dconv_lstm
            if s.dconv_attn is not None:
                dconv_kw["attn"] = index >= s.dconv_attn
            kw = {"kernel_size": ker, "stride": stri, "freq": freq, "pad": pad, "norm": index >= s.norm_starts,
                  "rewrite": s.rewrite, "norm_groups": s.norm_groups, "dconv_kw": dconv_kw}
            kwt = {**kw, "freq": False, "kernel_size": kernel_size, "stride": stride, "pad": True}
            kw_dec = dict(kw)
            multi = bool(multi_freqs) and index < s.multi_freqs_depth
            if multi:
                kw_dec["context_freq"] = False
            if last_freq:
                chout_z = max(chout, chout_z)
                chout = chout_z

            enc = HEncLayer(chin_z, chout_z, dconv=bool(s.dconv_mode & 1), context=s.context_enc, **kw)
            if self.hybrid and freq:
                self.tencoder.append(HEncLayer(chin, chout, dconv=bool(s.dconv_mode & 1), context=s.context_enc,
                                               empty=last_freq, **kwt))
            self.encoder.append(MultiWrap(enc, multi_freqs) if multi else enc)
            if index == 0:
                chin = self.audio_channels * len(self.sources)
                chin_z = chin * 2 if cac else chin
            dec = HDecLayer(chout_z, chin_z, dconv=bool(s.dconv_mode & 2), last=index == 0, context=context, **kw_dec)
            if self.hybrid and freq:
                self.tdecoder.insert(0, HDecLayer(chout, chin, dconv=bool(s.dconv_mode & 2), empty=last_freq,
                                                  last=index == 0, context=context, **kwt))
            self.decoder.insert(0, MultiWrap(dec, multi_freqs) if multi else dec)

            chin, chin_z = chout, chout_z
            chout, chout_z = int(growth * chout), int(growth * chout_z)
            if freq:
                freqs = 1 if freqs <= kernel_size else freqs // stride
            if index == 0 and s.freq_emb:
                self.freq_emb = ScaledEmbedding(freqs, chin_z, smooth=s.emb_smooth, scale=s.emb_scale)
                self.freq_emb_scale = s.freq_emb

    # ---- spectrogram conventions -------------------------------------------------------------------------------
    def _spec(self, x: Tensor) -> Tensor:
        """``(B, C, L)`` → complex ``(B, C, nfft/2, ceil(L/hop))`` (hybrid) spectrogram."""
        hl = self.hop_length
        if self.hybrid:
            le = math.ceil(x.shape[-1] / hl)
            pad = hl // 2 * 3
            x = pad1d(x, (pad, pad + le * hl - x.shape[-1]), mode="constant" if self.hybrid_old else "reflect")
        if real_valued_active():  # ONNX export: real pairs (..., nfft/2, frames, 2)
            z = stft_pairs(x, self.nfft, hl, pad_mode="reflect", normalized=True)[..., :-1, :, :]
            return z[..., 2:2 + le, :] if self.hybrid else z
        z = stft(x, self.nfft, hl, pad_mode="reflect", normalized=True)[..., :-1, :]
        if self.hybrid:
            z = z[..., 2:2 + le]
        return z

    def _ispec(self, z: Tensor, length: int) -> Tensor:
        """Inverse of :meth:`_spec`: complex ``(..., nfft/2, frames)`` → ``(..., length)``."""
        hl = self.hop_length
        pairs = real_valued_active()  # ONNX export: z is real pairs (..., nfft/2, frames, 2)
        inverse = istft_pairs if pairs else istft
        if not self.hybrid:
            return inverse(F.pad(z, (0, 0) * pairs + (0, 0, 0, 1)), self.nfft, hl, length, normalized=True)
        z = F.pad(z, (0, 0) * pairs + (2, 2, 0, 1))
        pad = hl // 2 * 3
        if self.hybrid_old:
            return inverse(z, self.nfft, hl, hl * math.ceil(length / hl), normalized=True)[..., :length]
        x = inverse(z, self.nfft, hl, hl * math.ceil(length / hl) + 2 * pad, normalized=True)
        return x[..., pad:pad + length]

    def _magnitude(self, z: Tensor) -> Tensor:
        """Network input: CaC ``(B, 2C, F, T)`` (real/imag as channels) or magnitudes ``(B, C, F, T)``."""
        pairs = real_valued_active()  # ONNX export: z is real pairs (B, C, F, T, 2)
        if self.cac:
            b, c, fr, t = z.shape[:4]
            return (z if pairs else torch.view_as_real(z)).permute(0, 1, 4, 2, 3).reshape(b, c * 2, fr, t)
        return pair_abs(z) if pairs else z.abs()

    def _mask(self, z: Tensor, m: Tensor) -> Tensor:
        """Complex source spectrograms ``(B, S, C, F, T)`` from the network output ``m`` ``(B, S, C', F, T)``:
        CaC unpacking, or magnitude masks with the mixture phase (``wiener_iters < 0``) / Wiener filtering."""
        pairs = real_valued_active()  # ONNX export: z and the result are real pairs (..., 2)
        if self.cac:
            b, s, _, fr, t = m.shape
            m = m.view(b, s, -1, 2, fr, t).permute(0, 1, 2, 4, 5, 3)
            return m if pairs else torch.view_as_complex(m.contiguous())
        niters = self.end_iters if self.training else self.wiener_iters
        if niters < 0:
            z = z[:, None]
            if pairs:
                return z / (1e-8 + pair_abs(z)).unsqueeze(-1) * m.unsqueeze(-1)
            return z / (1e-8 + z.abs()) * m
        if pairs:
            raise ValueError(f"{type(self).__name__}: the Wiener filter (cac=false, wiener_iters >= 0) has no "
                             "real-valued path; export with cac=true or wiener_iters=-1")
        out = wiener(m, z, niters, softmask=False, residual=self.wiener_residual, window_frames=300)
        return out[:, :-1] if self.wiener_residual else out

    @staticmethod
    def _normalize(x: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
        std, mean = torch.std_mean(x, dim=dims, keepdim=True)
        return (x - mean) / (1e-5 + std), mean, std

    # ---- U-Net loops -------------------------------------------------------------------------------------------
    def _encode(self, x: Tensor, xt: Tensor | None):
        """Run both encoders; returns ``x, xt`` at the bottom and the skips/lengths for :meth:`_decode`."""
        saved, saved_t, lengths, lengths_t = [], [], [], []
        n_time = len(self.tencoder) if self.hybrid else 0
        for idx, encode in enumerate(self.encoder):
            lengths.append(x.shape[-1])
            inject = None
            if idx < n_time:
                lengths_t.append(xt.shape[-1])
                tenc = self.tencoder[idx]
                xt = tenc(xt)
                if tenc.empty:
                    inject = xt  # same stride as the freq branch now: merge
                else:
                    saved_t.append(xt)
            x = encode(x, inject)
            if idx == 0 and self.freq_emb is not None:
                emb = self.freq_emb(torch.arange(x.shape[-2], device=x.device)).t()
                x = x + self.freq_emb_scale * emb[None, :, :, None].to(x.dtype)
            saved.append(x)
        return x, xt, (saved, saved_t, lengths, lengths_t)

    def _decode(self, x: Tensor, xt: Tensor | None, state) -> tuple[Tensor, Tensor | None]:
        saved, saved_t, lengths, lengths_t = state
        offset = self.depth - len(self.tdecoder) if self.hybrid else self.depth
        for idx, decode in enumerate(self.decoder):
            x, pre = decode(x, saved.pop(-1), lengths.pop(-1))
            if idx >= offset:
                tdec = self.tdecoder[idx - offset]
                length_t = lengths_t.pop(-1)
                if tdec.empty:
                    xt, _ = tdec(pre[:, :, 0], None, length_t)
                else:
                    xt, _ = tdec(xt, saved_t.pop(-1), length_t)
        return x, xt

    def _hybrid_forward(self, mix: Tensor, bottom) -> Tensor:
        """``mix (B, C, L) -> (B, S, C, L)``; ``bottom(x, xt) -> (x, xt)`` transforms the U-Net bottleneck."""
        self.check_mixture(mix)
        length = mix.shape[-1]
        z = self._spec(mix)
        x, mean, std = self._normalize(self._magnitude(z), (1, 2, 3))
        b, _, fq, t = x.shape
        xt = meant = stdt = None
        if self.hybrid:
            xt, meant, stdt = self._normalize(mix, (1, 2))
        x, xt, state = self._encode(x, xt)
        x, xt = bottom(x, xt)
        x, xt = self._decode(x, xt, state)
        n_src = len(self.sources)
        x = x.view(b, n_src, -1, fq, t) * std[:, None] + mean[:, None]
        out = self._ispec(self._mask(z, x), length)
        if self.hybrid:
            out = out + (xt.view(b, n_src, -1, length) * stdt[:, None] + meant[:, None])
        return out
