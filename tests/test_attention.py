"""Sparse attention (mss.models.attention): exactness against dense attention with the same keep-mask, LSH sparsity
calibration, determinism, FlexAttention mask agreement, static patterns for self- and cross-attention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mss.models.attention import (
    LSHKeepMask,
    PatternKeepMask,
    SparseAttention,
    StaticPattern,
    aligned_key,
    lsh_keep_mask,
    masked_attention,
)

TOL = 1e-5


pytestmark = pytest.mark.usefixtures("single_thread")  # small tensors: one thread is fastest


def qkv(b=2, h=3, nq=40, nk=40, d=16, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, h, n, d, generator=g, dtype=torch.float64).float() * scale).requires_grad_()
            for n in (nq, nk, nk)]


def reference(q, k, v, keep):
    """Dense masked attention; rows that keep nothing give zeros."""
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~keep, -math.inf)
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return p @ v


def grads(out, inputs, seed=1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad(out, inputs, g)


def assert_close(a, b, tol=TOL):
    assert (a - b).abs().max().item() <= tol, (a - b).abs().max().item()


@pytest.mark.parametrize("backend", ["chunked", "sdpa"])
def test_zero_sparsity_equals_dense_sdpa_forward_and_gradients(backend):
    q, k, v = qkv()
    attn = SparseAttention(sparsity=0.0, backend=backend, block_elements=600)  # several query blocks
    out = attn(q, k, v)
    ref = F.scaled_dot_product_attention(q, k, v)
    assert_close(out, ref)
    for a, b in zip(grads(out, (q, k, v)), grads(ref, (q, k, v))):
        assert_close(a, b)
    assert attn.last_sparsity.item() == 0.0


def adversarial_masks(b, h, nq, nk):
    g = torch.Generator().manual_seed(3)
    random = torch.rand(b, h, nq, nk, generator=g) < 0.3
    few = torch.zeros(b, h, nq, nk, dtype=torch.bool)
    few[..., torch.arange(nq), torch.randint(0, nk, (nq,), generator=g)] = True  # one key per row
    holes = random.clone()
    holes[:, :, ::3] = False  # fully masked rows
    holes[0, 1] = False  # a fully masked head
    return {"random": random, "one_key_per_row": few, "empty_rows": holes}


@pytest.mark.parametrize("backend", ["chunked", "sdpa"])
@pytest.mark.parametrize("scale", [1.0, 30.0])  # 30: saturated softmax, large logits
def test_given_keep_mask_equals_dense_masked_attention(backend, scale):
    q, k, v = qkv(nq=33, nk=47, scale=scale)
    for name, keep in adversarial_masks(2, 3, 33, 47).items():
        out, sparsity = masked_attention(q, k, v, keep, backend=backend, block_elements=700)
        ref = reference(q, k, v, keep)
        assert_close(out, ref, TOL * scale)
        assert abs(sparsity.item() - (1 - keep.double().mean().item())) < 1e-9, name
        for a, b in zip(grads(out, (q, k, v)), grads(ref, (q, k, v))):
            assert torch.isfinite(a).all(), name
            assert_close(a, b, TOL * scale**2)


def realistic_qk(n=1024, dim=64, heads=4, seed=0):
    """Transformer-like activations: sinusoidal positions plus a smooth random signal, layer-normed, projected."""
    g = torch.Generator().manual_seed(seed)
    freqs = 10000.0 ** -(torch.arange(dim * heads // 2) / (dim * heads // 2))
    phase = torch.arange(n)[:, None] * freqs
    pos = torch.cat([phase.cos(), phase.sin()], -1)  # (n, C)
    signal = torch.randn(1, dim * heads, n // 16, generator=g)
    signal = F.interpolate(signal, size=n, mode="linear", align_corners=False)[0].T
    x = F.layer_norm(pos + signal + 0.3 * torch.randn(n, dim * heads, generator=g), (dim * heads,))
    wq, wk = (torch.randn(dim * heads, dim * heads, generator=g) / math.sqrt(dim * heads) for _ in range(2))
    split = lambda t: t.reshape(1, n, heads, dim).transpose(1, 2)  # noqa: E731
    return split(x @ wq), split(x @ wk)


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.95])
def test_achieved_sparsity_hits_the_target_per_head(sparsity):
    q, k = realistic_qk()
    mask = lsh_keep_mask(q, k, sparsity, generator=torch.Generator().manual_seed(0))
    achieved = 1 - mask.dense().float().mean((-1, -2))  # (B, H)
    assert (achieved - sparsity).abs().max().item() < 0.02, achieved
    # the threshold's count part is the paper's k; with 32 rounds it lies strictly inside [1, 32]
    counts = mask.threshold >> 15
    assert ((counts >= 1) & (counts <= 32)).all()


def test_lsh_mask_keeps_the_pairs_with_the_most_matches():
    q, k = realistic_qk(n=256, heads=2)
    mask = lsh_keep_mask(q, k, 0.9, generator=torch.Generator().manual_seed(0))
    counts = (mask.bq[:, :, :, None, :] == mask.bk[:, :, None, :, :]).sum(-1)
    keep = mask.dense()
    diag = torch.zeros_like(keep)
    diag[..., torch.arange(256), torch.arange(256)] = True
    k_paper = (mask.threshold >> 15)[:, :, None, None]
    assert (keep[counts > k_paper]).all()  # every pair above k is kept
    assert not (keep & ~diag)[counts < k_paper].any()  # no pair below k except the diagonal
    assert keep[..., torch.arange(256), torch.arange(256)].all()


@pytest.mark.parametrize("sparsity", [0.0, 0.9])
def test_lsh_chunked_matches_sdpa_with_the_same_mask_and_gradients(sparsity):
    q, k, v = qkv(nq=64, nk=64)
    attn = {b: SparseAttention(sparsity=sparsity, backend=b, block_elements=2000) for b in ("chunked", "sdpa")}
    outs = {b: a(q, k, v) for b, a in attn.items()}
    assert_close(outs["chunked"], outs["sdpa"])
    for a, b in zip(grads(outs["chunked"], (q, k, v)), grads(outs["sdpa"], (q, k, v))):
        assert_close(a, b)
    assert abs(attn["chunked"].last_sparsity.item() - attn["sdpa"].last_sparsity.item()) < 1e-9


def test_flex_mask_mod_equals_the_chunked_mask_and_flex_forward_runs_on_cpu():
    q, k, v = (t.detach() for t in qkv(b=1, h=2, nq=128, nk=96))
    mask = lsh_keep_mask(q, k, 0.8, rounds=20, n_buckets=6, generator=torch.Generator().manual_seed(1),
                         pattern=StaticPattern(window=2, global_window=3))
    assert isinstance(mask, LSHKeepMask)
    b, h, i, j = (torch.arange(n).reshape([-1 if d == a else 1 for a in range(4)])
                  for d, n in enumerate((1, 2, 128, 96)))
    assert torch.equal(mask.mask_mod()(b, h, i, j), mask.dense())
    with torch.no_grad():
        out, _ = masked_attention(q, k, v, mask, backend="flex")
    assert_close(out, reference(q, k, v, mask.dense()))
    q.requires_grad_()
    with pytest.raises(RuntimeError, match="chunked"):
        masked_attention(q, k, v, mask, backend="flex")


def test_static_patterns_for_self_and_cross_attention():
    nq, nk = 20, 50
    pattern = StaticPattern(window=3, global_window=2, random_keep=0.1, seed=5)
    keep = PatternKeepMask(pattern, nq, nk, torch.device("cpu")).dense()[0, 0]
    i, j = torch.arange(nq)[:, None], torch.arange(nk)[None]
    window = (j - ((2 * i + 1) * nk) // (2 * nq)).abs() <= 3
    assert (keep | ~window).all() and (keep[:2].all() and keep[:, :2].all())
    extra = keep & ~window
    extra[:2] = False
    extra[:, :2] = False
    assert 0.04 < extra.float().mean() < 0.16  # the random part, ~10 % of the remaining pairs
    assert torch.equal(aligned_key(torch.arange(7), 7, 7), torch.arange(7))
    q, k, v = qkv(b=1, h=2, nq=nq, nk=nk)
    attn = SparseAttention(lsh=False, window=3, global_window=2, random_keep=0.1, seed=5, backend="chunked")
    assert_close(attn(q, k, v), reference(q, k, v, keep))
    assert abs(attn.last_sparsity.item() - (1 - keep.double().mean().item())) < 1e-9


def test_lsh_is_deterministic_fixed_in_eval_and_resampled_in_training():
    q, k, v = (t.detach() for t in qkv(nq=64, nk=64))
    a, b = SparseAttention(sparsity=0.9, seed=3), SparseAttention(sparsity=0.9, seed=3)
    a.eval()
    assert torch.equal(a(q, k, v), a(q, k, v))
    a.train()
    b.train()
    first, second = a(q, k, v), a(q, k, v)
    assert not torch.equal(first, second)  # new projections at each training forward
    assert torch.equal(b(q, k, v), first) and torch.equal(b(q, k, v), second)  # same seeded sequence
    c = SparseAttention(sparsity=0.9, seed=3, resample=False).train()
    assert torch.equal(c(q, k, v), c(q, k, v))


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="t_attn_backend"):
        SparseAttention(backend="cuda-magic")
    with pytest.raises(ValueError, match="static pattern"):
        SparseAttention(lsh=False)
    q, k, v = (t.detach() for t in qkv(nq=8, nk=8))
    with pytest.raises(ValueError, match="sparsity"):
        lsh_keep_mask(q, k, 1.0)
    with pytest.raises(ValueError, match="n_buckets"):
        lsh_keep_mask(q, k, 0.5, n_buckets=3)
    try:
        import xformers  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="xformers"):
            masked_attention(q, k, v, torch.ones(1, 1, 8, 8, dtype=torch.bool), backend="xformers")


@pytest.mark.parametrize("nq,nk,global_window", [(64, 64, 0), (48, 80, 3), (80, 48, 5)])
def test_window_kernel_skips_far_keys_and_stays_exact(nq, nk, global_window):
    q, k, v = qkv(b=1, h=2, nq=nq, nk=nk)
    attn = SparseAttention(lsh=False, window=4, global_window=global_window, backend="chunked", block_elements=300)
    mask = attn.keep_mask(q, k)
    assert mask.columns(nq - 8, nq) is not None  # the kernel really restricts the keys of late blocks
    keep = mask.dense()
    out = attn(q, k, v)
    ref = reference(q, k, v, keep)
    assert_close(out, ref)
    for a, b in zip(grads(out, (q, k, v)), grads(ref, (q, k, v))):
        assert_close(a, b)


# ---------------------------------------------------------------------------------------------------------------
# HT Demucs integration
# ---------------------------------------------------------------------------------------------------------------
def tiny_htdemucs(**sparse):
    from mss.models.htdemucs import HTDemucs

    torch.manual_seed(0)
    return HTDemucs(["drums", "bass"], audio_channels=1, channels=8, nfft=512, depth=2, dconv_comp=4, t_layers=2,
                    segment=0.2, samplerate=8000, **sparse)


SPARSE_LSH = dict(t_sparse_self_attn=True, t_sparse_cross_attn=True, t_auto_sparsity=True, t_attn_backend="chunked")


def test_sparse_htdemucs_has_the_dense_parameters_and_equals_it_at_zero_sparsity():
    dense, sparse = tiny_htdemucs(), tiny_htdemucs(**SPARSE_LSH, t_sparsity=0.0)
    assert list(dense.state_dict()) == list(sparse.state_dict())
    sparse.load_state_dict(dense.state_dict())
    dense.eval()
    sparse.eval()
    mix = torch.randn(2, 1, 1600, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close(sparse(mix), dense(mix), 1e-4)
    attn = [m for m in sparse.modules() if isinstance(m, SparseAttention)]
    assert len(attn) == 4 and len({m.seed for m in attn}) == 4  # 2 layers x 2 streams, each its own hashes


@pytest.mark.parametrize("sparse", [dict(SPARSE_LSH, t_sparsity=0.9),
                                    dict(t_sparse_self_attn=True, t_sparse_cross_attn=True, t_mask_type="diag_global",
                                         t_sparse_attn_window=2, t_global_window=1, t_attn_backend="chunked")])
def test_sparse_htdemucs_trains_on_a_synthetic_batch(sparse):
    net = tiny_htdemucs(**sparse)
    net.train()
    gen = torch.Generator().manual_seed(1)
    t = torch.arange(1600) / 8000
    stems = torch.stack([torch.sin(2 * math.pi * 110 * t), torch.sign(torch.sin(2 * math.pi * 3 * t))])
    stems = (stems[None, :, None] * torch.rand(2, 2, 1, 1, generator=gen)).contiguous()  # (B, S, C, T)
    mix = stems.sum(1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        loss = (net(mix) - stems).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses
    layer = next(m for m in net.modules() if isinstance(m, SparseAttention))
    if layer.lsh:
        assert abs(layer.last_sparsity.item() - 0.9) < 0.05
