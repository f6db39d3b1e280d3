"""BandIt (Watcharasupat et al., "A Generalized Bandsplit Neural Network for Cinematic Audio Source Separation",
IEEE OJSP 2024): a band-split RNN with **one shared encoder and one mask decoder per stem** over overlapping
"musical" bands.

Structure of ZFTurbo's Music-Source-Separation-Training copies (MSST commit ccc011ab; ``model_type: bandit`` =
``models/bandit`` ``MultiMaskMultiSourceBandSplitRNNSimple``, ``model_type: bandit_v2`` = ``models/bandit_v2``
``Bandit``; both are the same network, only parameter names, the band-split feature order and the STFT padding of the
configs differ). For every audio channel independently (channels are folded into the batch, the net is mono):

1. STFT ``n_fft`` 2048 / hop 512, periodic Hann, ``center=True``, padding ``pad_mode`` (``"constant"`` in MSST's
   ``bandit`` configs, ``"reflect"`` in its ``bandit_v2`` config), scaled by ``1 / sqrt(sum(window ** 2))``
   (torchaudio's ``normalized=True``; the iSTFT multiplies by it again): ``(B*C, F, N)`` complex;
2. band split over ``K`` overlapping bands of the musical filterbank (:func:`musical_bands`): each band's bins,
   flattened as ``(re/im, bin)`` with bins fastest (``2 w`` features), go through LayerNorm(2 w) -> Linear(2 w -> D):
   ``(B*C, K, N, D)``;
3. ``2 * n_sqm_modules`` residual RNNs, alternately across frames (per band) and across bands (per frame), each
   LayerNorm(D) -> bidirectional GRU (``rnn_dim`` per direction; LSTM / RNN selectable) -> Linear -> add;
4. per stem and band, LayerNorm(D) -> Linear(D -> ``mlp_dim``) -> Tanh -> Linear(-> 4 w) -> GLU over the last axis,
   unflattened as ``(bin, re/im)`` (re/im fastest) into a complex mask of the band; each band mask is multiplied by the
   band's frequency weights (``1 / number of bands covering the bin``) and the bands are **summed** into the
   full-band mask, which multiplies the mixture STFT; iSTFT (input length).

Quirks of the reference followed here: the overlap-add of the band masks with per-bin weights (so a bin's mask is
the average of the masks of the bands that cover it); the torchaudio window normalisation of the STFT; the musical
band edges with ``floor`` / ``ceil`` and the first / last band stretched to DC / Nyquist (64 bands at 2048: band 0 =
bins ``[0, 3)``, band 1 = ``[1, 3)``, ..., band 63 = ``[918, 1025)``); the different feature orders of the band-split
input ``(re/im, bin)`` and of the mask output ``(bin, re/im)``; ``n_sqm_modules`` counts time + band *pairs*. (MSST's
v1 wrapper ignores the STFT options of its YAML and always uses 2048 / 512, constant padding, normalized: the importer
maps v1 checkpoints onto exactly that.) The window normalisation hardly matters: the band LayerNorms cancel the STFT
scale up to their eps, and the mask multiplies the (scaled) mixture STFT that the iSTFT unscales.
Deviation: for inputs of at most ``n_fft / 2`` samples, where reflect padding (and so the reference) fails, the STFT
pads with zeros.

Parameter names: ``band_split.<k>.{norm,fc}``, ``rnns.<i>.{norm,rnn,fc}`` (even ``i`` across frames, odd across
bands), ``decoders.<s>.<k>.{norm,hidden,out}`` (``s`` = source index). The frequency weights are computed, not stored.
:func:`mss.pretrained.msst_bandit.convert_state_dict` maps both MSST layouts.

Sizes (emb 128, rnn 256 GRU, 8 pairs, mlp 512, 64 musical bands, 2048 / 44.1 kHz): 28,383,848 parameters for two
stems (MSST vocals / other config), 37,022,688 for three (DnR speech / music / effects; band split 565,112 +
RNNs 10,541,056 + 8,638,840 per decoder).

Shape legend: ``B`` batch, ``S`` sources, ``C`` channels, ``T`` samples, ``F`` bins, ``N`` frames, ``K`` bands,
``D`` embedding dim, ``w`` bins of a band.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mss.audio.spectral import hann_window, istft, istft_pairs, pair_mul, real_valued_active, stft, stft_pairs
from mss.models.base import Separator
from mss.models.blocks import run_rnn

__all__ = ["BandIt", "musical_bands", "RNN_TYPES"]

_SCALES: dict[tuple[int, str], float] = {}  # BandIt._scale per (n_fft, device)

RNN_TYPES = {"GRU": nn.GRU, "LSTM": nn.LSTM, "RNN": nn.RNN}
PAD_MODES = ("constant", "reflect")


def musical_bands(n_bands: int, n_fft: int, sample_rate: float) -> tuple[list[tuple[int, int]], list[Tensor]]:
    """BandIt's musical filterbank: ``[start, end)`` bins of each band and its frequency weights.

    Centres equally spaced in MIDI pitch from one bin (``sample_rate / n_fft``) to Nyquist; band ``i`` covers
    ``floor(centre / m / df)`` ... ``ceil(centre * m / df)`` inclusive with ``m = 2 ** (octaves / n_bands)``; the first
    band also takes the bins below it, the last those above it. The weight of a bin is ``1 / (bands covering it)``.
    The layout depends on ``n_bands`` and ``n_fft`` only (the sample rate cancels up to rounding).
    """
    n_bands, n_fft = int(n_bands), int(n_fft)
    if n_bands < 2:
        raise ValueError(f"n_bands must be >= 2 for the musical filterbank, got {n_bands}")
    n_bins = n_fft // 2 + 1
    df = sample_rate / n_fft
    f_min, f_max = df, sample_rate / 2
    mult = np.power(2.0, np.log2(f_max / f_min) / n_bands)

    def to_midi(f):
        return 12 * (np.log2(np.asanyarray(f)) - np.log2(440.0)) + 69

    centres = 440.0 * (2.0 ** ((np.linspace(max(0, to_midi(f_min)), to_midi(f_max), n_bands) - 69.0) / 12.0))
    low = np.floor(centres / mult / df).astype(int)
    high = np.ceil(centres * mult / df).astype(int)
    cover = np.zeros((n_bands, n_bins), dtype=bool)
    for i in range(n_bands):
        cover[i, max(low[i], 0):high[i] + 1] = True
    cover[0, :max(low[0], 0)] = True
    cover[-1, high[-1] + 1:] = True
    count = cover.sum(0)
    if (count == 0).any():
        raise ValueError(f"musical filterbank with n_bands={n_bands} at n_fft={n_fft} leaves bins "
                         f"{np.flatnonzero(count == 0).tolist()[:8]} uncovered")
    bands, weights = [], []
    for row in cover:
        active = np.flatnonzero(row)
        if active.size == 0:  # the reference drops empty bands
            continue
        start, end = int(active[0]), int(active[-1]) + 1
        bands.append((start, end))
        weights.append(torch.as_tensor(1.0 / count[start:end], dtype=torch.float32))
    return bands, weights


class BandEmbedding(nn.Module):
    """Band-split stage of one band: ``(M, N, 2 w)`` features ``(re/im, bin)`` -> LayerNorm -> Linear ->
    ``(M, N, D)``."""

    def __init__(self, width: int, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(2 * width)
        self.fc = nn.Linear(2 * width, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.norm(x))


class ResidualRNN(nn.Module):
    """Residual RNN over the middle axis of ``(M, L, D)``: LayerNorm -> (bi)GRU/LSTM/RNN -> Linear -> add."""

    def __init__(self, dim: int, hidden: int, rnn_type: str, bidirectional: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.rnn = RNN_TYPES[rnn_type](dim, hidden, num_layers=1, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(hidden * (2 if bidirectional else 1), dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc(run_rnn(self.rnn, self.norm(x))[0])


class MaskHead(nn.Module):
    """Mask of one band: ``(M, N, D)`` -> LayerNorm -> Linear -> activation -> Linear -> GLU -> ``(M, N, w, r)``
    (``r`` = 2 re/im for a complex mask, 1 for a real one)."""

    def __init__(self, width: int, dim: int, hidden: int, activation: nn.Module, reim: int):
        super().__init__()
        self.width, self.reim = width, reim
        self.norm = nn.LayerNorm(dim)
        self.hidden = nn.Linear(dim, hidden)
        self.activation = activation
        self.out = nn.Linear(hidden, 2 * reim * width)

    def forward(self, x: Tensor) -> Tensor:
        y = self.out(self.activation(self.hidden(self.norm(x))))
        value, gate = y.chunk(2, dim=-1)
        return (value * torch.sigmoid(gate)).unflatten(-1, (self.width, self.reim))


def _activation(name: str, kwargs: Mapping[str, Any] | None) -> nn.Module:
    cls = getattr(nn, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"BandIt: hidden_activation={name!r} is not a torch.nn activation (e.g. 'Tanh', 'ReLU')")
    return cls(**dict(kwargs or {}))


class BandIt(Separator):
    """BandIt separator: mixture ``(B, C, T)`` -> stems ``(B, S, C, T)`` (shared encoder, one mask decoder per stem).

    Args:
        sources: stem names, in output order (one decoder each).
        audio_channels, sample_rate: audio constants (the net is mono: channels are processed independently).
        n_fft, hop_length: STFT (2048 / 512, periodic Hann of ``n_fft``).
        pad_mode: STFT centre padding, ``"constant"`` (MSST ``bandit``) or ``"reflect"`` (MSST ``bandit_v2``).
        normalized: torchaudio's window normalisation of the STFT (divide by ``sqrt(sum(window ** 2))``; True in
            every MSST config).
        n_bands: bands of the musical filterbank (64).
        emb_dim: ``D`` (128).
        rnn_dim: RNN hidden size per direction (256).
        n_sqm_modules: time + band RNN pairs (8 -> 16 RNNs).
        rnn_type: ``"GRU"`` (MSST configs), ``"LSTM"`` or ``"RNN"``.
        bidirectional: bidirectional RNNs (True).
        mlp_dim: hidden size of the mask MLPs (512).
        hidden_activation, hidden_activation_kwargs: the mask MLPs' activation, a ``torch.nn`` class name (Tanh).
        complex_mask: complex (True) or real masks.
        use_freq_weights: weight each band's mask by ``1 / bands covering the bin`` before summing (True).
        segment: seconds per chunk for overlap-add inference (:attr:`segment_length`; MSST chunk 6 s for ``bandit``,
            8 s for ``bandit_v2``).
    """

    def __init__(self, sources: Sequence[str], audio_channels: int = 2, sample_rate: int = 44100, n_fft: int = 2048,
                 hop_length: int = 512, pad_mode: str = "constant", normalized: bool = True, n_bands: int = 64,
                 emb_dim: int = 128, rnn_dim: int = 256, n_sqm_modules: int = 8, rnn_type: str = "GRU",
                 bidirectional: bool = True, mlp_dim: int = 512, hidden_activation: str = "Tanh",
                 hidden_activation_kwargs: Mapping[str, Any] | None = None, complex_mask: bool = True,
                 use_freq_weights: bool = True, segment: float = 6.0):
        super().__init__(sources, audio_channels, sample_rate, round(segment * sample_rate))
        for name, value in (("n_fft", n_fft), ("hop_length", hop_length), ("emb_dim", emb_dim),
                            ("rnn_dim", rnn_dim), ("mlp_dim", mlp_dim)):
            if int(value) < 1:
                raise ValueError(f"BandIt: {name} must be positive, got {value}")
        if int(n_sqm_modules) < 0:
            raise ValueError(f"BandIt: n_sqm_modules must be >= 0, got {n_sqm_modules}")
        if hop_length > n_fft // 2:
            raise ValueError(f"BandIt: hop_length={hop_length} must be <= n_fft // 2 = {n_fft // 2} for the iSTFT")
        if rnn_type not in RNN_TYPES:
            raise ValueError(f"BandIt: rnn_type must be one of {sorted(RNN_TYPES)}, got {rnn_type!r}")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"BandIt: pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        self.n_fft, self.hop_length, self.pad_mode = int(n_fft), int(hop_length), pad_mode
        self.normalized, self.complex_mask = bool(normalized), bool(complex_mask)
        self.use_freq_weights = bool(use_freq_weights)
        self.bands, weights = musical_bands(n_bands, self.n_fft, self.sample_rate)
        widths = [end - start for start, end in self.bands]
        self.widths = widths
        self.n_bins = self.n_fft // 2 + 1
        bins = torch.cat([torch.arange(start, end) for start, end in self.bands])
        weight = torch.cat(weights) if self.use_freq_weights else torch.ones(len(bins))
        # computed from the configuration (not part of the state dict; the reference stores them as buffers)
        self.register_buffer("band_bins", bins, persistent=False)
        self.register_buffer("band_weights", weight, persistent=False)
        self.band_split = nn.ModuleList(BandEmbedding(w, emb_dim) for w in widths)
        self.rnns = nn.ModuleList(ResidualRNN(emb_dim, rnn_dim, rnn_type, bool(bidirectional))
                                  for _ in range(2 * int(n_sqm_modules)))
        reim = 2 if self.complex_mask else 1
        self.decoders = nn.ModuleList(
            nn.ModuleList(MaskHead(w, emb_dim, mlp_dim, _activation(hidden_activation, hidden_activation_kwargs),
                                   reim) for w in widths)
            for _ in self.sources)

    def _scale(self, device: torch.device) -> float:
        """torchaudio's window normalisation factor ``sqrt(sum(window ** 2))`` (1 when not ``normalized``)."""
        if not self.normalized:
            return 1.0
        key = (self.n_fft, str(device))  # cached: a Python float the ONNX exporter's trace (fake tensors) reuses
        if key not in _SCALES:
            _SCALES[key] = math.sqrt(float(hann_window(self.n_fft, device).double().square().sum()))
        return _SCALES[key]

    def encode(self, spec: Tensor) -> Tensor:
        """Shared encoder: complex STFT ``(M, F, N)`` -> band embeddings ``(M, K, N, D)`` after the RNNs."""
        ri = (torch.view_as_real(spec) if spec.is_complex() else spec).permute(0, 2, 3, 1)  # M N 2 F
        x = torch.stack([embed(ri[..., start:end].flatten(-2))
                         for embed, (start, end) in zip(self.band_split, self.bands)], dim=1)  # M K N D
        for rnn in self.rnns:
            x = rnn(x.flatten(0, 1)).unflatten(0, x.shape[:2]).transpose(1, 2)  # time / band axes swap each time
        return x

    def mask(self, heads: nn.ModuleList, x: Tensor) -> Tensor:
        """Full-band mask ``(M, F, N)`` (complex, or real) of one decoder from the embeddings ``(M, K, N, D)``."""
        masks = torch.cat([head(x[:, k]).float() for k, head in enumerate(heads)], dim=2)  # M N sum(w) r
        masks = masks * self.band_weights[:, None]
        full = masks.new_zeros(masks.shape[0], masks.shape[1], self.n_bins, masks.shape[-1])
        full = full.index_add(2, self.band_bins, masks)  # overlap-add of the bands
        if real_valued_active():  # ONNX export: real pairs (M, F, N, 2), or a real mask (M, F, N, 1)
            return (full if self.complex_mask else full[..., :1]).transpose(1, 2)
        full = torch.view_as_complex(full) if self.complex_mask else full[..., 0]
        return full.transpose(1, 2)

    def forward(self, mix: Tensor) -> Tensor:
        """Separate ``mix``: ``(B, C, T)`` -> ``(B, S, C, T)``."""
        self.check_mixture(mix)
        batch, channels, length = mix.shape
        pad_mode = self.pad_mode if length > self.n_fft // 2 else "constant"
        scale = self._scale(mix.device)
        with torch.autocast(mix.device.type, enabled=False):
            pairs = real_valued_active()  # ONNX export: real pairs (..., 2)
            spec = (stft_pairs if pairs else stft)(mix.float().reshape(batch * channels, length), self.n_fft,
                                                   self.hop_length, pad_mode=pad_mode) / scale  # (B C) F N
        x = self.encode(spec)
        if pairs and self.complex_mask:
            est = torch.stack([pair_mul(self.mask(heads, x), spec) for heads in self.decoders], dim=1)
        else:
            est = torch.stack([self.mask(heads, x) * spec for heads in self.decoders], dim=1)  # (B C) S F N
        with torch.autocast(mix.device.type, enabled=False):
            wav = (istft_pairs if pairs else istft)(est * scale, self.n_fft, self.hop_length, length)
        return wav.reshape(batch, channels, len(self.sources), length).transpose(1, 2)
