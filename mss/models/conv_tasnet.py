"""Conv-TasNet for music, as Demucs v2 trained and released it (Défossez et al. 2019/2021, "Music Source Separation
in the Waveform Domain", after Luo & Mesgarani 2019). Reference: facebookresearch/demucs, branch ``v2``, commit
64ed2cb0, ``demucs/tasnet.py`` (itself adapted from kaituoxu/Conv-TasNet, extended to stereo).

Pipeline of :class:`ConvTasNet` (``M`` batch, ``Nf`` encoder filters ``N``, ``K`` frames):

1. **encoder**: ``Conv1d(C -> N, kernel L, stride L // 2, no bias)`` then ReLU: ``(M, C, T) -> (M, N, K)`` with
   ``K = (T - L) // (L // 2) + 1`` (the tail after the last full frame is dropped);
2. **separator** (temporal convolutional network): cLN(N) -> ``Conv1d(N -> B, 1)`` -> ``R`` repeats of ``X``
   :class:`TemporalBlock` s with dilations ``1, 2, ..., 2^(X-1)`` -> ``Conv1d(B -> S * N, 1)`` -> mask
   non-linearity (ReLU; softmax across sources as an option) -> mask ``(M, S, N, K)``. A temporal block is
   ``Conv1d(B -> H, 1)`` -> PReLU (one slope) -> norm(H) -> depthwise ``Conv1d(H, H, P, dilation d)`` -> PReLU ->
   norm(H) -> ``Conv1d(H -> B, 1)``, plus the residual. **No skip-connection branch** (the original Conv-TasNet and
   asteroid sum skip outputs; Demucs' copy feeds the last block's output to the mask convolution). No convolution
   has a bias;
3. **decoder**: mask x encoder features, per frame ``Linear(N -> C * L, no bias)`` -> ``(M, S, K, C, L)``,
   overlap-add with hop ``L // 2`` -> ``(M, S, C, (K - 1) * (L // 2) + L)``, **zero-padded at the end** to the input
   length ``T``.

Norms (``norm_type``): ``gLN`` (default: mean and biased variance over channels *and* time of the whole input,
``gamma * (y - mean) / sqrt(var + 1e-8) + beta``), ``cLN`` (over channels per frame, same eps; always the separator's
first norm), ``BN`` (``BatchNorm1d``) or ``id``. ``causal=True`` pads the depthwise convolutions by ``(P - 1) d`` and
chomps the right end, as the reference.

Quirks followed: **initialisation** ``xavier_normal_`` on every parameter with more than one dimension *after* the
modules are built, which also hits the cLN/gLN ``gamma`` and ``beta`` (shape ``(1, ch, 1)``: fan-in ``ch``, fan-out
1), so they do not start at 1 / 0 (PReLU slopes keep 0.25). Built with the same seed, this class draws exactly the
reference's initial weights. The output is not length-preserving by construction: samples after the last full
encoder frame are zeros. gLN's statistics span the whole input, so chunked inference depends on the chunk length
(Demucs evaluated with ``--split_valid``, chunks of ``segment_length``).

Normalisation (``normalize``, off by default, as Demucs v2 never trains with it): Demucs v2's ``test.py`` and
``separate.py`` standardise the **whole track** by the mean and (unbiased) standard deviation of its mono downmix
before chunked separation and undo it on every estimate (``est * std + mean``). Here it is an option of ``forward``,
i.e. it applies to each call — the whole input during training and to each overlap-add chunk of
:func:`mss.inference.overlap_add.apply_model` (mss has no track-level hook). The network itself is positively
homogeneous up to the norms' eps (no biases, ReLU encoder, scale-invariant cLN/gLN), so per chunk or per track
differ essentially in the DC offset that is removed and added back. A silent input (std 0) is left unscaled where
the reference would divide by zero.

Deviation: inputs shorter than ``L`` (where the reference's encoder fails) are zero-padded to ``L``; the output is
cut back to the input length.

Parameter names mirror the reference (released state dicts load 1:1): ``encoder.conv1d_U.weight``,
``separator.network.0.{gamma,beta}`` (cLN), ``separator.network.1.weight``,
``separator.network.2.<r>.<x>.net.{0,1,2}.*`` (1x1 conv, PReLU, norm) and ``...net.3.net.{0,1,2,3}.*`` (depthwise,
PReLU, norm, pointwise; with ``causal`` a parameter-free chomp sits at index 1), ``separator.network.3.weight``,
``decoder.basis_signals.weight``. Constructor keywords are the reference's too (``samplerate``,
``segment_length`` in samples), so ``{klass, args, kwargs, state}`` packages import directly
(:mod:`mss.pretrained.import_demucs`).

Sizes (4 stereo sources, N 256, L 20, B 256, H 512, P 3, R 4): 10,977,872 parameters with X=10 (the released
``tasnet`` / ``tasnet_extra`` and the paper command), 8,852,032 with X=8 (the reference's CLI default).

Shape legend: ``B`` batch (``M`` in the reference), ``S`` sources, ``C`` audio channels, ``T`` samples, ``N``
encoder filters, ``K`` frames, ``L`` filter length.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mss.models.base import Separator

__all__ = ["ConvTasNet", "GlobalLayerNorm", "ChannelwiseLayerNorm", "TemporalBlock", "overlap_add"]

EPS = 1e-8
NORMS = ("gLN", "cLN", "BN", "id")
MASKS = ("relu", "softmax")


class GlobalLayerNorm(nn.Module):
    """gLN: ``(B, ch, K)`` normalised by the mean / biased variance over ``(ch, K)`` per example; ``gamma``, ``beta``
    of shape ``(1, ch, 1)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, channels, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, y: Tensor) -> Tensor:
        mean = y.mean(dim=(1, 2), keepdim=True)
        var = (y - mean).square().mean(dim=(1, 2), keepdim=True)
        return self.gamma * (y - mean) / (var + EPS).sqrt() + self.beta


