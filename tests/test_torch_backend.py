"""The torch backend against independent brute-force computations (float64
loops written here) and, for quantization, bit-exact against the reference.

Tolerances, as a fraction of the reference's peak |value|:
* fp32 inputs/outputs: 2e-5. Every op accumulates in fp32 over at most a few
  thousand terms of similar magnitude, so the error is a few hundred fp32 ulps
  of the peak at worst (2^-23 * 300 ~ 4e-5 would be loose; observed ~1e-6).
* bf16 outputs: 2^-7. The output cast alone costs up to 2^-9 relative per
  element; inputs are the same bf16 values for both sides, so the rest is fp32
  rounding.
"""
from __future__ import annotations

import math

import pytest
import torch

import dsport
from dsport.backends.torch import moe as tmoe
from dsport.backends.torch.indexer import indexer_topk
from dsport.core.errors import ValidationError
from dsport.core.spec import get_spec

tb = dsport.resolve("torch")
ref = dsport.resolve("reference")
TOL = {torch.float32: 2e-5, torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -9}


def close(out: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    assert out.shape == want.shape, (out.shape, want.shape)
    out, want = out.double(), want.double()
    fin = torch.isfinite(want)
    assert torch.equal(fin, torch.isfinite(out)), "finite pattern differs"
    torch.testing.assert_close(out[~fin], want[~fin], rtol=0, atol=0, equal_nan=True)  # NaN matches NaN, inf its sign
    if fin.any():
        peak = want[fin].abs().max().clamp_min(1e-30)
        err = (out[fin] - want[fin]).abs().max() / peak
        assert err <= TOL[dtype], f"peak-relative error {err:.3g} > {TOL[dtype]:.3g}"


def g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- quantization: bit-exact with the quant-mimicking reference ---------------------------------------------

@pytest.mark.parametrize("op", ["act_quant", "dequant", "weight_dequant"])
def test_quant_bit_exact_on_spec_cases(op):
    cases = get_spec(op).cases()
    assert cases
    for case in cases:
        args = case.inputs()
        got, want = getattr(tb, op)(**args), getattr(ref, op)(**args)
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and a.shape == b.shape, case.id
            # bit patterns, so NaN scales of non-finite groups compare too (both come from core.fp8)
            assert torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)), case.id


def test_fp8_gemm_within_one_bf16_rounding_of_reference():
    for case in get_spec("fp8_gemm").cases():
        args = case.inputs()
        got, want = tb.fp8_gemm(**args), ref.fp8_gemm(**args)
        assert got.dtype == torch.bfloat16
        close(got, want, torch.bfloat16)


# -- norms, rotary -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_with_and_without_residual(dtype):
    x, r, w = (torch.randn(5, 3, 64, generator=g(1)) * 3).to(dtype), torch.randn(5, 3, 64, generator=g(2)).to(dtype), torch.rand(64, generator=g(3)).to(dtype)
    h = x.double() + r.double()
    want = h / torch.sqrt((h * h).mean(-1, keepdim=True) + 1e-6) * w.double()
    y, res = tb.rms_norm(x, w, residual=r)
    close(y, want, dtype)
    assert res.dtype == dtype and torch.equal(res, (x.float() + r.float()).to(dtype))
    want0 = x.double() / torch.sqrt((x.double() ** 2).mean(-1, keepdim=True) + 1e-6) * w.double()
    close(tb.rms_norm(x, w), want0, dtype)


def test_layer_norm_matches_formula():
    x, w, b = torch.randn(7, 128, generator=g(4)) * 2 + 1, torch.randn(128, generator=g(5)), torch.randn(128, generator=g(6))
    xd = x.double()
    want = (xd - xd.mean(-1, keepdim=True)) / torch.sqrt(xd.var(-1, unbiased=False, keepdim=True) + 1e-6) * w.double() + b.double()
    close(tb.layer_norm(x, w, b), want, torch.float32)


