"""Sparse attention (mss.models.attention): exactness against dense attention with the same keep-mask, LSH sparsity
calibration, determinism, FlexAttention mask agreement, static patterns for self- and cross-attention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mss.models.attention import (
    FLEX_TILE,
    DenseKeepMask,
    LSHKeepMask,
    PatternKeepMask,
    SparseAttention,
    StaticPattern,
    aligned_key,
    flex_block_mask,
    lsh_keep_mask,
    masked_attention,
    tile_flags,
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


def flex_masks(b=2, h=2, nq=300, nk=200, seed=0):
    """Keep-masks of every kind, at lengths that are not multiples of the 128-token tile."""
    q, k, _ = (t.detach() for t in qkv(b=b, h=h, nq=nq, nk=nk, seed=seed))
    cpu = torch.device("cpu")
    sparse = torch.rand(1, h, nq, nk, generator=torch.Generator().manual_seed(seed)) < 2e-4  # empty tiles and rows
    return {
        "lsh": lsh_keep_mask(q, k, 0.9, generator=torch.Generator().manual_seed(1)),
        "lsh+window": lsh_keep_mask(q, k, 0.8, rounds=20, n_buckets=6, generator=torch.Generator().manual_seed(2),
                                    pattern=StaticPattern(window=2, global_window=3)),
        "window": PatternKeepMask(StaticPattern(window=20), nq, nk, cpu),
        "window+global": PatternKeepMask(StaticPattern(window=200, global_window=5), nq, nk, cpu),  # full tiles
        "explicit": DenseKeepMask(sparse),
    }


def tiles_of(num: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """BlockMask row format -> (B, H, Tq, Tk) bool tiles."""
    listed = torch.arange(indices.shape[-1]) < num[..., None]
    return torch.zeros(indices.shape, dtype=torch.bool).scatter_(-1, indices.long(), listed)


def applied_keep(block_mask, mask) -> torch.Tensor:
    """The keep-mask a block-sparse FlexAttention kernel applies: ``mask_mod`` inside the partial tiles, everything
    inside the full tiles, nothing elsewhere (the eager CPU FlexAttention ignores the tiles, so this is checked
    here)."""
    def expand(tiles):
        tiles = tiles.repeat_interleave(FLEX_TILE, -2).repeat_interleave(FLEX_TILE, -1)
        return tiles[..., :mask.nq, :mask.nk]

    b, h, i, j = (torch.arange(n).reshape([-1 if d == a else 1 for a in range(4)])
                  for d, n in enumerate((*mask.shape, mask.nq, mask.nk)))
    partial = expand(tiles_of(block_mask.kv_num_blocks, block_mask.kv_indices))
    full = expand(tiles_of(block_mask.full_kv_num_blocks, block_mask.full_kv_indices))
    return (partial & block_mask.mask_mod(b, h, i, j)) | full


@pytest.mark.parametrize("nq,nk", [(300, 200), (200, 300), (256, 384)])
@pytest.mark.parametrize("block_elements", [3000, 1 << 21])  # strips of part of a tile / of several tiles
def test_flex_block_mask_is_exact_without_a_dense_build(nq, nk, block_elements):
    from torch.nn.attention.flex_attention import create_block_mask

    for name, mask in flex_masks(nq=nq, nk=nk).items():
        block_mask = flex_block_mask(mask, torch.device("cpu"), block_elements)
        assert block_mask.seq_lengths == (nq, nk)
        assert torch.equal(applied_keep(block_mask, mask), mask.dense()), name
        if isinstance(mask, LSHKeepMask):  # every tile partial; the exact flags show that nothing is lost
            hit, full = tile_flags(mask, FLEX_TILE, block_elements)
            assert hit.all() and not full.any(), name
            continue
        b, h = mask.shape  # the same partial and full tiles as torch's dense construction
        ref = create_block_mask(mask.mask_mod(), b, h, nq, nk, device="cpu")
        for got, want in [((block_mask.kv_num_blocks, block_mask.kv_indices), (ref.kv_num_blocks, ref.kv_indices)),
                          ((block_mask.full_kv_num_blocks, block_mask.full_kv_indices),
                           (ref.full_kv_num_blocks, ref.full_kv_indices))]:
            assert torch.equal(tiles_of(*got), tiles_of(*want)), name
        if name == "window+global":
            assert block_mask.full_kv_num_blocks.sum() > 0  # full tiles exercised (empty ones: window, explicit)


def test_lsh_masks_keep_a_pair_in_every_tile_on_transformer_like_activations():
    q, k = realistic_qk(n=1024)
    hit, full = tile_flags(lsh_keep_mask(q, k, 0.95, generator=torch.Generator().manual_seed(0)))
    assert hit.all() and not full.any()  # so marking every tile partial skips nothing that could be skipped


def test_building_the_block_mask_at_8192_tokens_takes_no_n2_memory():
    """Uncompiled create_block_mask needs B*H*N**2 bools plus int64 intermediates of that size (measured: 3.6 GB at
    B*H = 1); the builder stays far below even the bools alone."""
    pytest.importorskip("scripts._memory")
    from scripts._memory import PeakMemory, trim

    n, cpu = 8192, torch.device("cpu")
    q, k = (torch.randn(1, 2, n, 16, generator=torch.Generator().manual_seed(s)) for s in (0, 1))
    for mask in flex_masks(nq=300, nk=300).values():  # warm-up: lazy initialisation is not the builder's memory
        flex_block_mask(mask, cpu)
    cases = {"lsh": (lambda: lsh_keep_mask(q, k, 0.9, generator=torch.Generator().manual_seed(1)), 2),
             "window+global": (lambda: PatternKeepMask(StaticPattern(window=400, global_window=100), n, n, cpu), 1)}
    for name, (make, bh) in cases.items():
        mask, dense_bools, peaks = make(), bh * n * n, []
        while len(peaks) < 3 and (not peaks or min(peaks) >= dense_bools / 2):  # noise (other threads' arenas,
            trim()                                                            # a loaded machine) only adds
            with PeakMemory(cpu) as mem:
                block_mask = flex_block_mask(mask, cpu, block_elements=1 << 19)
            peaks.append(mem.peak)
        assert min(peaks) < dense_bools / 2, (name, [p / 2**20 for p in peaks])
        assert block_mask.kv_indices.shape[-2:] == (n // FLEX_TILE, n // FLEX_TILE)


@pytest.mark.parametrize("seed", [0, 1])
def test_flex_and_chunked_attention_agree(seed):
    q, k, v = (t.detach() for t in qkv(b=2, h=2, nq=300, nk=200, seed=seed, scale=2.0))
    for name, mask in flex_masks(nq=300, nk=200, seed=seed).items():
        with torch.no_grad():
            flex, _ = masked_attention(q, k, v, mask, backend="flex")
            chunked, _ = masked_attention(q, k, v, mask, backend="chunked", block_elements=5000)
        assert (flex - chunked).abs().max().item() <= 1e-5, (name, (flex - chunked).abs().max().item())


@pytest.mark.slow
def test_compiled_flex_honours_the_block_mask_and_agrees_with_chunked():
    """torch.compile'd FlexAttention (the CUDA path's kernel family; on CPU inductor's C++ template), which skips the
    empty tiles and applies no mask_mod in full ones, gives the chunked output with the built BlockMask; a new LSH
    mask (new codes, as at every training forward) reuses the compiled kernel."""
    import shutil
    import time

    if not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("torch.compile on CPU needs a C++ compiler (g++/c++ not on PATH)")
    from torch.nn.attention.flex_attention import flex_attention

    compiled = torch.compile(flex_attention, dynamic=False)
    seconds = []
    for seed, name in [(0, "lsh+window"), (0, "window+global"), (1, "lsh+window")]:
        q, k, v = (t.detach() for t in qkv(b=2, h=2, nq=300, nk=200, seed=seed, scale=2.0))
        mask = flex_masks(nq=300, nk=200, seed=seed)[name]
        start = time.perf_counter()
        out = compiled(q, k, v, block_mask=flex_block_mask(mask, q.device))
        seconds.append(time.perf_counter() - start)
        chunked, _ = masked_attention(q, k, v, mask, backend="chunked")
        assert (out - chunked).abs().max().item() <= 1e-5, (name, (out - chunked).abs().max().item())
    assert seconds[2] < seconds[0] / 4, seconds  # no recompilation for new codes


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


def randomise(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter (LayerScale, norm gains and every other scale included): at init LayerScale (1e-4)
    shrinks the transformer's share of the output to about a comparison's tolerance."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net


def test_sparse_htdemucs_has_the_dense_parameters_and_equals_it_at_zero_sparsity():
    dense = randomise(tiny_htdemucs()).eval()
    sparse = {s: tiny_htdemucs(**SPARSE_LSH, t_sparsity=s) for s in (0.0, 0.1)}
    assert list(dense.state_dict()) == list(sparse[0.0].state_dict())
    mix = torch.randn(2, 1, 1600, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = dense(mix)
        out = {}
        for s, net in sparse.items():
            net.load_state_dict(dense.state_dict())
            out[s] = net.eval()(mix)
    assert_close(out[0.0], ref)
    # the comparison can fail: removing 10 % of the pairs moves the output 100x past the tolerance (at init: 2e-7)
    assert (out[0.1] - ref).abs().max().item() > 100 * TOL
    attn = [m for m in sparse[0.0].modules() if isinstance(m, SparseAttention)]
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
