"""The float64 MLA attention and FP8 latent-cache references, checked against
formulas written here: brute-force loops, dense masked softmax with index
multiplicities, hand-decoded cache bytes and the unabsorbed MHA form of MLA."""
import math

import pytest
import torch

import dsport
from dsport.core.errors import ValidationError
from dsport.core.spec import get_spec

ref = dsport.resolve("reference")
NEG_INF = float("-inf")
TOL = dict(rtol=1e-11, atol=1e-12)
ATTN_OPS = ("sparse_mla_prefill", "sparse_mla_decode", "mla_prefill_dense", "mla_decode_dense")


def quick_cases(op):
    return [pytest.param(c, id=c.id) for c in get_spec(op).cases() if "quick" in c.tags]


# -- independent formulas -----------------------------------------------------------------------------------------
def decode_cache_bytes(cache: torch.Tensor, fmt: str = "e4m3fn") -> torch.Tensor:
    """[..., 656] bytes -> [..., 576] float64, straight from the documented layout."""
    dtype = {"e4m3fn": torch.float8_e4m3fn, "e4m3fnuz": torch.float8_e4m3fnuz}[fmt]
    rows = cache.reshape(-1, 656)
    latent = rows[:, :512].contiguous().view(dtype).double()
    scales = rows[:, 512:528].contiguous().view(torch.float32).double()
    rope = rows[:, 528:].contiguous().view(torch.bfloat16).double()
    latent = latent * scales.repeat_interleave(128, dim=1)
    return torch.cat([latent, rope], dim=1).reshape(*cache.shape[:-1], 576)


def multiset_attention(q, keys, counts, sm_scale, d_v):
    """Dense softmax over every key, each weighted by how often the row selects it:
    q [N, H, D], keys [S, D], counts [N, S] -> out, lse, max (max over selected keys)."""
    logits = torch.einsum("nhd,sd->nhs", q.double(), keys.double()) * sm_scale
    c = counts.double().unsqueeze(1).expand_as(logits)
    chosen = c > 0
    safe = torch.where(chosen, logits, torch.full_like(logits, NEG_INF))
    peak = safe.amax(-1) if logits.shape[-1] else logits.new_full(logits.shape[:-1], NEG_INF)
    lse = torch.logsumexp(safe + torch.log(c), dim=-1) if logits.shape[-1] else peak.clone()
    w = torch.where(chosen, c * torch.exp(logits - lse.unsqueeze(-1)), torch.zeros_like(logits))
    # keys a row does not select never enter its product (they may hold NaN: SPEC §10)
    rows = torch.where((counts > 0)[:, :, None], keys.double()[None, :, :d_v], torch.zeros((), dtype=torch.float64))
    out = torch.einsum("nhs,nsd->nhd", w, rows)
    return out, lse, peak


def index_counts(indices: torch.Tensor, s: int) -> torch.Tensor:
    """[N, k] indices (-1 = none) -> [N, S] multiplicities."""
    counts = torch.zeros(indices.shape[0], s + 1, dtype=torch.float64)
    counts.scatter_add_(1, torch.where(indices < 0, s, indices).long(), torch.ones(indices.shape, dtype=torch.float64))
    return counts[:, :s]