def test_yarn_table_by_hand():
    f = tb.yarn_freqs()
    base = [10000.0 ** (-2 * i / 64) for i in range(32)]
    # SPEC: low = 10, high = 23; i <= 10 keeps f_i, i >= 23 is f_i / 40, linear ramp between
    for i in range(32):
        ramp = min(max((i - 10) / 13, 0.0), 1.0)
        assert f[i].item() == pytest.approx(base[i] / 40 * ramp + base[i] * (1 - ramp), rel=1e-6)
    assert f[10].item() == pytest.approx(base[10], rel=1e-6) and f[23].item() == pytest.approx(base[23] / 40, rel=1e-6)


@pytest.mark.parametrize("interleaved", [True, False])
def test_rope_pairings_against_loop(interleaved):
    t, h, d = 4, 2, 8
    x, pos, fr = torch.randn(t, h, d, generator=g(7)), torch.tensor([0, 5, 4095, 70000]), torch.rand(d // 2, generator=g(8))
    want = torch.empty(t, h, d, dtype=torch.float64)
    for ti in range(t):
        for i in range(d // 2):
            a, b = (2 * i, 2 * i + 1) if interleaved else (i, i + d // 2)
            ang = pos[ti].item() * fr[i].double().item()
            c, s = math.cos(ang), math.sin(ang)
            want[ti, :, a] = x[ti, :, a].double() * c - x[ti, :, b].double() * s
            want[ti, :, b] = x[ti, :, a].double() * s + x[ti, :, b].double() * c
    got = tb.rope(x, pos, fr, interleaved=interleaved)
    close(got, want, torch.float32)
    # the other pairing must not pass: a backend mixing them is caught
    other = tb.rope(x, pos, fr, interleaved=not interleaved)
    assert (other.double() - want).abs().max() > 0.1


def test_hadamard_is_the_sylvester_matrix():
    h = torch.tensor([[1.0]], dtype=torch.float64)
    for _ in range(7):
        h = torch.kron(torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64), h)
    x = torch.randn(3, 5, 128, generator=g(9))
    close(tb.hadamard(x), x.double() @ h / math.sqrt(128), torch.float32)
    y = tb.hadamard(x)
    assert torch.allclose((y * y).sum(-1), (x * x).sum(-1), rtol=1e-5)


# -- indexer and top-k ---------------------------------------------------------------------------------------

def brute_logits(q, k, w, ks, ke, k_scale=None):
    t, h, _ = q.shape
    s = k.shape[0]
    out = torch.full((t, s), float("-inf"), dtype=torch.float64)
    for ti in range(t):
        for si in range(int(ks[ti]), int(ke[ti])):
            acc = sum(w[ti, hi].double() * torch.relu(q[ti, hi].double() @ k[si].double()) for hi in range(h))
            out[ti, si] = acc * (1.0 if k_scale is None else k_scale[si].double())
    return out


def test_indexer_logits_causal_float(budget):
    t, s, h, d = 6, 9, 3, 16
    q, k, w = torch.randn(t, h, d, generator=g(10)), torch.randn(s, d, generator=g(11)), torch.rand(t, h, generator=g(12))
    ks = torch.tensor([0, 0, 1, 2, 0, 3], dtype=torch.int32)
    ke = torch.arange(s - t + 1, s + 1, dtype=torch.int32)
    close(tb.indexer_logits(q, k, w, ks, ke), brute_logits(q, k, w, ks, ke), torch.float32)


@pytest.mark.parametrize("fmt", ["e4m3fn", "e4m3fnuz"])
def test_indexer_logits_fp8_with_key_scales(fmt, budget):
    dt = torch.float8_e4m3fn if fmt == "e4m3fn" else torch.float8_e4m3fnuz
    t, s, h, d = 4, 7, 2, 128
    q = (torch.randn(t, h, d, generator=g(13)) * 20).to(dt)
    k = (torch.randn(s, d, generator=g(14)) * 20).to(dt)
    w, sc = torch.rand(t, h, generator=g(15)), torch.rand(s, generator=g(16)) + 0.5
    ks, ke = torch.zeros(t, dtype=torch.int32), torch.tensor([7, 3, 0, 5], dtype=torch.int32)
    close(tb.indexer_logits(q, k, w, ks, ke, k_scale=sc), brute_logits(q.float(), k.float(), w, ks, ke, sc), torch.float32)


def values_multiset(logits, idx):
    rows = []
    for r in range(idx.shape[0]):
        sel = idx[r][idx[r] >= 0].long()
        rows.append(sorted(logits[r, sel].tolist()))
    return rows


def brute_topk_values(logits, k, ks, ke):
    return [sorted(sorted(logits[r, int(ks[r]):int(ke[r])].tolist(), reverse=True)[:k]) for r in range(logits.shape[0])]


def test_topk_select_windows_padding_and_ties(budget):
    lg = torch.randn(5, 40, generator=g(17))
    lg[2, 10:20] = 3.0  # ties straddling the boundary: any tied choice is valid
    ks = torch.tensor([0, 5, 0, 30, 0], dtype=torch.int32)
    ke = torch.tensor([40, 9, 40, 30, 1], dtype=torch.int32)
    idx = tb.topk_select(lg, 8, ks, ke)
    assert idx.dtype == torch.int32 and idx.shape == (5, 8)
    assert values_multiset(lg, idx) == brute_topk_values(lg, 8, ks, ke)
    assert (idx[1] >= 0).sum() == 4 and (idx[3] == -1).all() and (idx[4] >= 0).sum() == 1
    for r in range(5):
        v = idx[r][idx[r] >= 0]
        assert ((v >= ks[r]) & (v < ke[r])).all() and v.unique().numel() == v.numel()
    whole = tb.topk_select(lg, 50)  # k > S: pad with -1
    assert (whole[:, 40:] == -1).all() and (whole[:, :40].sort(-1).values == torch.arange(40)).all()


def test_causal_indexer_logits_and_topk_across_row_blocks_and_key_tiles(budget):
    """Causal rows after a prefix: with one-row budgets the rows split into blocks and the keys into
    one-column tiles, so tiles inside every row's window (unmasked) and straddling tiles both occur."""
    t, s, h, d, k = 40, 70, 3, 16, 9
    q, kk, w = torch.randn(t, h, d, generator=g(61)), torch.randn(s, d, generator=g(62)), torch.randn(t, h, generator=g(63))
    ks = torch.zeros(t, dtype=torch.int32)
    ks[25:] = 12                                                 # a sliding start for the later rows
    ke = torch.arange(s - t + 1, s + 1, dtype=torch.int32)
    want = brute_logits(q, kk, w, ks, ke)
    got = tb.indexer_logits(q, kk, w, ks, ke)
    close(got, want, torch.float32)
    lg = want.float()
    lg[5, 3:14] = lg[5, :36].max() + 1                          # 11 tied at the top, 9 taken: a tie straddling the k-th place
    idx = tb.topk_select(lg, k, ks, ke)
    assert values_multiset(lg, idx) == brute_topk_values(lg, k, ks, ke)
    assert sorted(idx[5].tolist()) == list(range(3, 12))        # the lowest tied positions win, on every path


def test_blocked_indexer_topk_equals_logits_then_topk():
    t, s, h, d, k = 37, 50, 4, 32, 6
    q, kk, w = torch.randn(t, h, d, generator=g(18)), torch.randn(s, d, generator=g(19)), torch.rand(t, h, generator=g(20))
    ks = torch.zeros(t, dtype=torch.int32)
    ke = torch.arange(s - t + 1, s + 1, dtype=torch.int32)
    full = brute_logits(q, kk, w, ks, ke)
    for block in (1, 5, 64):
        idx = indexer_topk(q, kk, w, ks, ke, k, block=block)
        got = values_multiset(full, idx)
        want = brute_topk_values(full, k, ks, ke)
        assert all(a == pytest.approx(b, rel=1e-9) for a, b in zip(got, want))


@pytest.fixture(params=["default", "one-row-blocks"])
def budget(request, monkeypatch):
    """Run a test with the default working set and with one query/sequence per block (block edges exercised)."""
    if request.param == "one-row-blocks":
        from dsport.backends.torch import policy
        monkeypatch.setitem(policy.WORKSET_BYTES, "cpu", 1)
    return request.param


@pytest.mark.parametrize("fmt", ["e4m3fn", "e4m3fnuz"])
@pytest.mark.parametrize("bs", [1, 64])
def test_index_cache_layout_and_paged_logits(fmt, bs, budget):
    nb = 6 if bs == 64 else 200
    keys = torch.randn(nb, bs, 128, generator=g(21)) * 3
    cache = tb.index_cache_pack(keys, fmt)
    assert cache.shape == (nb, bs, 132) and cache.dtype == torch.uint8
    k8, sc = tb.index_cache_unpack(cache, fmt)
    y, s = ref.act_quant(keys.reshape(-1, 128), fmt=fmt, scale_fmt="ue8m0")  # one ue8m0 group per token
    assert torch.equal(k8.reshape(-1, 128).view(torch.uint8), y.view(torch.uint8)) and torch.equal(sc.reshape(-1), s.reshape(-1))
    # layout: per block, BS x 128 key bytes first, then BS fp32 scales
    blk = cache[1].reshape(-1)
    assert torch.equal(blk[:bs * 128], y[bs:2 * bs].reshape(-1).view(torch.uint8))
    assert torch.equal(blk[bs * 128:].view(torch.float32), s[bs:2 * bs, 0])
    # paged logits read through a shuffled block table equal the flat logits over the same keys
    b, h, mb = 2, 4, 3 if bs == 64 else 100
    q = (torch.randn(b, h, 128, generator=g(22)) * 10).to(k8.dtype)
    w = torch.rand(b, h, generator=g(23))
    table = torch.randperm(nb, generator=g(24))[: b * mb].reshape(b, mb).to(torch.int32)
    seqlens = torch.tensor([mb * bs, mb * bs // 2 + 1], dtype=torch.int32)
    got = tb.indexer_logits_paged(q, cache, w, table, seqlens)
    for bi in range(b):
        kk = k8[table[bi].long()].reshape(-1, 128)
        kscale = sc[table[bi].long()].reshape(-1)
        n = int(seqlens[bi])
        want = brute_logits(q[bi:bi + 1].float(), kk.float(), w[bi:bi + 1], torch.tensor([0]), torch.tensor([n]), kscale)
        close(got[bi:bi + 1], want, torch.float32)


# -- attention -----------------------------------------------------------------------------------------------

def brute_sparse(q, rows, idx, scale, dv):
    """q [T, H, D], rows [S, D], idx [T, k] -> out, lse, max in float64 (duplicates count twice)."""
    t, h, _ = q.shape
    out = torch.zeros(t, h, dv, dtype=torch.float64)
    lse = torch.full((t, h), float("-inf"), dtype=torch.float64)
    mx = torch.full((t, h), float("-inf"), dtype=torch.float64)
    for ti in range(t):
        sel = [int(i) for i in idx[ti] if 0 <= int(i) < rows.shape[0]]
        if not sel:
            continue
        kv = rows[sel].double()
        for hi in range(h):
            sc = (kv @ q[ti, hi].double()) * scale
            p = torch.softmax(sc, 0)
            out[ti, hi] = p @ kv[:, :dv]
            lse[ti, hi] = torch.logsumexp(sc, 0)
            mx[ti, hi] = sc.max()
    return out, lse, mx


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sparse_mla_prefill_edges(dtype):
    t, s, h, d, dv, k = 6, 20, 4, 72, 64, 8
    q, kv = torch.randn(t, h, d, generator=g(25)).to(dtype), torch.randn(s, 1, d, generator=g(26)).to(dtype)
    idx = torch.randint(0, s, (t, 1, k), generator=g(27), dtype=torch.int32)
    idx[1, 0, :] = -1                      # no valid index: out 0, lse -inf
    idx[2, 0, 3:] = -1                     # partly invalid
    idx[3, 0, :] = 5                       # duplicates count each time
    scale = d ** -0.5
    out, lse, mx = tb.sparse_mla_prefill(q, kv, idx, scale, dv)
    assert out.dtype == dtype and lse.dtype == torch.float32 and mx.dtype == torch.float32
    wo, wl, wm = brute_sparse(q, kv[:, 0], idx[:, 0], scale, dv)
    close(out, wo, dtype)
    close(lse, wl, torch.float32)
    close(mx, wm, torch.float32)
    assert (out[1] == 0).all() and torch.isneginf(lse[1]).all() and not torch.isnan(lse).any()
    e = tb.sparse_mla_prefill(q[:0], kv, idx[:0], scale, dv)
    assert e[0].shape == (0, h, dv)


def test_sparse_prefill_counts_duplicates_and_skips_unnamed_nan():
    t, s, h, d, dv, k = 7, 24, 4, 40, 32, 6
    q, kv = torch.randn(t, h, d, generator=g(60)), torch.randn(s, 1, d, generator=g(61))
    idx = torch.randint(0, s - 1, (t, 1, k), generator=g(62), dtype=torch.int32)
    idx[0, 0, 2:] = -1
    idx[4, 0, :] = 3                                                # duplicates count each time
    want = brute_sparse(q, kv[:, 0], idx[:, 0], 0.1, dv)
    for a, b in zip(tb.sparse_mla_prefill(q, kv, idx, 0.1, dv), want):
        close(a, b, torch.float32)
    named = set(idx[idx >= 0].tolist())
    unnamed = next(r for r in range(s) if r not in named)
    assert unnamed < max(named)                                     # a row between named ones
    kv[unnamed] = float("nan")                                      # SPEC §10: as if it were absent
    for a, b in zip(tb.sparse_mla_prefill(q, kv, idx, 0.1, dv), want):
        close(a, b, torch.float32)


def test_sparse_prefill_non_contiguous_and_block_boundaries(monkeypatch):
    from dsport.backends.torch import policy
    t, s, h, d, k = 9, 30, 2, 64, 5
    q = torch.randn(h, t, d, generator=g(28)).transpose(0, 1)   # non-contiguous
    kv = torch.randn(s, 1, d, generator=g(29))
    idx = torch.randint(-1, s, (t, 1, k), generator=g(30), dtype=torch.int32)
    want = brute_sparse(q, kv[:, 0], idx[:, 0], 0.1, 32)
    monkeypatch.setitem(policy.WORKSET_BYTES, "cpu", 1)             # one query per block
    for a, b in zip(tb.sparse_mla_prefill(q, kv, idx, 0.1, 32), want):
        close(a, b, torch.float32)


@pytest.mark.parametrize("bs", [1, 64])
@pytest.mark.parametrize("fmt", ["e4m3fn", "e4m3fnuz", None])
def test_sparse_mla_decode_paged(bs, fmt, budget):
    b, sq, h, k = 2, 2, 4, 16
    nb = 3 if bs == 64 else 150
    lat = torch.randn(nb * bs, 576, generator=g(31)).to(torch.bfloat16)
    q = torch.randn(b, sq, h, 576, generator=g(32)).to(torch.bfloat16)
    idx = torch.randint(0, nb * bs, (b, sq, k), generator=g(33), dtype=torch.int32)
    idx[1, 1, ::2] = -1
    if fmt is None:
        cache, rows = lat.reshape(nb, bs, 1, 576), lat
        out, lse = tb.sparse_mla_decode(q, cache, idx, 0.07, 512)
    else:
        packed = tb.mla_cache_pack(lat, fmt)
        cache = packed.reshape(nb, bs, 1, 656)
        rows = ref.dequant(*ref.act_quant(lat[:, :512], fmt=fmt, scale_fmt="ue8m0"))  # independent unpack
        rows = torch.cat((rows, lat[:, 512:].float()), 1)
        out, lse = tb.sparse_mla_decode(q, cache, idx, 0.07, 512, fmt)
    assert out.shape == (b, sq, h, 512) and lse.shape == (b, h, sq)
    wo, wl, _ = brute_sparse(q.reshape(b * sq, h, 576), rows, idx.reshape(b * sq, k), 0.07, 512)
    close(out.reshape(b * sq, h, 512), wo, torch.bfloat16)
    close(lse.transpose(1, 2).reshape(b * sq, h), wl, torch.float32)


def test_mla_cache_layout_bytes():
    kv = torch.randn(3, 576, generator=g(34)) * 5
    c = tb.mla_cache_pack(kv)
    assert c.shape == (3, 656) and c.dtype == torch.uint8
    y, s = ref.act_quant(kv[:, :512], fmt="e4m3fn", scale_fmt="ue8m0")
    assert torch.equal(c[:, :512], y.view(torch.uint8))
    assert torch.equal(c[:, 512:528].contiguous().view(torch.float32), s)
    assert torch.equal(c[:, 528:].contiguous().view(torch.bfloat16), kv[:, 512:].bfloat16())
    back = tb.mla_cache_unpack(c)
    assert torch.equal(back[:, :512], ref.dequant(y, s)) and torch.equal(back[:, 512:], kv[:, 512:].bfloat16().float())


def brute_dense(q, k, v, scale, limits):
    """Query row i attends keys [0, limits[i]) of its own head."""
    t, h, _ = q.shape
    out = torch.zeros(t, h, v.shape[-1], dtype=torch.float64)
    lse = torch.full((t, h), float("-inf"), dtype=torch.float64)
    for ti in range(t):
        n = int(limits[ti])
        for hi in range(h):
            if n == 0:
                continue
            sc = k[:n, hi].double() @ q[ti, hi].double() * scale
            out[ti, hi] = torch.softmax(sc, 0) @ v[:n, hi].double()
            lse[ti, hi] = torch.logsumexp(sc, 0)
    return out, lse


@pytest.mark.parametrize("t, s", [(5, 5), (3, 11), (1, 4)])
def test_mla_prefill_dense_causal_with_prefix(t, s, budget):
    h = 3
    q, k, v = torch.randn(t, h, 24, generator=g(35)), torch.randn(s, h, 24, generator=g(36)), torch.randn(s, h, 16, generator=g(37))
    out, lse = tb.mla_prefill_dense(q, k, v, 0.2)
    wo, wl = brute_dense(q, k, v, 0.2, [s - t + i + 1 for i in range(t)])
    close(out, wo, torch.float32)
    close(lse, wl, torch.float32)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("bs", [1, 64])
def test_mla_decode_dense_paged(causal, bs, budget):
    b, sq, h, d, dv = 2, 2, 3, 40, 32
    nb, mb = (5, 2) if bs == 64 else (300, 100)
    cache = torch.randn(nb, bs, 1, d, generator=g(38))
    table = torch.randperm(nb, generator=g(39))[: b * mb].reshape(b, mb).to(torch.int32)
    seqlens = torch.tensor([mb * bs, mb * bs // 2 + 3], dtype=torch.int32)
    q = torch.randn(b, sq, h, d, generator=g(40))
    out, lse = tb.mla_decode_dense(q, cache, table, seqlens, 0.15, dv, causal)
    for bi in range(b):
        rows = cache[table[bi].long()].reshape(-1, d)
        lim = [int(seqlens[bi]) - (sq - 1 - i if causal else 0) for i in range(sq)]
        kk = rows[:, None, :].expand(-1, h, d)
        wo, wl = brute_dense(q[bi], kk, kk[..., :dv], 0.15, lim)
        close(out[bi], wo, torch.float32)
        close(lse[bi].t(), wl, torch.float32)


# -- MoE -----------------------------------------------------------------------------------------------------

def test_moe_gate_against_loop():
    t, e, dim, ng, tg, kk = 6, 16, 32, 4, 2, 3
    x, w, bias = torch.randn(t, dim, generator=g(41)), torch.randn(e, dim, generator=g(42)), torch.randn(e, generator=g(43)) * 0.5
    wts, ids = tb.moe_gate(x, w, bias, n_group=ng, topk_group=tg, topk=kk, route_scale=2.5)
    for ti in range(t):
        s = torch.sigmoid(x[ti].double() @ w.double().t())
        b = s + bias.double()
        groups = [sorted(b[gi * 4:(gi + 1) * 4].tolist(), reverse=True)[:2] for gi in range(ng)]
        best = sorted(range(ng), key=lambda gi: -sum(groups[gi]))[:tg]
        cand = [ei for ei in range(e) if ei // 4 in best]
        chosen = sorted(cand, key=lambda ei: -b[ei].item())[:kk]
        assert sorted(ids[ti].tolist()) == sorted(chosen)
        want = {ei: s[ei].item() / sum(s[c].item() for c in chosen) * 2.5 for ei in chosen}
        for j in range(kk):
            assert wts[ti, j].item() == pytest.approx(want[int(ids[ti, j])], rel=1e-5)


def brute_experts(x, ids, wts, w1, w3, w2):
    y = torch.zeros(x.shape, dtype=torch.float64)
    for ti in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[ti, j])
            if e < 0:
                continue
            xd = x[ti].double()
            h = torch.nn.functional.silu(w1[e].double() @ xd) * (w3[e].double() @ xd)
            y[ti] += wts[ti, j].double() * (w2[e].double() @ h)
    return y


@pytest.mark.parametrize("layout", ["balanced", "one-expert", "empty-expert-and-dropped", "decode", "idle-experts-batched", "T0"])
def test_moe_experts_paths(layout, monkeypatch):
    t, e, d, i, k = 24, 8, 32, 16, 2
    x = torch.randn(t, d, generator=g(44))
    w1, w3, w2 = (torch.randn(e, i, d, generator=g(45)) * 0.2, torch.randn(e, i, d, generator=g(46)) * 0.2,
                  torch.randn(e, d, i, generator=g(47)) * 0.2)
    wts = torch.rand(t, k, generator=g(48))
    if layout == "balanced":
        ids = (torch.arange(t * k).reshape(t, k) % e).to(torch.int32)
    elif layout == "one-expert":
        ids = torch.full((t, k), 3, dtype=torch.int32)
        ids[:, 1] = -1
        ids[0, 1] = 5                    # skew: segment path
    elif layout == "empty-expert-and-dropped":
        ids = torch.randint(0, e - 2, (t, k), generator=g(49), dtype=torch.int32)
        ids[::3, 0] = -1
    elif layout == "decode":             # one token, two experts busy: weight views, no copy of the busy ones
        x, wts, ids = x[:1], wts[:1], torch.tensor([[6, 1]], dtype=torch.int32)
    elif layout == "idle-experts-batched":
        ids = (torch.arange(t * k).reshape(t, k) % (e - 2)).to(torch.int32)
        monkeypatch.setattr(tmoe, "GATHER_ROWS", 1)
    else:
        x, ids, wts = x[:0], torch.zeros(0, k, dtype=torch.int32), wts[:0]
    paths = []
    for name in ("_masked_path", "_segment_path"):
        orig = getattr(tmoe, name)
        monkeypatch.setattr(tmoe, name, lambda *a, _o=orig, _n=name: (paths.append(_n), _o(*a))[1])
    close(tb.moe_experts(x, ids, wts, w1, w3, w2), brute_experts(x, ids, wts, w1, w3, w2), torch.float32)
    expected = {"balanced": ["_masked_path"], "one-expert": ["_segment_path"], "decode": ["_segment_path"],
                "idle-experts-batched": ["_masked_path"], "T0": []}.get(layout)
    if expected is not None:
        assert paths == expected


def test_grouped_gemm_contiguous_and_masked():
    a, b = torch.randn(512, 24, generator=g(50)), torch.randn(4, 12, 24, generator=g(51))
    m = torch.full((512,), -1, dtype=torch.int32)
    m[:100], m[128:128 + 200], m[384:384 + 30] = 0, 2, 3      # group 1 empty, segments padded to 128-row tiles
    c = tb.moe_grouped_gemm_contiguous(a, b, m)
    want = torch.zeros(512, 12, dtype=torch.float64)
    for r in range(512):
        if m[r] >= 0:
            want[r] = b[int(m[r])].double() @ a[r].double()
    close(c, want, torch.float32)
    am = torch.randn(3, 10, 24, generator=g(52))
    cnt = torch.tensor([0, 10, 4], dtype=torch.int32)
    cm = tb.moe_grouped_gemm_masked(am, b[:3], cnt)
    wantm = torch.zeros(3, 10, 12, dtype=torch.float64)
    for gi in range(3):
        for r in range(int(cnt[gi])):
            wantm[gi, r] = b[gi].double() @ am[gi, r].double()
    close(cm, wantm, torch.float32)


# -- errors --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, op, arg", [
    (lambda: tb.sparse_mla_prefill(torch.randn(2, 4, 576), torch.randn(8, 1, 576), torch.full((2, 1, 4), 9, dtype=torch.int32), 0.1), "sparse_mla_prefill", "indices"),
    (lambda: tb.topk_select(torch.randn(2, 8), 2, torch.zeros(2, dtype=torch.int32), None), "topk_select", "ke"),
    (lambda: tb.moe_experts(torch.randn(2, 8), torch.full((2, 2), 4, dtype=torch.int32), torch.rand(2, 2),
                            torch.randn(4, 3, 8), torch.randn(4, 3, 8), torch.randn(4, 8, 3)), "moe_experts", "ids"),
    (lambda: tb.mla_cache_unpack(torch.zeros(2, 600, dtype=torch.uint8)), "mla_cache_unpack", "cache"),
])
def test_bad_input_gets_named_errors(call, op, arg):
    with pytest.raises(ValidationError) as e:
        call()
    assert (e.value.op, e.value.arg) == (op, arg)


def test_topk_selects_in_window_minus_infinity_before_padding():
    lg = torch.full((2, 10), float("-inf"))
    lg[0, 8] = 1.0                                   # window [4, 10): one finite, five -inf entries
    lg[1, 7] = float("nan")                          # NaN is reported (selected), never hidden
    ks = torch.tensor([4, 5], dtype=torch.int32)
    ke = torch.tensor([10, 9], dtype=torch.int32)
    idx = tb.topk_select(lg, 4, ks, ke)
    assert (idx[0] >= 0).all() and 8 in idx[0].tolist() and ((idx[0] >= 4) & (idx[0] < 10)).all()
    assert sorted(idx[1].tolist()) == [5, 6, 7, 8]   # the whole 4-entry window: NaN and three -inf


def test_fp8_decode_dequantizes_only_the_indexed_rows(monkeypatch):
    from dsport.backends.torch import attention
    seen = []
    orig = attention.unpack_rows
    monkeypatch.setattr(attention, "unpack_rows", lambda rows, fmt: (seen.append(rows.shape[:-1].numel()), orig(rows, fmt))[1])
    nb, bs, b, k = 40, 64, 2, 8                                  # a pool of 2560 tokens, 2 x 8 picks
    cache = tb.mla_cache_pack(torch.randn(nb * bs, 576, generator=g(60))).reshape(nb, bs, 1, 656)
    idx = torch.randint(0, nb * bs, (b, 1, k), generator=g(61), dtype=torch.int32)
    tb.sparse_mla_decode(torch.randn(b, 1, 2, 576, generator=g(62)).bfloat16(), cache, idx, 0.1, 512)
    assert sum(seen) == b * k                                    # never the 2560-row pool


def test_topk_ties_at_the_boundary_keep_the_lowest_positions_on_every_path():
    row = torch.tensor([5.0, 3.0, 3.0, 3.0, 3.0, 1.0, 3.0, 3.0])
    one = tb.topk_select(row[None, :6], 3, torch.tensor([0], dtype=torch.int32), torch.tensor([6], dtype=torch.int32))
    assert sorted(one[0].tolist()) == [0, 1, 2]
    # the same row inside a block with a wider window (decode row vs prefill block) picks the same keys
    blk = torch.stack([row, torch.randn(8, generator=g(63))])
    two = tb.topk_select(blk, 3, torch.tensor([0, 0], dtype=torch.int32), torch.tensor([6, 8], dtype=torch.int32))
    assert sorted(two[0].tolist()) == [0, 1, 2]
