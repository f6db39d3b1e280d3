"""Band-Split RNN (Luo & Yu, "Music Source Separation with Band-split RNN", TASLP 2023): one network per stem.

The authors' code is not public; the structure followed here is the one of magronp/bsrnn (commit f2ecc62b,
``models/bsrnn.py`` + ``models/bs.py``), which adapts the authors' SDX'23 starter-kit classes. Per stem
(:class:`BandSplitRNN`), for every audio channel independently (channels are folded into the batch):

1. STFT (periodic Hann ``n_fft`` 2048 / hop 512, ``center=True``, reflect padding, unnormalised), real and imaginary
   parts stacked: ``(B*C, 2, F, N)``;
2. band split into ``K`` contiguous bands of ``w_k`` bins (:func:`band_widths`); each band, flattened as
   ``(re/im, bin)`` with bins fastest (``2 w_k`` features), goes through a one-group GroupNorm and a 1x1 projection
   to ``feature_dim`` (``D``): ``(B*C, K, N, D)``;
3. ``num_layers`` band-sequence blocks, each a residual BLSTM over time (per band) then one over bands (per frame):
   one-group norm -> BLSTM (``hidden_factor * D`` per direction) -> Linear(2 * hidden -> D) -> add;
4. one mask head per band: one-group norm -> Linear(D -> 4D) -> tanh -> Linear(4D -> 4D) -> tanh ->
   Linear(4D -> 4 w_k), unflattened as ``(GLU half, re/im, bin)``; value * sigmoid(gate) gives the complex mask, which
   multiplies the band's mixture STFT; bands are concatenated and inverted (iSTFT, input length).

Quirks of the reference followed here:

* the "normalisation" everywhere is ``GroupNorm(1, channels, eps=1e-7)`` on ``[*, channels, length]``: mean and
  variance are pooled over features *and* the sequence (time for band-split, time-RNN and mask heads; bands for the
  band RNN), with a per-feature affine. :class:`OneGroupNorm` computes exactly that on channel-last tensors;
* band widths are ``floor(Hz * F / (sample_rate / 2))`` bins (100 Hz -> 4 bins at 2048 / 44.1 kHz, i.e. 86 Hz), the
  last band takes the remaining bins; the layout depends on the stem ("V7" for vocals and other, its own for bass and
  drums; any other source name gets the reference's joint 57-band layout, as MAG does for an unknown target);
* two hidden layers of ``4 D`` in the mask MLP (MAG; BandIt's and AMA's BSRNN have one).

Parameter names follow the reference modulo renaming (``BN.k.0/1`` -> ``band_split.k.norm/fc``,
``separator.i.{time,band}_net.{norm,main_layer,proj}`` -> ``layers.i.{time,band}_rnn.{norm,rnn,proj}``,
``maskers.0.mask.k.{0,1,3,5}`` -> ``masks.k.{norm,fc1,fc2,out}``; 1x1 convolutions are Linear layers):
:func:`convert_mag_state_dict` maps one MAG single-target state dict onto one :class:`BandSplitRNN`.

Sizes (paper: ``feature_dim`` 128, 12 layers): vocals / other 36,417,160 parameters, bass 32,797,192, drums
41,024,392 (MAG's small ``bsrnn``, 64 / 8 layers: vocals 8,020,296).

Shape legend: ``B`` batch, ``S`` sources, ``C`` channels, ``T`` samples, ``F`` bins, ``N`` frames, ``K`` bands,
``D`` feature dim.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F_
from torch import Tensor, nn

from mss.audio.spectral import istft, istft_pairs, pair_mul, real_valued_active, stft, stft_pairs
from mss.models.base import Separator
from mss.models.blocks import run_rnn

__all__ = ["BAND_SCHEMES", "BSRNN", "BandSplitRNN", "OneGroupNorm", "band_widths", "convert_mag_state_dict"]

# (nominal band width in Hz, number of bands) per layout, low to high; the remainder becomes the last band.
BAND_SCHEMES: dict[str, list[tuple[int, int]]] = {
    "vocals": [(100, 10), (250, 12), (500, 8), (1000, 8), (2000, 2)],  # "V7", also used for other
    "other": [(100, 10), (250, 12), (500, 8), (1000, 8), (2000, 2)],
    "bass": [(50, 10), (100, 5), (500, 6), (1000, 4), (2000, 4)],
    "drums": [(50, 20), (100, 10), (250, 8), (500, 8), (1000, 8)],
    "joint": [(50, 20), (100, 10), (250, 8), (500, 8), (1000, 8), (2000, 2)],
}


def band_widths(scheme: str | Sequence[int], n_bins: int, sample_rate: int) -> list[int]:
    """Band widths in bins (summing to ``n_bins``) for a layout of :data:`BAND_SCHEMES` or explicit widths.

    Named layouts use the reference's floored widths ``floor(Hz * n_bins / (sample_rate / 2))`` plus one last band
    with the remaining bins (41 bands for vocals at 2048 / 44.1 kHz). Explicit widths must sum to ``n_bins``.
    """
    if isinstance(scheme, str):
        if scheme not in BAND_SCHEMES:
            raise ValueError(f"unknown band_split layout {scheme!r}; choose one of {sorted(BAND_SCHEMES)} or give "
                             f"explicit widths")
        ratio = n_bins / (sample_rate / 2.0)
        widths = [int(math.floor(hz * ratio)) for hz, count in BAND_SCHEMES[scheme] for _ in range(count)]
        rest = n_bins - sum(widths)
        if min(widths) < 1 or rest < 1:
            raise ValueError(f"band_split layout {scheme!r} does not fit n_fft={2 * (n_bins - 1)} at sample_rate="
                             f"{sample_rate}: widths {sorted(set(widths))} bins, {rest} bins left for the last band "
                             f"(every band needs >= 1 bin; use a larger n_fft or explicit widths)")
        return widths + [rest]
    widths = [int(w) for w in scheme]
    if not widths or min(widths) < 1 or sum(widths) != n_bins:
        raise ValueError(f"explicit band_split widths must be positive and sum to n_fft // 2 + 1 = {n_bins}, got "
                         f"{widths} (sum {sum(widths)})")
    return widths


class OneGroupNorm(nn.Module):
    """``GroupNorm(1, dim, eps)`` for channel-last input ``(M, L, dim)``: statistics over ``L`` and ``dim`` together,
    per-feature affine (same parameters as :class:`torch.nn.GroupNorm` on ``(M, dim, L)``)."""

    def __init__(self, dim: int, eps: float = 1e-7):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        # a layer norm over the last two axes without affine is exactly the one-group statistics (fused kernel)
        return torch.addcmul(self.bias, F_.layer_norm(x, x.shape[-2:], eps=self.eps), self.weight)


class ResidualRNN(nn.Module):
    """Residual BLSTM over the middle axis of ``(M, L, D)``: norm -> BLSTM -> Linear -> add."""

    def __init__(self, dim: int, hidden: int, eps: float):
        super().__init__()
        self.norm = OneGroupNorm(dim, eps)
        self.rnn = nn.LSTM(dim, hidden, num_layers=1, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.proj(run_rnn(self.rnn, self.norm(x))[0])


class BandSequenceBlock(nn.Module):
    """One BSRNN separator layer on ``(B, K, N, D)``: residual BLSTM across frames, then across bands."""

    def __init__(self, dim: int, hidden: int, eps: float):
        super().__init__()
        self.time_rnn = ResidualRNN(dim, hidden, eps)
        self.band_rnn = ResidualRNN(dim, hidden, eps)

    def forward(self, x: Tensor) -> Tensor:
        batch, bands, frames, dim = x.shape
        x = self.time_rnn(x.reshape(batch * bands, frames, dim)).reshape(batch, bands, frames, dim)
        x = x.transpose(1, 2).reshape(batch * frames, bands, dim)
        x = self.band_rnn(x).reshape(batch, frames, bands, dim)
        return x.transpose(1, 2)


class BandEmbedding(nn.Module):
    """Band-split stage for one band: ``(M, N, 2 w)`` -> one-group norm -> Linear -> ``(M, N, D)``."""

    def __init__(self, width: int, dim: int, eps: float):
        super().__init__()
        self.norm = OneGroupNorm(2 * width, eps)
        self.fc = nn.Linear(2 * width, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.norm(x))


class MaskHead(nn.Module):
    """Mask estimation for one band: ``(M, N, D)`` -> complex mask as ``(M, N, 2, w)`` (re/im, bin)."""

    def __init__(self, width: int, dim: int, hidden: int, eps: float):
        super().__init__()
        self.width = width
        self.norm = OneGroupNorm(dim, eps)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 4 * width)

    def forward(self, x: Tensor) -> Tensor:
        y = self.out(torch.tanh(self.fc2(torch.tanh(self.fc1(self.norm(x))))))
        y = y.unflatten(-1, (2, 2, self.width))  # (GLU half, re/im, bin)
        return y[..., 0, :, :] * torch.sigmoid(y[..., 1, :, :])


class BandSplitRNN(nn.Module):
    """One BSRNN stem network: mixture STFT ``(M, F, N)`` complex (``M`` = batch x channels) -> estimate, same shape.

    Args:
        widths: band widths in bins (sum ``F``), from :func:`band_widths`.
        feature_dim: ``D`` (128 paper).
        num_layers: band-sequence blocks (12 paper).
        hidden_factor: BLSTM hidden size per direction = ``hidden_factor * D`` (2).
        mask_factor: mask-MLP hidden size = ``mask_factor * D`` (4).
        eps: epsilon of every one-group norm (1e-7).
    """

    def __init__(self, widths: Sequence[int], feature_dim: int = 128, num_layers: int = 12, hidden_factor: int = 2,
                 mask_factor: int = 4, eps: float = 1e-7):
        super().__init__()
        self.widths = [int(w) for w in widths]
        self.band_split = nn.ModuleList(BandEmbedding(w, feature_dim, eps) for w in self.widths)
        self.layers = nn.ModuleList(BandSequenceBlock(feature_dim, hidden_factor * feature_dim, eps)
                                    for _ in range(num_layers))
        self.masks = nn.ModuleList(MaskHead(w, feature_dim, mask_factor * feature_dim, eps) for w in self.widths)

    def forward(self, spec: Tensor) -> Tensor:
        pairs = not spec.is_complex()  # real pairs (M, F, N, 2): ONNX export (mss.audio.spectral.real_valued)
        ri = spec.transpose(-2, -3) if pairs else torch.view_as_real(spec.transpose(-1, -2))  # M N F 2
        bands = ri.split(self.widths, dim=-2)  # each M N w 2
        x = torch.stack([embed(band.transpose(-1, -2).flatten(-2)) for embed, band in zip(self.band_split, bands)],
                        dim=1)  # M K N D
        for layer in self.layers:
            x = layer(x)
        out = []
        for k, (head, band) in enumerate(zip(self.masks, bands)):
            mask = head(x[:, k]).float().transpose(-1, -2)  # M N w 2 (float32)
            if pairs:
                out.append(pair_mul(mask, band))
                continue
            mask = torch.view_as_complex(mask.contiguous())  # M N w
            out.append(mask * torch.view_as_complex(band.contiguous()))
        if pairs:
            return torch.cat(out, dim=-2).transpose(-2, -3)  # M F N 2
        return torch.cat(out, dim=-1).transpose(-1, -2)  # M F N


class BSRNN(Separator):
    """Band-Split RNN separator: mixture ``(B, C, T)`` -> stems ``(B, S, C, T)``, one :class:`BandSplitRNN` per stem.

    Args:
        sources: stem names; each gets its own network and band layout.
        audio_channels, sample_rate: audio constants (the nets are mono: channels are processed independently).
        n_fft, hop_length: STFT (2048 / 512).
        feature_dim, num_layers, hidden_factor, mask_factor, eps: network sizes (:class:`BandSplitRNN`).
        band_split: ``None`` = the layout named after each source (vocals, other, bass, drums; ``joint`` for any
            other name), a layout name of :data:`BAND_SCHEMES` for every source, or a mapping source -> layout name
            or explicit widths.
        segment: seconds per chunk for overlap-add inference (:attr:`segment_length`).
    """

    def __init__(self, sources: Sequence[str], audio_channels: int = 2, sample_rate: int = 44100, n_fft: int = 2048,
                 hop_length: int = 512, feature_dim: int = 128, num_layers: int = 12, hidden_factor: int = 2,
                 mask_factor: int = 4, eps: float = 1e-7,
                 band_split: str | Mapping[str, str | Sequence[int]] | None = None, segment: float = 10.0):
        super().__init__(sources, audio_channels, sample_rate, round(segment * sample_rate))
        for name, value in (("n_fft", n_fft), ("hop_length", hop_length), ("feature_dim", feature_dim),
                            ("hidden_factor", hidden_factor), ("mask_factor", mask_factor)):
            if int(value) < 1:
                raise ValueError(f"BSRNN: {name} must be positive, got {value}")
        if int(num_layers) < 0:
            raise ValueError(f"BSRNN: num_layers must be >= 0, got {num_layers}")
        if hop_length > n_fft // 2:
            raise ValueError(f"BSRNN: hop_length={hop_length} must be <= n_fft // 2 = {n_fft // 2} for the iSTFT")
        if isinstance(band_split, Mapping):
            unknown = set(band_split) - set(self.sources)
            if unknown:
                raise ValueError(f"BSRNN: band_split names {sorted(unknown)}, not among the sources {self.sources}")
        self.n_fft, self.hop_length = int(n_fft), int(hop_length)
        n_bins = self.n_fft // 2 + 1
        nets = {}
        for name in self.sources:
            if band_split is None:
                layout = name if name in BAND_SCHEMES else "joint"
            elif isinstance(band_split, str):
                layout = band_split
            else:
                layout = band_split.get(name, name if name in BAND_SCHEMES else "joint")
            widths = band_widths(layout, n_bins, self.sample_rate)
            nets[name] = BandSplitRNN(widths, feature_dim, num_layers, hidden_factor, mask_factor, eps)
        self.nets = nn.ModuleDict(nets)

    def forward(self, mix: Tensor) -> Tensor:
        """Separate ``mix``: ``(B, C, T)`` -> ``(B, S, C, T)``."""
        self.check_mixture(mix)
        batch, channels, length = mix.shape
        pad_mode = "reflect" if length > self.n_fft // 2 else "constant"
        with torch.autocast(mix.device.type, enabled=False):
            pairs = real_valued_active()  # ONNX export: real pairs (..., 2)
            spec = (stft_pairs if pairs else stft)(mix.float().reshape(batch * channels, length), self.n_fft,
                                                   self.hop_length, pad_mode=pad_mode)
        est = torch.stack([net(spec).to(spec.dtype) for net in self.nets.values()], dim=1)  # (B C) S F N
        with torch.autocast(mix.device.type, enabled=False):
            wav = (istft_pairs if pairs else istft)(est, self.n_fft, self.hop_length, length)
        return wav.reshape(batch, channels, len(self.sources), length).transpose(1, 2)


def convert_mag_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """magronp/bsrnn single-target ``BSRNN`` state dict (Lightning ``state_dict`` keys) -> :class:`BandSplitRNN` keys.

    ``BN.k.0`` -> ``band_split.k.norm``, ``BN.k.1`` -> ``band_split.k.fc`` (kernel-1 Conv1d weights squeezed),
    ``separator.i.time_net`` / ``band_net`` -> ``layers.i.time_rnn`` / ``band_rnn`` (``main_layer`` -> ``rnn``),
    ``maskers.0.mask.k.{0,1,3,5}`` -> ``masks.k.{norm,fc1,fc2,out}``; the STFT window buffers are dropped. Refuses
    multi-target (``maskers.1``), attention, TAC and head-split checkpoints by name.
    """
    out: dict[str, Tensor] = {}
    mask_names = {"0": "norm", "1": "fc1", "3": "fc2", "5": "out"}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] in ("stft", "istft"):
            continue
        if parts[0] == "BN" and len(parts) == 4:
            new = f"band_split.{parts[1]}.{'norm' if parts[2] == '0' else 'fc'}.{parts[3]}"
        elif parts[0] == "separator" and len(parts) >= 5 and parts[2] in ("time_net", "band_net"):
            inner = {"main_layer": "rnn", "norm": "norm", "proj": "proj"}.get(parts[3])
            lstm = re.fullmatch(r"(weight|bias)_(ih|hh)_l0(_reverse)?", parts[4]) and len(parts) == 5
            if inner is None or (inner == "rnn" and not lstm) or (
                    parts[4].startswith("weight_hh") and value.shape[0] != 4 * value.shape[1]):
                raise ValueError(f"{key}: unsupported MAG BSRNN layer type (only bidirectional one-layer LSTM "
                                 f"time/band layers, no GRU or conv)")
            new = f"layers.{parts[1]}.{parts[2].replace('_net', '_rnn')}.{inner}.{'.'.join(parts[4:])}"
        elif parts[0] == "maskers" and len(parts) == 6 and parts[2] == "mask":
            if parts[1] != "0":
                raise ValueError(f"{key}: a multi-target MAG BSRNN (shared separator, several maskers) is not the "
                                 f"paper's one-net-per-stem model")
            if parts[5] not in ("weight", "bias") or parts[4] not in mask_names:
                raise ValueError(f"{key}: unexpected MAG masker layer (mask_ctxt / fac_out_ch variants unsupported)")
            new = f"masks.{parts[3]}.{mask_names[parts[4]]}.{parts[5]}"
        else:
            raise ValueError(f"{key}: not a MAG BSRNN parameter this model has (attention / TAC / stereo variants "
                             f"are unsupported)")
        if new.endswith("weight") and value.dim() == 3 and value.shape[-1] == 1:
            value = value[..., 0]
        out[new] = value
    return out
