"""The cross-domain transformer of HT Demucs alone (:class:`mss.models.transformer.CrossTransformerEncoder`) equals the
reference ``demucs.transformer.CrossTransformerEncoder`` (demucs 4.0.1) at randomised weights.

The weights are mapped as :mod:`mss.pretrained.import_demucs` maps them: the same constructor keywords and the
reference state dict loaded 1:1 (same keys and shapes, strict). Every parameter is randomised
(:func:`tests._reference.randomise_`: LayerScale, norm gains and biases included), so the attention and FFN branches
carry a share of the output far above the tolerance; each case checks that share.
"""

from __future__ import annotations

import pytest
import torch

from mss.models.transformer import CrossTransformerEncoder
from tests._reference import import_reference, randomise_

TOL = 1e-5  # outputs are O(1): every layer ends in a norm; float32 rounding differences measured ~1e-6
CASES = {
    # the HT Demucs layer settings (pre-norm, time layer norm out, LayerScale, GELU, 1-D sin embedding)
    "htdemucs": dict(num_layers=5, norm_first=True, norm_out=True, layer_scale=True),
    "cross_first_scaled_emb": dict(num_layers=4, cross_first=True, emb="scaled", norm_first=True, norm_out=True,
                                   layer_scale=True, weight_pos_embed=0.5),
    "cape_group_norms": dict(num_layers=3, emb="cape", norm_in=False, norm_in_group=1, group_norm=2,
                             norm_first=True, norm_out=True, layer_scale=True, hidden_scale=2.0),
    "post_norm_relu": dict(num_layers=3, norm_first=False, layer_scale=False, gelu=False, max_period=500.0),
}


def _inputs(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(2, dim, 6, 9, generator=gen), torch.randn(2, dim, 40, generator=gen)  # (B,C,F,T1), (B,C,T2)


def _max_abs(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize("case", CASES)
def test_cross_transformer_matches_the_reference_at_random_weights(case):
    transformer = import_reference("demucs.transformer")
    kwargs = dict(dim=32, num_heads=4, max_positions=100, **CASES[case])
    torch.manual_seed(0)
    ref = randomise_(transformer.CrossTransformerEncoder(**kwargs), seed=0).eval()
    ours = CrossTransformerEncoder(**kwargs).eval()
    shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert shapes == {k: v.shape for k, v in ref.state_dict().items()}
    ours.load_state_dict(ref.state_dict())  # strict, as the importer's 1:1 load
    x, xt = _inputs(32)
    with torch.no_grad():
        expected, got = ref(x, xt), ours(x, xt)
        assert [t.shape for t in got] == [t.shape for t in expected] == [x.shape, xt.shape]
        err = _max_abs(got, expected)
        # the attention's share of the output: the reference with every attention output projection zeroed
        for layer in list(ref.layers) + list(ref.layers_t):
            attn = getattr(layer, "self_attn", None) or layer.cross_attn
            attn.out_proj.weight.zero_()
            attn.out_proj.bias.zero_()
        share = _max_abs(ref(x, xt), expected)
    print(f"{case}: max-abs error {err:.2e}, attention's share {share:.3g} (tolerance {TOL:g})")
    assert err <= TOL
    assert share > 1e4 * TOL