class ChannelwiseLayerNorm(GlobalLayerNorm):
    """cLN: ``(B, ch, K)`` normalised over the channels of each frame (same parameters and eps as gLN)."""

    def forward(self, y: Tensor) -> Tensor:
        mean = y.mean(dim=1, keepdim=True)
        var = y.var(dim=1, keepdim=True, unbiased=False)
        return self.gamma * (y - mean) / (var + EPS).sqrt() + self.beta


def make_norm(norm_type: str, channels: int) -> nn.Module:
    """The norm of a temporal block: gLN, cLN, BatchNorm1d (``BN``) or identity (``id``)."""
    if norm_type == "gLN":
        return GlobalLayerNorm(channels)
    if norm_type == "cLN":
        return ChannelwiseLayerNorm(channels)
    if norm_type == "BN":
        return nn.BatchNorm1d(channels)
    return nn.Identity()


class Chomp(nn.Module):
    """Drop the last ``size`` frames (causal padding), ``(B, ch, K + size) -> (B, ch, K)``."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        return x[..., :x.shape[-1] - self.size]


class DepthwiseSeparableConv(nn.Module):
    """Depthwise dilated conv -> PReLU -> norm -> pointwise conv: ``(B, H, K) -> (B, B_, K)`` (``net`` indices as
    the reference: chomp at 1 when causal)."""

    def __init__(self, hidden: int, out: int, kernel: int, dilation: int, norm_type: str, causal: bool):
        super().__init__()
        pad = (kernel - 1) * dilation if causal else (kernel - 1) * dilation // 2
        layers: list[nn.Module] = [nn.Conv1d(hidden, hidden, kernel, padding=pad, dilation=dilation, groups=hidden,
                                             bias=False)]
        if causal:
            layers.append(Chomp(pad))
        layers += [nn.PReLU(), make_norm(norm_type, hidden), nn.Conv1d(hidden, out, 1, bias=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TemporalBlock(nn.Module):
    """1x1 conv ``B -> H`` -> PReLU -> norm -> :class:`DepthwiseSeparableConv` ``H -> B``, plus the input:
    ``(B, B_, K) -> (B, B_, K)``."""

    def __init__(self, bottleneck: int, hidden: int, kernel: int, dilation: int, norm_type: str, causal: bool):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(bottleneck, hidden, 1, bias=False), nn.PReLU(),
                                 make_norm(norm_type, hidden),
                                 DepthwiseSeparableConv(hidden, bottleneck, kernel, dilation, norm_type, causal))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class TemporalConvNet(nn.Module):
    """Mask estimator: encoder features ``(B, N, K)`` -> masks ``(B, S, N, K)``."""

    def __init__(self, N: int, B: int, H: int, P: int, X: int, R: int, n_sources: int, norm_type: str,
                 causal: bool, mask_nonlinear: str):
        super().__init__()
        self.n_sources, self.mask_nonlinear = n_sources, mask_nonlinear
        # built in the reference's order (the default inits draw from the RNG before the xavier pass)
        norm, bottleneck = ChannelwiseLayerNorm(N), nn.Conv1d(N, B, 1, bias=False)
        repeats = nn.Sequential(*(nn.Sequential(*(TemporalBlock(B, H, P, 2 ** x, norm_type, causal)
                                                  for x in range(X))) for _ in range(R)))
        self.network = nn.Sequential(norm, bottleneck, repeats, nn.Conv1d(B, n_sources * N, 1, bias=False))

    def forward(self, w: Tensor) -> Tensor:
        score = rearrange(self.network(w), "b (s n) k -> b s n k", s=self.n_sources)
        return F.relu(score) if self.mask_nonlinear == "relu" else score.softmax(dim=1)


class Encoder(nn.Module):
    """``(B, C, T) -> (B, N, K)``: strided conv (hop ``L // 2``, no bias) and ReLU."""

    def __init__(self, L: int, N: int, audio_channels: int):
        super().__init__()
        self.conv1d_U = nn.Conv1d(audio_channels, N, L, stride=L // 2, bias=False)

    def forward(self, mix: Tensor) -> Tensor:
        return F.relu(self.conv1d_U(mix))


def overlap_add(frames: Tensor, hop: int) -> Tensor:
    """Overlap-add ``(..., K, L)`` frames at hop ``hop`` -> ``(..., (K - 1) * hop + L)``."""
    *lead, count, length = frames.shape
    cols = frames.reshape(-1, count, length).transpose(1, 2)  # (n, L, K): fold's (N, C * kh * kw, blocks)
    out = F.fold(cols, output_size=(1, (count - 1) * hop + length), kernel_size=(1, length), stride=(1, hop))
    return out.reshape(*lead, -1)


class Decoder(nn.Module):
    """Masked features -> waveforms: ``(B, N, K)``, ``(B, S, N, K)`` -> ``(B, S, C, (K - 1) * (L // 2) + L)``."""

    def __init__(self, N: int, L: int, audio_channels: int):
        super().__init__()
        self.L, self.audio_channels = L, audio_channels
        self.basis_signals = nn.Linear(N, audio_channels * L, bias=False)

    def forward(self, w: Tensor, mask: Tensor) -> Tensor:
        frames = self.basis_signals(rearrange(w.unsqueeze(1) * mask, "b s n k -> b s k n"))
        frames = rearrange(frames, "b s k (c l) -> b s c k l", c=self.audio_channels)
        return overlap_add(frames, self.L // 2)


class ConvTasNet(Separator):
    """Demucs v2's Conv-TasNet: mixture ``(B, C, T)`` -> stems ``(B, S, C, T)`` (see the module docstring).

    Args (the reference's keywords):
        sources: output stems (released models: drums, bass, other, vocals).
        N: encoder filters. L: filter length in samples (hop ``L // 2``). B: bottleneck channels. H: channels of the
            temporal blocks. P: depthwise kernel (odd unless causal). X: blocks per repeat. R: repeats.
        audio_channels: ``C`` (2: stereo).
        norm_type: ``gLN`` | ``cLN`` | ``BN`` | ``id``.
        causal: causal depthwise convolutions.
        mask_nonlinear: ``relu`` (reference default) or ``softmax`` (across sources).
        samplerate: sample rate in Hz (``sample_rate`` attribute).
        segment_length: samples per overlap-add chunk at inference (reference default 8 s; Demucs sets
            ``4 * samples`` when training, 320,000 for the paper's ``--samples=80000``).
        normalize: mono-downmix mean/std standardisation around the network, per ``forward`` call (Demucs v2 does it
            per track at test/separation time only; off by default).
    """

    def __init__(self, sources: Sequence[str], N: int = 256, L: int = 20, B: int = 256, H: int = 512, P: int = 3,
                 X: int = 8, R: int = 4, audio_channels: int = 2, norm_type: str = "gLN", causal: bool = False,
                 mask_nonlinear: str = "relu", samplerate: int = 44100, segment_length: int = 44100 * 2 * 4,
                 normalize: bool = False):
        super().__init__(sources, audio_channels, samplerate, segment_length)
        sizes = dict(N=N, B=B, H=H, P=P, X=X, R=R)
        bad = {k: v for k, v in sizes.items() if int(v) < 1}
        if bad:
            raise ValueError(f"ConvTasNet: {', '.join(f'{k}={v}' for k, v in bad.items())}: N, B, H, P, X and R must "
                             "be positive integers")
        if int(L) < 2:
            raise ValueError(f"ConvTasNet: L={L}: the filter length must be >= 2 (the encoder hop is L // 2)")
        if norm_type not in NORMS:
            raise ValueError(f"ConvTasNet: norm_type={norm_type!r}; expected one of {list(NORMS)}")
        if mask_nonlinear not in MASKS:
            raise ValueError(f"ConvTasNet: mask_nonlinear={mask_nonlinear!r}; expected one of {list(MASKS)}")
        if not causal and int(P) % 2 == 0:
            raise ValueError(f"ConvTasNet: P={P}: the depthwise kernel must be odd when causal=False (an even kernel "
                             "shortens the sequence and the residual no longer fits)")
        self.N, self.L, self.B, self.H, self.P, self.X, self.R = (int(v) for v in (N, L, B, H, P, X, R))
        self.norm_type, self.causal, self.mask_nonlinear = norm_type, bool(causal), mask_nonlinear
        self.normalize = bool(normalize)
        self.samplerate = self.sample_rate
        self.encoder = Encoder(self.L, self.N, self.audio_channels)
        self.separator = TemporalConvNet(self.N, self.B, self.H, self.P, self.X, self.R, len(self.sources),
                                         norm_type, self.causal, mask_nonlinear)
        self.decoder = Decoder(self.N, self.L, self.audio_channels)
        for p in self.parameters():  # the reference quirk: norms' gamma/beta (1, ch, 1) are hit too
            if p.dim() > 1:
                nn.init.xavier_normal_(p)

    def valid_length(self, length: int) -> int:
        """Any length is valid (the reference's answer; the tail after the last full frame comes out as zeros)."""
        return length

    def forward(self, mix: Tensor) -> Tensor:
        """Separate ``mix``: ``(B, C, T)`` -> ``(B, S, C, T)``."""
        self.check_mixture(mix)
        length = mix.shape[-1]
        x = mix
        if self.normalize:
            mono = mix.mean(dim=1, keepdim=True)
            mean, std = mono.mean(dim=-1, keepdim=True), mono.std(dim=-1, keepdim=True)
            std = torch.where(std > 0, std, torch.ones_like(std))
            x = (x - mean) / std
        if length < self.L:
            x = F.pad(x, (0, self.L - length))
        w = self.encoder(x)
        out = self.decoder(w, self.separator(w))
        out = F.pad(out, (0, length - out.shape[-1])) if out.shape[-1] <= length else out[..., :length]
        if self.normalize:
            out = out * std.unsqueeze(1) + mean.unsqueeze(1)
        return out