def causal_indices(t: int, s: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """[T, 1, k]: row t holds every key 0 .. S - T + t once, shuffled, padded with -1."""
    rows = []
    for i in range(t):
        row = torch.full((k,), -1, dtype=torch.int32)
        row[: s - t + i + 1] = torch.arange(s - t + i + 1, dtype=torch.int32)
        rows.append(row[torch.randperm(k, generator=gen)])
    return torch.stack(rows).unsqueeze(1)


def expand_shared(kv: torch.Tensor, h: int, d_v: int):
    """One shared KV head [S, 1, D] as MHA k [S, H, D] and v [S, H, d_v]."""
    s, _, d = kv.shape
    return kv.expand(s, h, d), kv[..., :d_v].expand(s, h, d_v)


# -- sparse_mla_prefill --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case_id", ["tiny", "duplicates", "rows-all-invalid"])
def test_sparse_prefill_equals_per_row_loop(case_id):
    args = next(c for c in get_spec("sparse_mla_prefill").cases() if c.id == case_id).inputs()
    q, kv, idx, scale, d_v = args["q"].double(), args["kv"][:, 0].double(), args["indices"][:, 0], args["sm_scale"], args["d_v"]
    out, lse, mx = ref.sparse_mla_prefill(**args)
    t_len, h_len = q.shape[:2]
    for t in range(t_len):
        for h in range(h_len):
            logits = [float(q[t, h] @ kv[j]) * scale for j in idx[t].tolist() if j != -1]
            if not logits:
                assert torch.all(out[t, h] == 0) and lse[t, h] == NEG_INF and mx[t, h] == NEG_INF
                continue
            m = max(logits)
            z = sum(math.exp(x - m) for x in logits)
            want = sum(math.exp(float(q[t, h] @ kv[j]) * scale - m) / z * kv[j, :d_v] for j in idx[t].tolist() if j != -1)
            torch.testing.assert_close(out[t, h], want, **TOL)
            assert lse[t, h].item() == pytest.approx(m + math.log(z), rel=1e-13)
            assert mx[t, h].item() == pytest.approx(m, rel=1e-13)


@pytest.mark.parametrize("case", quick_cases("sparse_mla_prefill"))
def test_sparse_prefill_cases_equal_multiset_softmax(case):
    args = case.inputs()
    out, lse, mx = ref.sparse_mla_prefill(**args)
    counts = index_counts(args["indices"][:, 0], args["kv"].shape[0])
    want = multiset_attention(args["q"], args["kv"][:, 0], counts, args["sm_scale"], args["d_v"])
    for got, exp in zip((out, lse, mx), want):
        torch.testing.assert_close(got, exp, equal_nan=True, **TOL)
    # NaN exactly in the rows of a NaN query head or of a token naming a NaN kv row (SPEC §10), nowhere else
    named_nan = (counts[:, args["kv"][:, 0].isnan().any(-1)] > 0).any(-1)
    nan_rows = (args["q"].isnan().any(-1) | named_nan[:, None]) & (counts.sum(-1) > 0)[:, None]
    assert torch.equal(lse.isnan(), nan_rows) and torch.equal(out.isnan().any(-1), nan_rows)


def test_lse_is_natural_log_and_max_logits_the_max_scaled_logit():
    args = next(c for c in get_spec("sparse_mla_prefill").cases() if c.id == "small").inputs()
    out, lse, mx = ref.sparse_mla_prefill(**args)
    q, kv, idx = args["q"].double(), args["kv"][:, 0].double(), args["indices"][:, 0].long()
    for t in range(q.shape[0]):
        keep = idx[t][idx[t] >= 0]
        scaled = q[t] @ kv[keep].T * args["sm_scale"]  # [H, n]
        torch.testing.assert_close(torch.exp(lse[t]), torch.exp(scaled).sum(-1), rtol=1e-12, atol=0)
        assert torch.equal(mx[t], scaled.amax(-1))
        assert torch.all(lse[t] >= mx[t]) and torch.all(lse[t] <= mx[t] + math.log(len(keep)))
    assert not torch.allclose(torch.exp2(lse), torch.exp(lse))  # a base-2 lse would not pass the checks above


def test_all_invalid_indices_give_zero_out_and_minus_inf_lse_never_nan():
    gen = torch.Generator().manual_seed(0)
    kv = torch.randn(8, 1, 80, generator=gen, dtype=torch.float64)
    kv[0] = float("nan")  # an invalid slot must not read (or leak) row 0
    q = torch.randn(3, 4, 80, generator=gen, dtype=torch.float64)
    out, lse, mx = ref.sparse_mla_prefill(q, kv, torch.full((3, 1, 5), -1, dtype=torch.int32), 0.1, 64)
    assert torch.equal(out, torch.zeros(3, 4, 64, dtype=out.dtype))
    assert torch.all(lse == NEG_INF) and torch.all(mx == NEG_INF)
    idx = torch.tensor([[[3, -1, 5, -1, -1]], [[-1] * 5], [[1, 2, 3, 4, 5]]], dtype=torch.int32)
    out, lse, mx = ref.sparse_mla_prefill(q, kv, idx, 0.1, 64)
    assert not out.isnan().any() and not lse.isnan().any() and not mx.isnan().any()
    assert torch.all(out[1] == 0) and torch.all(lse[1] == NEG_INF) and torch.isfinite(lse[[0, 2]]).all()


def test_duplicate_index_is_its_own_softmax_term():
    kv = torch.zeros(2, 1, 4, dtype=torch.float64)
    kv[0, 0], kv[1, 0] = torch.tensor([1.0, 0, 10, 0]), torch.tensor([0, 1.0, 0, 20])
    q = torch.tensor([[[0.5, 0.25, 0, 0]]], dtype=torch.float64)
    idx = torch.tensor([[[0, 1, 0]]], dtype=torch.int32)  # key 0 twice
    out, lse, mx = ref.sparse_mla_prefill(q, kv, idx, 1.0, 4)
    a, b = math.exp(0.5), math.exp(0.25)  # logits 0.5 (twice) and 0.25
    w0 = 2 * a / (2 * a + b)
    torch.testing.assert_close(out[0, 0], w0 * kv[0, 0] + (1 - w0) * kv[1, 0], **TOL)
    assert lse.item() == pytest.approx(math.log(2 * a + b), rel=1e-14) and mx.item() == 0.5


@pytest.mark.parametrize("t, s, h", [(16, 16, 4), (5, 12, 8), (1, 7, 2)])
def test_sparse_prefill_with_all_causal_indices_equals_dense_causal_attention(t, s, h):
    gen = torch.Generator().manual_seed(t * 100 + s)
    q = torch.randn(t, h, 576, generator=gen, dtype=torch.float64)
    kv = torch.randn(s, 1, 576, generator=gen, dtype=torch.float64)
    scale = 192 ** -0.5
    out, lse, _ = ref.sparse_mla_prefill(q, kv, causal_indices(t, s, s, gen), scale, 512)
    dense_out, dense_lse = ref.mla_prefill_dense(q, *expand_shared(kv, h, 512), scale)
    torch.testing.assert_close(out, dense_out, **TOL)
    torch.testing.assert_close(lse, dense_lse, **TOL)
    # and an explicit masked softmax written here
    logits = torch.einsum("thd,sd->ths", q, kv[:, 0]) * scale
    mask = torch.arange(s)[None, :] <= torch.arange(t)[:, None] + (s - t)
    p = torch.softmax(logits.masked_fill(~mask[:, None, :], NEG_INF), dim=-1)
    torch.testing.assert_close(out, torch.einsum("ths,sd->thd", p, kv[:, 0, :512]), **TOL)


# -- the absorbed and unabsorbed MLA forms --------------------------------------------------------------------------
@pytest.mark.parametrize("t, s", [(6, 6), (3, 9)])
def test_absorbed_and_unabsorbed_mla_agree(t, s):
    h, nope, rope, v_dim, rank = 4, 128, 64, 128, 512
    gen = torch.Generator().manual_seed(7 + t)
    wkv_b = torch.randn(h * (nope + v_dim), rank, generator=gen, dtype=torch.float64) * rank ** -0.5
    q_nope = torch.randn(t, h, nope, generator=gen, dtype=torch.float64)
    q_pe = torch.randn(t, h, rope, generator=gen, dtype=torch.float64)
    kv = torch.randn(s, rank, generator=gen, dtype=torch.float64)
    k_pe = torch.randn(s, rope, generator=gen, dtype=torch.float64)
    scale = (nope + rope) ** -0.5

    # unabsorbed (MHA): expand k, v per head through wkv_b
    kv_heads = (kv @ wkv_b.T).view(s, h, nope + v_dim)
    k = torch.cat([kv_heads[..., :nope], k_pe[:, None, :].expand(s, h, rope)], dim=-1)
    v = kv_heads[..., nope:]
    mha_out, mha_lse = ref.mla_prefill_dense(torch.cat([q_nope, q_pe], dim=-1), k, v, scale)

    # absorbed (MQA): q_nope through W_UK into the latent space, one shared 576-dim KV head, o through W_UV
    w = wkv_b.view(h, nope + v_dim, rank)
    w_uk, w_uv = w[:, :nope], w[:, nope:]
    q_abs = torch.cat([torch.einsum("thd,hdc->thc", q_nope, w_uk), q_pe], dim=-1)  # [T, H, 576]
    latent = torch.cat([kv, k_pe], dim=-1)[:, None, :]  # [S, 1, 576]
    o_lat, lse, _ = ref.sparse_mla_prefill(q_abs, latent, causal_indices(t, s, s, gen), scale, rank)
    torch.testing.assert_close(torch.einsum("thc,hdc->thd", o_lat, w_uv), mha_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lse, mha_lse, rtol=1e-12, atol=1e-12)
    o_dense, lse_dense = ref.mla_prefill_dense(q_abs, *expand_shared(latent, h, rank), scale)
    torch.testing.assert_close(torch.einsum("thc,hdc->thd", o_dense, w_uv), mha_out, rtol=1e-10, atol=1e-12)


# -- mla_prefill_dense ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", quick_cases("mla_prefill_dense"))
def test_dense_prefill_cases_equal_masked_softmax(case):
    a = case.inputs()
    out, lse = ref.mla_prefill_dense(**a)
    q, k, v = a["q"].double(), a["k"].double(), a["v"].double()
    t, s = q.shape[0], k.shape[0]
    logits = torch.einsum("thd,shd->ths", q, k) * a["sm_scale"]
    future = torch.arange(s)[None, :] > torch.arange(t)[:, None] + (s - t)  # query i is position s - t + i
    logits = logits.masked_fill(future[:, None, :], NEG_INF)
    torch.testing.assert_close(out, torch.einsum("ths,shd->thd", torch.softmax(logits, -1), v), **TOL)
    torch.testing.assert_close(lse, torch.logsumexp(logits, -1), **TOL)


def test_dense_prefill_tiny_by_loop():
    a = next(c for c in get_spec("mla_prefill_dense").cases() if c.id == "tiny").inputs()
    out, lse = ref.mla_prefill_dense(**a)
    q, k, v = a["q"].double(), a["k"].double(), a["v"].double()
    t, s = q.shape[0], k.shape[0]
    for i in range(t):
        for h in range(q.shape[1]):
            logits = [float(q[i, h] @ k[j, h]) * a["sm_scale"] for j in range(s - t + i + 1)]
            z = sum(math.exp(x) for x in logits)
            want = sum(math.exp(x) / z * v[j, h] for j, x in enumerate(logits))
            torch.testing.assert_close(out[i, h], want, **TOL)
            assert lse[i, h].item() == pytest.approx(math.log(z), rel=1e-13)


# -- paged decode --------------------------------------------------------------------------------------------------
def flat_cache(cache: torch.Tensor, fmt: str) -> torch.Tensor:
    rows = cache.reshape(-1, cache.shape[-1])
    return decode_cache_bytes(rows, fmt) if cache.dtype == torch.uint8 else rows.double()


@pytest.mark.parametrize("case", quick_cases("sparse_mla_decode"))
def test_sparse_decode_cases_equal_multiset_softmax(case):
    a = case.inputs()
    out, lse = ref.sparse_mla_decode(**a)
    b, sq, h, d = a["q"].shape
    keys = flat_cache(a["kv_cache"], a.get("fmt", "e4m3fn"))
    idx = a["indices"].reshape(b * sq, a["indices"].shape[-1])
    want_out, want_lse, _ = multiset_attention(a["q"].reshape(b * sq, h, d), keys, index_counts(idx, keys.shape[0]),
                                               a["sm_scale"], a["d_v"])
    torch.testing.assert_close(out, want_out.reshape(b, sq, h, a["d_v"]), **TOL)
    torch.testing.assert_close(lse, want_lse.reshape(b, sq, h).transpose(1, 2), **TOL)  # lse is [B, H, SQ]


@pytest.mark.parametrize("fmt", ["e4m3fn", "e4m3fnuz"])
def test_sparse_decode_fp8_cache_equals_decode_over_unpacked_float_cache(fmt):
    gen = torch.Generator().manual_seed(3)
    nb, bs = 3, 64
    latent = torch.randn(nb * bs, 576, generator=gen).bfloat16()
    cache = ref.mla_cache_pack(latent, fmt).view(nb, bs, 1, 656)
    q = torch.randn(2, 1, 16, 576, generator=gen).bfloat16()
    idx = torch.randint(-1, nb * bs, (2, 1, 48), generator=gen, dtype=torch.int32)
    out, lse = ref.sparse_mla_decode(q, cache, idx, 0.1, 512, fmt)
    unpacked = ref.mla_cache_unpack(cache.view(-1, 656), fmt).view(nb, bs, 1, 576)
    f_out, f_lse = ref.sparse_mla_decode(q, unpacked, idx, 0.1, 512)
    torch.testing.assert_close(out, f_out, rtol=0, atol=0)
    torch.testing.assert_close(lse, f_lse, rtol=0, atol=0)
    # reading the cache in the wrong fp8 format changes the result: fmt is honoured
    other = "e4m3fnuz" if fmt == "e4m3fn" else "e4m3fn"
    assert not torch.allclose(ref.sparse_mla_decode(q, cache, idx, 0.1, 512, other)[0], out)


@pytest.mark.parametrize("bs", [1, 64])
def test_decode_index_is_block_times_page_size_plus_offset(bs):
    nb = 4 if bs == 64 else 200
    gen = torch.Generator().manual_seed(bs)
    cache = torch.randn(nb, bs, 1, 576, generator=gen, dtype=torch.float64)
    q = torch.randn(1, 1, 2, 576, generator=gen, dtype=torch.float64)
    block, offset = (2, 37) if bs == 64 else (151, 0)
    idx = torch.tensor([[[-1, block * bs + offset, -1]]], dtype=torch.int32)
    out, lse = ref.sparse_mla_decode(q, cache, idx, 0.5, 512)
    row = cache[block, offset, 0]
    assert torch.equal(out[0, 0], row[:512].expand(2, 512))  # a single key gets weight exactly 1
    torch.testing.assert_close(lse[0, :, 0], (q[0, 0] @ row) * 0.5, **TOL)


def paged_from_contiguous(kv: torch.Tensor, bs: int, nb: int, gen: torch.Generator):
    """Scatter one sequence [L, D] into a shuffled paged cache; returns (cache, block_table row)."""
    n = -(-kv.shape[0] // bs)
    blocks = torch.randperm(nb, generator=gen)[:n]
    cache = torch.randn(nb, bs, 1, kv.shape[1], generator=gen, dtype=torch.float64)  # garbage everywhere else
    for p in range(kv.shape[0]):
        cache[blocks[p // bs], p % bs, 0] = kv[p]
    return cache, blocks.int()


@pytest.mark.parametrize("bs, length, sq", [(1, 9, 1), (4, 13, 3), (64, 70, 2)])
def test_dense_decode_equals_dense_prefill_on_the_same_tokens(bs, length, sq):
    gen = torch.Generator().manual_seed(length)
    h = 4
    kv = torch.randn(length, 576, generator=gen, dtype=torch.float64)
    cache, blocks = paged_from_contiguous(kv, bs, -(-length // bs) + 2, gen)
    table = torch.cat([blocks, torch.tensor([-1], dtype=torch.int32)])[None]
    q = torch.randn(1, sq, h, 576, generator=gen, dtype=torch.float64)
    seqlens = torch.tensor([length], dtype=torch.int32)
    out, lse = ref.mla_decode_dense(q, cache, table, seqlens, 0.07, 512, True)
    p_out, p_lse = ref.mla_prefill_dense(q[0], *expand_shared(kv[:, None, :], h, 512), 0.07)
    torch.testing.assert_close(out[0], p_out, **TOL)
    torch.testing.assert_close(lse[0], p_lse.T, **TOL)
    # without causal every query sees the whole sequence: the last query's answer for all
    nc_out, nc_lse = ref.mla_decode_dense(q, cache, table, seqlens, 0.07, 512, False)
    for i in range(sq):
        last, _ = ref.mla_prefill_dense(q[0, i:i + 1], *expand_shared(kv[:, None, :], h, 512), 0.07)
        torch.testing.assert_close(nc_out[0, i], last[0], **TOL)


@pytest.mark.parametrize("case", quick_cases("mla_decode_dense"))
def test_dense_decode_cases_equal_per_batch_loop(case):
    a = case.inputs()
    out, lse = ref.mla_decode_dense(**a)
    b, sq, h, _ = a["q"].shape
    bs = a["kv_cache"].shape[1]
    for i in range(b):
        n = int(a["cache_seqlens"][i])
        keys = torch.stack([a["kv_cache"][int(a["block_table"][i, p // bs]), p % bs, 0] for p in range(n)]).double() \
            if n else torch.empty(0, a["kv_cache"].shape[-1], dtype=torch.float64)
        for j in range(sq):
            seen = n - sq + 1 + j if a["causal"] else n
            logits = a["q"][i, j].double() @ keys[:seen].T * a["sm_scale"]  # [H, seen]
            if seen == 0:
                assert torch.all(out[i, j] == 0) and torch.all(lse[i, :, j] == NEG_INF)
                continue
            want = torch.softmax(logits, -1) @ keys[:seen, : a["d_v"]]
            torch.testing.assert_close(out[i, j], want, **TOL)
            torch.testing.assert_close(lse[i, :, j], torch.logsumexp(logits, -1), **TOL)


# -- the FP8 latent cache ------------------------------------------------------------------------------------------
def test_cache_byte_layout_by_hand():
    kv = torch.zeros(1, 576)
    kv[0, 0], kv[0, 1] = 448.0, 1.0  # tile 0: amax 448 = e4m3fn max -> scale 1
    kv[0, 128] = 896.0  # tile 1: scale 2, stored as 448
    # tile 2 stays zero: amax floor 1e-4 -> 1e-4 / 448 = 2.2e-7 -> scale 2^-22 (2^-23 = 1.2e-7 is too small)
    kv[0, 384] = -0.875  # tile 3: 0.875 / 448 = 2^-9 exactly -> scale 2^-9, stored as -448
    kv[0, 512:] = torch.arange(64) * 0.5 - 8  # exactly representable in bf16
    cache = ref.mla_cache_pack(kv)
    assert cache.shape == (1, 656) and cache.dtype == torch.uint8
    b = cache[0].tolist()
    assert b[0] == 0x7E and b[1] == 0x38  # e4m3fn: 448 = 0 1111 110, 1.0 = 0 0111 000
    assert b[128] == 0x7E
    assert all(x == 0 for x in b[256:384])
    assert b[384] == 0xFE  # sign bit | 0x7E
    scales = cache[0, 512:528].contiguous().view(torch.float32).tolist()
    assert scales == [1.0, 2.0, 2.0 ** -22, 2.0 ** -9]
    assert b[512:516] == [0x00, 0x00, 0x80, 0x3F]  # float32 1.0, little-endian
    assert torch.equal(cache[0, 528:].contiguous().view(torch.bfloat16), kv[0, 512:].bfloat16())


def test_fnuz_cache_bytes_use_the_fnuz_encoding():
    kv = torch.zeros(1, 576)
    kv[0, 0], kv[0, 1] = 240.0, 1.0  # amax 240 = fnuz max -> scale 1
    cache = ref.mla_cache_pack(kv, "e4m3fnuz")
    assert cache[0, 0].item() == 0x7F and cache[0, 1].item() == 0x40  # fnuz bias 8: 1.0 = 0 1000 000
    assert cache[0, 512:516].contiguous().view(torch.float32).item() == 1.0
    torch.testing.assert_close(ref.mla_cache_unpack(cache, "e4m3fnuz").double(), kv.double(), rtol=0, atol=0)


@pytest.mark.parametrize("fmt, fmax", [("e4m3fn", 448.0), ("e4m3fnuz", 240.0)])
def test_pack_unpack_round_trip_bounds_and_layout(fmt, fmax):
    gen = torch.Generator().manual_seed(11)
    kv = torch.randn(64, 576, generator=gen, dtype=torch.float64) * torch.logspace(-3, 2, 64, dtype=torch.float64)[:, None]
    kv = kv.bfloat16()
    cache = ref.mla_cache_pack(kv, fmt)
    scales = cache[:, 512:528].contiguous().view(torch.float32).double()  # [N, 4]
    mant, _ = torch.frexp(scales)
    assert torch.all(mant == 0.5)  # powers of two
    amax = kv[:, :512].double().abs().view(64, 4, 128).amax(-1).clamp_min(1e-4)
    assert torch.all(scales >= amax / fmax * (1 - 1e-7)) and torch.all(scales / 2 < amax / fmax)  # smallest pow2 >= amax/fmax
    back = ref.mla_cache_unpack(cache, fmt)
    assert back.dtype == torch.float32
    torch.testing.assert_close(back.double(), decode_cache_bytes(cache, fmt), rtol=0, atol=0)
    assert torch.equal(back[:, 512:], kv[:, 512:].float())  # rope verbatim
    err = (back[:, :512].double() - kv[:, :512].double()).abs()
    s_full = scales.repeat_interleave(128, dim=1)
    assert torch.all(err <= kv[:, :512].double().abs() * 2.0 ** -4 + s_full * 2.0 ** -10)
    assert err.max() > 0  # the round trip is lossy; the bound above is what makes it fit


def test_unpack_of_hand_built_bytes():
    one = torch.ones(512).to(torch.float8_e4m3fn).view(torch.uint8)
    scales = torch.tensor([1.0, 2.0, 0.5, 4.0]).view(torch.uint8)
    rope = torch.linspace(-1, 1, 64).bfloat16()
    cache = torch.cat([one, scales, rope.view(torch.uint8)])[None]
    out = ref.mla_cache_unpack(cache)
    assert out[0, :128].eq(1).all() and out[0, 128:256].eq(2).all() and out[0, 256:384].eq(0.5).all()
    assert out[0, 384:512].eq(4).all() and torch.equal(out[0, 512:], rope.float())


def test_fn_and_fnuz_bytes_differ_by_a_factor_two():
    cache = ref.mla_cache_pack(torch.randn(4, 576, generator=torch.Generator().manual_seed(5)), "e4m3fn")
    as_fn, as_fnuz = ref.mla_cache_unpack(cache, "e4m3fn"), ref.mla_cache_unpack(cache, "e4m3fnuz")
    finite = torch.isfinite(as_fnuz[:, :512]) & (cache[:, :512] != 0x80)
    assert torch.equal(as_fn[:, :512][finite], 2 * as_fnuz[:, :512][finite])


# -- validation ------------------------------------------------------------------------------------------------------
def _prefill_args(**over):
    a = {"q": torch.randn(2, 4, 576), "kv": torch.randn(8, 1, 576), "indices": torch.zeros(2, 1, 4, dtype=torch.int32),
         "sm_scale": 0.1, "d_v": 512}
    return {**a, **over}


def _decode_args(**over):
    a = {"q": torch.randn(1, 1, 4, 576), "kv_cache": torch.zeros(2, 64, 1, 656, dtype=torch.uint8),
         "indices": torch.zeros(1, 1, 4, dtype=torch.int32), "sm_scale": 0.1, "d_v": 512}
    return {**a, **over}


def _dense_decode_args(**over):
    a = {"q": torch.randn(2, 1, 4, 576), "kv_cache": torch.randn(4, 16, 1, 576),
         "block_table": torch.tensor([[0, 1], [2, -1]], dtype=torch.int32),
         "cache_seqlens": torch.tensor([20, 16], dtype=torch.int32), "sm_scale": 0.1, "d_v": 512}
    return {**a, **over}


INT = torch.int32
BAD_CALLS = [
    ("sparse_mla_prefill", "indices", "[0, S)", lambda: _prefill_args(indices=torch.full((2, 1, 4), 8, dtype=INT))),
    ("sparse_mla_prefill", "indices", "-1 (invalid)", lambda: _prefill_args(indices=torch.full((2, 1, 4), -2, dtype=INT))),
    ("sparse_mla_prefill", "indices", "dtype", lambda: _prefill_args(indices=torch.zeros(2, 1, 4, dtype=torch.int64))),
    ("sparse_mla_prefill", "d_v", "d_v <= DQK", lambda: _prefill_args(d_v=600)),
    ("sparse_mla_prefill", "kv", "shape", lambda: _prefill_args(kv=torch.randn(8, 2, 576))),
    ("sparse_mla_prefill", "sm_scale", "float", lambda: _prefill_args(sm_scale=1)),
    ("sparse_mla_decode", "indices", "[0, NB * BS)", lambda: _decode_args(indices=torch.full((1, 1, 4), 128, dtype=INT))),
    ("sparse_mla_decode", "indices", "-1 (invalid)", lambda: _decode_args(indices=torch.full((1, 1, 4), -3, dtype=INT))),
    ("sparse_mla_decode", "kv_cache", "W = 656", lambda: _decode_args(kv_cache=torch.zeros(2, 64, 1, 640, dtype=torch.uint8))),
    ("sparse_mla_decode", "kv_cache", "W = DQK", lambda: _decode_args(kv_cache=torch.zeros(2, 64, 1, 512))),
    ("sparse_mla_decode", "kv_cache", "d_v = 512", lambda: _decode_args(d_v=256)),
    ("sparse_mla_decode", "kv_cache", "DQK = 576", lambda: _decode_args(q=torch.randn(1, 1, 4, 512), d_v=512)),
    ("sparse_mla_decode", "d_v", "d_v <= DQK", lambda: _decode_args(kv_cache=torch.zeros(2, 64, 1, 576), d_v=640)),
    ("sparse_mla_decode", "fmt", "e4m3fnuz", lambda: _decode_args(fmt="e5m2")),
    ("mla_prefill_dense", "k", "S >= T", lambda: {"q": torch.randn(5, 2, 192), "k": torch.randn(4, 2, 192),
                                                  "v": torch.randn(4, 2, 128), "sm_scale": 0.1}),
    ("mla_prefill_dense", "v", "shape", lambda: {"q": torch.randn(2, 2, 192), "k": torch.randn(4, 2, 192),
                                                 "v": torch.randn(5, 2, 128), "sm_scale": 0.1}),
    ("mla_decode_dense", "cache_seqlens", "MB * BS", lambda: _dense_decode_args(cache_seqlens=torch.tensor([33, 16], dtype=INT))),
    ("mla_decode_dense", "cache_seqlens", "SQ <=", lambda: _dense_decode_args(q=torch.randn(2, 3, 4, 576),
                                                                              cache_seqlens=torch.tensor([20, 2], dtype=INT))),
    ("mla_decode_dense", "cache_seqlens", "SQ <=", lambda: _dense_decode_args(cache_seqlens=torch.tensor([-1, 2], dtype=INT),
                                                                              causal=False)),
    ("mla_decode_dense", "block_table", "[-1, NB)", lambda: _dense_decode_args(
        block_table=torch.tensor([[0, 4], [2, -1]], dtype=INT))),
    ("mla_decode_dense", "block_table", "[-1, NB)", lambda: _dense_decode_args(
        block_table=torch.tensor([[0, 1], [-2, -1]], dtype=INT))),
    ("mla_decode_dense", "block_table", "below cache_seqlens", lambda: _dense_decode_args(
        block_table=torch.tensor([[0, -1], [2, -1]], dtype=INT))),
    ("mla_decode_dense", "d_v", "d_v <= DQK", lambda: _dense_decode_args(d_v=1000)),
    ("mla_decode_dense", "kv_cache", "shape", lambda: _dense_decode_args(kv_cache=torch.randn(4, 16, 1, 512))),
    ("mla_cache_pack", "kv", "shape", lambda: {"kv": torch.randn(3, 512)}),
    ("mla_cache_pack", "fmt", "e4m3fn", lambda: {"kv": torch.randn(3, 576), "fmt": "e5m2"}),
    ("mla_cache_unpack", "cache", "dtype", lambda: {"cache": torch.zeros(3, 656)}),
    ("mla_cache_unpack", "cache", "shape", lambda: {"cache": torch.zeros(3, 576, dtype=torch.uint8)}),
]


@pytest.mark.parametrize("op, arg, fragment, make", BAD_CALLS, ids=[f"{o}-{a}-{i}" for i, (o, a, _, _) in enumerate(BAD_CALLS)])
def test_error_names_op_and_argument(op, arg, fragment, make):
    with pytest.raises(ValidationError) as e:
        getattr(ref, op)(**make())
    assert (e.value.op, e.value.arg) == (op, arg)
    msg = str(e.value)
    assert msg.startswith(f"{op}: argument '{arg}': expected") and fragment in msg and "got" in msg


def test_valid_edge_inputs_are_accepted():
    ref.sparse_mla_prefill(**_prefill_args(indices=torch.tensor([[[-1, 7, 0, -1]]] * 2, dtype=INT)))
    ref.mla_decode_dense(**_dense_decode_args(cache_seqlens=torch.tensor([0, 16], dtype=INT), causal=False))
    ref.mla_decode_dense(**_dense_decode_args(block_table=torch.tensor([[0, 1], [2, 3]], dtype=INT)))


def test_cost_models_by_hand():
    spec = get_spec("sparse_mla_prefill")
    a = _prefill_args()  # T=2, H=4, S=8, k=4, d_qk 576, d_v 512
    flops, nbytes = spec.cost(spec.bind(**a))
    assert flops == 2 * 2 * 4 * 4 * (576 + 512)
    assert nbytes == 2 * (2 * 4 * (576 + 512) + 8 * 576) + 4 * 2 * 4 + 4 * 2 * 4 * 2  # q+out, 8 distinct rows, idx, lse+max
    spec = get_spec("sparse_mla_decode")
    flops, nbytes = spec.cost(spec.bind(**_decode_args()))  # B=SQ=1, H=4, k=4, FP8 cache
    assert flops == 2 * 4 * 4 * (576 + 512)
    assert nbytes == 2 * 4 * (576 + 512) + 4 * (656 + 4) + 4 * 4
    spec = get_spec("mla_prefill_dense")
    a = {"q": torch.randn(3, 2, 192), "k": torch.randn(5, 2, 192), "v": torch.randn(5, 2, 128), "sm_scale": 0.1}
    # query positions 2, 3, 4 see 3 + 4 + 5 = 12 keys per head
    assert spec.cost(spec.bind(**a))[0] == 2 * 2 * 12 * (192 + 128)
