"""Open-Unmix (Stöter et al. 2019; sigsep ``openunmix`` 1.3.0): one BiLSTM magnitude-mask network per target.

Pipeline of :class:`OpenUnmix`:

1. STFT of the mixture (periodic Hann ``n_fft`` 4096 / hop 1024, ``center=True``, reflect padding), magnitude
   ``|X|`` ``(B, C, F, N)``;
2. per target (:class:`UnmixNet`): bins below ``max_bin`` (16 kHz: 1487 of 2049) shifted and scaled by trainable
   per-bin vectors; ``fc1`` (no bias) -> BatchNorm -> tanh; 3-layer BiLSTM (``hidden/2`` per direction, dropout 0.4);
   skip concatenation; ``fc2`` -> BN -> ReLU; ``fc3`` -> BN over all ``C * F`` outputs; per-bin output scale/mean;
   ``ReLU(.) * |X|``: a non-negative unbounded mask on the full band;
3. eval mode with ``wiener_iterations > 0`` (Open-Unmix's ``niter``, 1 for the released models): multichannel Wiener
   EM from the target magnitudes with the mixture phase (``softmask=False``) on windows of ``wiener_window`` frames
   (:func:`mss.audio.wiener.wiener`); with a single target the residual ``mix - target`` is added as a second
   source for the EM and dropped afterwards (the reference refuses ``niter > 0`` with one target). Training mode,
   or ``wiener_iterations=0``: target magnitude with the mixture phase;
4. iSTFT with the input length.

Parameter names match ``openunmix.model.OpenUnmix`` (``fc1, bn1, lstm, fc2, bn2, fc3, bn3, input_mean,
input_scale, output_scale, output_mean``) under ``targets.<name>.``, so :mod:`mss.pretrained.import_umx` only adds the
prefix. Sizes: 8,893,348 parameters per stereo target at ``hidden_size=512`` (UMX / UMX-HQ), 28,257,188 at 1024
(UMX-L).

Deviations: the reference trains with ``center=False`` STFTs and a magnitude MSE on the network output; here
training goes through the waveform like every mss model (use ``module/loss=spectrogram_mse``). ``input_mean`` /
``input_scale`` start at 0 / 1 (the reference initialises them from training-set statistics; they are trainable
either way).

Shape legend: ``B`` batch, ``S`` targets, ``C`` channels, ``T`` samples, ``F`` bins, ``N`` frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F_
from einops import rearrange
from torch import Tensor, nn

from mss.models.blocks import run_rnn
from mss.models.magnitude import MagnitudeSeparator

__all__ = ["OpenUnmix", "UnmixNet", "bandwidth_to_max_bin"]


def bandwidth_to_max_bin(sample_rate: float, n_fft: int, bandwidth: float) -> int:
    """Number of STFT bins at or below ``bandwidth`` Hz (1487 for 44.1 kHz, ``n_fft`` 4096, 16 kHz)."""
    return min(int(bandwidth * n_fft / sample_rate) + 1, n_fft // 2 + 1)


class UnmixNet(nn.Module):
    """One Open-Unmix target network: mixture magnitude ``(B, C, F, N)`` -> target magnitude ``(B, C, F, N)``.

    Args:
        n_bins: ``F`` (``n_fft // 2 + 1``).
        channels: ``C``.
        hidden_size: bottleneck width ``H`` (512 UMX, 1024 UMX-L).
        nb_layers: LSTM layers.
        max_bin: input bins seen by the network.
        unidirectional: causal LSTM of ``H`` units instead of a BiLSTM of ``H/2`` per direction.
    """

    def __init__(self, n_bins: int, channels: int, hidden_size: int = 512, nb_layers: int = 3,
                 max_bin: int | None = None, unidirectional: bool = False):
        super().__init__()
        self.n_bins, self.channels, self.hidden_size = n_bins, channels, hidden_size
        self.max_bin = max_bin or n_bins
        self.fc1 = nn.Linear(self.max_bin * channels, hidden_size, bias=False)
        self.bn1 = nn.BatchNorm1d(hidden_size)
        self.lstm = nn.LSTM(hidden_size, hidden_size if unidirectional else hidden_size // 2, num_layers=nb_layers,
                            bidirectional=not unidirectional, dropout=0.4 if nb_layers > 1 else 0.0)
        self.fc2 = nn.Linear(2 * hidden_size, hidden_size, bias=False)
        self.bn2 = nn.BatchNorm1d(hidden_size)
        self.fc3 = nn.Linear(hidden_size, n_bins * channels, bias=False)
        self.bn3 = nn.BatchNorm1d(n_bins * channels)
        self.input_mean = nn.Parameter(torch.zeros(self.max_bin))
        self.input_scale = nn.Parameter(torch.ones(self.max_bin))
        self.output_scale = nn.Parameter(torch.ones(n_bins))
        self.output_mean = nn.Parameter(torch.ones(n_bins))

    def forward(self, mag: Tensor) -> Tensor:
        batch, channels, _, frames = mag.shape
        x = rearrange(mag[:, :, :self.max_bin], "b c f n -> n b c f")
        x = (x + self.input_mean) * self.input_scale
        x = torch.tanh(self.bn1(self.fc1(x.reshape(frames * batch, -1)))).reshape(frames, batch, -1)
        x = torch.cat([x, run_rnn(self.lstm, x)[0]], dim=-1)  # N B 2H
        x = F_.relu(self.bn2(self.fc2(x.reshape(frames * batch, -1))))
        x = self.bn3(self.fc3(x)).reshape(frames, batch, channels, self.n_bins)
        x = x * self.output_scale + self.output_mean
        return F_.relu(rearrange(x, "n b c f -> b c f n")) * mag


class OpenUnmix(MagnitudeSeparator):
    """Open-Unmix separator: mixture ``(B, C, T)`` -> targets ``(B, S, C, T)``, one :class:`UnmixNet` per target.

    Args:
        sources: target names.
        audio_channels, sample_rate: audio constants.
        n_fft, hop_length: STFT (4096 / 1024).
        hidden_size, nb_layers, unidirectional: network size (512 / 3 / False: UMX; 1024: UMX-L).
        bandwidth: input bandwidth in Hz (16 kHz -> ``max_bin`` 1487 at 44.1 kHz / 4096); ``max_bin`` overrides it.
        wiener_iterations: EM iterations at inference (1 as the released models; 0 = mixture phase only).
        wiener_window: frames per Wiener window (300).
        residual: also estimate ``mix - sum(targets)`` for the EM (reference ``residual=True``); the extra source is
            dropped from the output.
        segment: seconds per chunk for overlap-add inference (:attr:`segment_length`).
    """

    def __init__(self, sources: Sequence[str], audio_channels: int = 2, sample_rate: int = 44100,
                 n_fft: int = 4096, hop_length: int = 1024, hidden_size: int = 512, nb_layers: int = 3,
                 unidirectional: bool = False, bandwidth: float = 16000.0, max_bin: int | None = None,
                 wiener_iterations: int = 1, wiener_window: int | None = 300, residual: bool = False,
                 segment: float = 10.0):
        super().__init__(sources, audio_channels, sample_rate, round(segment * sample_rate))
        n_bins = n_fft // 2 + 1
        max_bin = max_bin or bandwidth_to_max_bin(sample_rate, n_fft, bandwidth)
        if not 1 <= max_bin <= n_bins:
            raise ValueError(f"max_bin={max_bin} must lie in [1, {n_bins}]")
        self.max_bin = max_bin
        self.set_masking(n_fft, hop_length, wiener_iterations, wiener_window, residual)
        self.targets = nn.ModuleDict({
            name: UnmixNet(n_bins, audio_channels, hidden_size, nb_layers, max_bin, unidirectional)
            for name in self.sources})
