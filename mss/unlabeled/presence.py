"""Per-frame source-silence classifier for unlabeled-data remixing (Demucs 2019, section 4.1), a smaller variant.

The paper's detector reads a scattering transform of the 16 kHz mono mixture through Conv2d/BatchNorm/max-pool
blocks, collapses frequency and runs a BiLSTM that predicts, every 64 ms, the probability that each source is
silent. This one keeps the structure (16 kHz mono input, 2-D convolutions over a time-frequency map, frequency
collapsed, bidirectional recurrence, one logit per source and 64 ms frame) on a log band-energy spectrogram, with
far fewer channels: it trains in minutes on CPU and is selected by config (``detector=classifier``).

Shapes: B batch, T samples (mono), F bands, N frames, S sources.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from mss.audio.spectral import stft


class PresenceNet(nn.Module):
    """Mono mixture ``(B, T)`` at ``sample_rate`` → silence logits ``(B, S, N)``, one frame per
    ``hop_length * pool`` samples (64 ms at 16 kHz by default); ``sigmoid`` gives P(source silent).

    Args:
        sources: source names (order of the S axis).
        sample_rate: input rate (16 kHz: the paper found the downsampled mono input overfits less).
        n_fft, hop_length: STFT of the input; magnitudes are averaged into ``bands`` linear bands, log-compressed.
        channels: width of the first conv block (doubled in the second).
        hidden: BiGRU hidden size.
        pool: time pooling after the convolutions (frame hop = ``hop_length * pool``).
    """

    def __init__(self, sources: Sequence[str], sample_rate: int = 16000, n_fft: int = 1024, hop_length: int = 256,
                 bands: int = 64, channels: int = 16, hidden: int = 64, pool: int = 4):
        super().__init__()
        if (n_fft // 2) % bands:
            raise ValueError(f"PresenceNet: n_fft // 2 = {n_fft // 2} must be a multiple of bands={bands}")
        self.sources, self.sample_rate = list(sources), int(sample_rate)
        self.n_fft, self.hop_length, self.bands, self.pool = n_fft, hop_length, bands, pool
        c = channels

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d((4, 1)))

        self.norm = nn.BatchNorm2d(1)
        self.convs = nn.Sequential(block(1, c), block(c, 2 * c))
        self.collapse = nn.Conv1d(2 * c * (bands // 16), 2 * hidden, 1)
        self.rnn = nn.GRU(2 * hidden, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, len(self.sources))

    @property
    def frame_hop(self) -> int:
        """Samples (at ``sample_rate``) between output frames."""
        return self.hop_length * self.pool

    def features(self, mono: Tensor) -> Tensor:
        """``(B, T)`` → log band energies ``(B, 1, F, N0)``."""
        mag = stft(mono, self.n_fft, self.hop_length).abs()[..., :-1, :]  # drop Nyquist: n_fft/2 bins
        mag = rearrange(mag, "b (f k) n -> b f k n", f=self.bands).square().mean(2)
        return torch.log(mag + 1e-8)[:, None]

    def forward(self, mono: Tensor) -> Tensor:
        """``(B, T)`` → logits ``(B, S, N)`` with ``N = (T // hop_length + 1) // pool``."""
        x = self.convs(self.norm(self.features(mono)))  # (B, C, F/16, N0)
        x = self.collapse(rearrange(x, "b c f n -> b (c f) n"))
        x = nn.functional.avg_pool1d(x, self.pool)  # (B, H, N)
        x, _ = self.rnn(rearrange(torch.relu(x), "b h n -> b n h"))
        return rearrange(self.head(x), "b n s -> b s n")
