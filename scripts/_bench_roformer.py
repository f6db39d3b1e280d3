"""Reference builders for the RoFormer / Open-Unmix rows of ``scripts/bench_models.py``: the ``bs-roformer`` 0.4.1
and ``openunmix`` 1.3.0 networks built from an mss model config, sharing the mss network's weights."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class FullLength(nn.Module):
    """lucidrains' BS-RoFormer 0.4.1 calls ``torch.istft`` without ``length`` (output ``hop * (T // hop)`` samples);
    run it with the input length so both outputs compare sample by sample."""

    def __init__(self, ref: nn.Module):
        super().__init__()
        self.ref = ref

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        istft = torch.istft
        torch.istft = lambda *a, **k: istft(*a, **{**k, "length": mix.shape[-1]})
        try:
            return self.ref(mix)
        finally:
            torch.istft = istft


def lucidrains_roformer(kind: str) -> Callable[[nn.Module, dict], nn.Module]:
    """Reference builder for lucidrains-compatible mss configs (gates, no mask RMSNorm, ``zero_dc=False``):
    ``kind`` ``bs`` (BSRoformer) or ``mel`` (MelBandRoformer). The mss net gets the reference's random weights."""

    def build(net: nn.Module, config: dict) -> nn.Module:
        from mss.models.bs_roformer import PAPER_BANDS
        from mss.pretrained.import_roformer import convert_state_dict
        from tests._reference import import_reference

        bsr = import_reference("bs_roformer")
        kw = dict(dim=config["dim"], depth=config["depth"], stereo=config["audio_channels"] == 2,
                  num_stems=len(config["sources"]), time_transformer_depth=config["time_depth"],
                  freq_transformer_depth=config["band_depth"], dim_head=config["head_dim"], heads=config["heads"],
                  attn_dropout=config["attn_dropout"], ff_dropout=config["ff_dropout"], flash_attn=True,
                  stft_n_fft=config["n_fft"], stft_hop_length=config["hop_length"], stft_win_length=config["n_fft"])
        if kind == "bs":
            inner = bsr.BSRoformer(freqs_per_bands=tuple(config["freqs_per_bands"] or PAPER_BANDS),
                                   mask_estimator_depth=config["mask_hidden_layers"] + 1, **kw)
            ref = FullLength(inner)
        else:
            inner = ref = bsr.MelBandRoformer(num_bands=config["num_bands"], sample_rate=config["sample_rate"],
                                              linear_transformer_depth=config["linear_depth"],
                                              mask_estimator_depth=config["mask_hidden_layers"],
                                              match_input_audio_length=True, **kw)
        net.load_state_dict(convert_state_dict(inner.state_dict()))
        return ref

    return build


def openunmix_separator(net: nn.Module, config: dict) -> nn.Module:
    """``openunmix.model.Separator`` over one ``OpenUnmix`` per target with the mss weights (same Wiener settings)."""
    from tests._reference import import_reference

    umx = import_reference("openunmix.model")
    targets = {}
    for name, sub in net.targets.items():
        targets[name] = umx.OpenUnmix(nb_bins=config["n_fft"] // 2 + 1, nb_channels=config["audio_channels"],
                                      hidden_size=config["hidden_size"], nb_layers=config["nb_layers"],
                                      unidirectional=config["unidirectional"], max_bin=net.max_bin)
        targets[name].load_state_dict(sub.state_dict())
    return umx.Separator(targets, niter=config["wiener_iterations"], residual=config["residual"],
                         n_fft=config["n_fft"], n_hop=config["hop_length"], nb_channels=config["audio_channels"],
                         sample_rate=config["sample_rate"], wiener_win_len=config["wiener_window"])
