"""Oracle separators (SiSEC18 / sigsep-mus-oracle baselines): upper bounds computed from the true stems.

They satisfy the model contract (``sources``, ``audio_channels``, ``sample_rate``, ``segment_length``) but their
``forward`` takes the reference stems as well as the mixture, so they are evaluated with
``python -m mss.evaluate model=oracle_irm2 data=...`` (``mss.evaluate`` passes the references to any module with
``needs_references = True``), not trained.

All oracles use one STFT (Hann window, ``n_fft`` = 2048, hop ``n_fft // 2``, as in sigsep-mus-oracle) and process
channels independently, except the multichannel Wiener filter:

* ``irm`` (α = 1 "IRM1", α = 2 "IRM2", the SiSEC18 oracle): ratio mask ``|S_j|^α / Σ_k |S_k|^α`` on the mixture STFT;
* ``ibm`` (α = 1 or 2): binary mask ``|S_j|^α / |X|^α ≥ θ`` (θ = 0.5) on the mixture STFT;
* ``mwf``: multichannel Wiener filter of the local Gaussian model, with per-source power ``v_j(f, t)`` (channel mean
  of ``|S_j|²``) and time-invariant spatial covariance ``R_j(f) = Σ_t S_j S_jᴴ / Σ_t v_j`` estimated from the true
  stems: ``Ŝ_j = v_j R_j (Σ_k v_k R_k)⁻¹ X``;
* ``mix``: the mixture scaled by ``mix_gain`` for every source (sigsep's "MIX" uses 1/S; 1 is "the mixture").

Shape legend: ``B`` batch, ``S`` sources, ``C`` channels, ``T`` samples, ``F`` frequency bins, ``N`` frames.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mss.audio.spectral import istft, stft
from mss.audio.wiener import solve_small
from mss.models.base import Separator

__all__ = ["KINDS", "Oracle"]

KINDS = ("irm", "ibm", "mwf", "mix")


class Oracle(Separator):
    """An oracle "separator": ``forward(mix (B, C, T), stems (B, S, C, T)) -> (B, S, C, T)``.

    Args:
        sources, audio_channels, sample_rate: the model contract (``${data.*}`` in the configs).
        kind: ``irm``, ``ibm``, ``mwf`` or ``mix`` (see the module docstring).
        alpha: magnitude exponent of ``irm``/``ibm`` masks.
        theta: ``ibm`` threshold.
        n_fft: STFT size (hop ``n_fft // 2``).
        mix_gain: ``mix`` gain; ``None`` = ``1 / S`` (sigsep-mus-oracle's MIX).
        eps: regulariser of the masks and of the Wiener covariance.
    """

    needs_references = True

    def __init__(self, sources: list[str], audio_channels: int = 2, sample_rate: int = 44100, kind: str = "irm",
                 alpha: float = 2.0, theta: float = 0.5, n_fft: int = 2048, mix_gain: float | None = None,
                 eps: float = 1e-10):
        super().__init__(sources, audio_channels, sample_rate, None)  # whole tracks: cheap, no chunking needed
        if kind not in KINDS:
            raise ValueError(f"model.kind={kind!r}: expected one of {KINDS}")
        self.kind, self.alpha, self.theta, self.n_fft, self.eps = kind, float(alpha), float(theta), int(n_fft), eps
        self.mix_gain = 1.0 / len(self.sources) if mix_gain is None else float(mix_gain)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, alpha={self.alpha}, sources={self.sources}, n_fft={self.n_fft}"

    def forward(self, mix: Tensor, stems: Tensor) -> Tensor:
        """Oracle estimates ``(B, S, C, T)`` from the mixture ``(B, C, T)`` and the true stems ``(B, S, C, T)``."""
        self.check_mixture(mix)
        if stems.dim() != 4 or mix.dim() != 3 or stems.shape[0] != mix.shape[0] or stems.shape[2:] != mix.shape[1:]:
            raise ValueError(f"oracle {self.kind}: expected mix (B, C, T) and stems (B, S, C, T), got "
                             f"{tuple(mix.shape)} and {tuple(stems.shape)}")
        if stems.shape[1] != len(self.sources):
            raise ValueError(f"oracle {self.kind}: {stems.shape[1]} stems for sources {self.sources}")
        length = mix.shape[-1]
        if self.kind == "mix":
            return (self.mix_gain * mix).unsqueeze(1).expand(-1, stems.shape[1], -1, -1).clone()
        hop = self.n_fft // 2
        x = stft(mix.float(), self.n_fft, hop)  # (B, C, F, N)
        s = stft(stems.float(), self.n_fft, hop)  # (B, S, C, F, N)
        if self.kind == "irm":
            power = s.abs().pow(self.alpha)
            y = power / (self.eps + power.sum(1, keepdim=True)) * x.unsqueeze(1)
        elif self.kind == "ibm":
            ratio = s.abs().pow(self.alpha) / (self.eps + x.abs().pow(self.alpha)).unsqueeze(1)
            y = (ratio >= self.theta).to(x.dtype) * x.unsqueeze(1)
        else:
            y = torch.cat([self._wiener(s[..., f:f + 64, :].to(torch.complex128), x[..., f:f + 64, :].to(
                torch.complex128)).to(x.dtype) for f in range(0, x.shape[-2], 64)], dim=-2)  # 64 bins at a time
        return istft(y, self.n_fft, hop, length).to(mix.dtype)

    def _wiener(self, s: Tensor, x: Tensor) -> Tensor:
        """Oracle multichannel Wiener filter (float64): ``s (B, S, C, F, N)``, ``x (B, C, F, N)`` -> same as ``s``."""
        channels = x.shape[1]
        v = s.abs().square().mean(2)  # B S F N
        r = torch.einsum("bscfn,bsdfn->bsfcd", s, s.conj()) / (self.eps + v.sum(-1))[..., None, None]  # B S F C C
        cxx = torch.einsum("bsfn,bsfcd->bfncd", v.to(r.dtype), r)
        cxx = cxx + self.eps * torch.eye(channels, dtype=cxx.dtype, device=cxx.device)
        z = solve_small(cxx, x.permute(0, 2, 3, 1))  # C_xx⁻¹ x: B F N C
        return v.unsqueeze(2) * torch.einsum("bsfcd,bfnd->bscfn", r, z)

