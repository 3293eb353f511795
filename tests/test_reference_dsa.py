"""Hand-checked facts about the DSA references: lightning indexer (float, FP8,
quant-mimicking, paged), the paged key-cache byte layout, and top-k selection.
Expected values come from brute-force loops, a hand-written FP8 decoder and
struct, never from the code under test."""
import math
import struct

import pytest
import torch

import dsport
from dsport.backends.reference.indexer import indexer_weights, quantize_indexer_inputs
from named_errors import check_named_error

ref = dsport.resolve("reference")
NEG_INF = float("-inf")
FMAX = {"e4m3fn": 448.0, "e4m3fnuz": 240.0}
DTYPE = {"e4m3fn": torch.float8_e4m3fn, "e4m3fnuz": torch.float8_e4m3fnuz}


def decode_fp8(byte: int, fmt: str) -> float:
    """E4M3 by the bit pattern: 1 sign, 4 exponent (bias 7, fnuz 8), 3 mantissa bits."""
    sign, exp, man = byte >> 7, (byte >> 3) & 0xF, byte & 0x7
    if fmt == "e4m3fnuz" and byte == 0x80 or fmt == "e4m3fn" and exp == 0xF and man == 0x7:
        return math.nan
    bias = 7 if fmt == "e4m3fn" else 8
    mag = man / 8 * 2.0 ** (1 - bias) if exp == 0 else (1 + man / 8) * 2.0 ** (exp - bias)
    return -mag if sign else mag


def decode_codes(t: torch.Tensor, fmt: str) -> torch.Tensor:
    """FP8 tensor (or its uint8 bytes) -> float64 values through decode_fp8."""
    table = torch.tensor([decode_fp8(b, fmt) for b in range(256)], dtype=torch.float64)
    raw = t if t.dtype == torch.uint8 else t.view(torch.uint8)
    return table[raw.long()]


def ue8m0(amax: float, fmax: float) -> float:
    """2^ceil(log2(max(amax, 1e-4) / fmax)) by frexp (exact, no log rounding)."""
    m, e = math.frexp(max(amax, 1e-4) / fmax)
    return 2.0 ** (e - 1) if m == 0.5 else 2.0 ** e


def brute_indexer(q, k, w, ks, ke, k_scale=None):
    """The SPEC §4 formula, one scalar at a time."""
    T, H, D = q.shape
    S = k.shape[0]
    out = [[NEG_INF] * S for _ in range(T)]
    for t in range(T):
        for s in range(int(ks[t]), int(ke[t])):
            acc = 0.0
            for h in range(H):
                dot = sum(float(q[t, h, d]) * float(k[s, d]) for d in range(D))
                acc += float(w[t, h]) * max(dot, 0.0)
            out[t][s] = acc * (1.0 if k_scale is None else float(k_scale[s]))
    return torch.tensor(out, dtype=torch.float64)


def assert_logits_equal(got, want, rtol=1e-12):
    assert torch.equal(torch.isneginf(got), torch.isneginf(want))
    fin = torch.isfinite(want)
    torch.testing.assert_close(got[fin], want[fin], rtol=rtol, atol=rtol * max(1.0, float(want[fin].abs().max())) if fin.any() else 0.0)


def i32(*v):
    return torch.tensor(v, dtype=torch.int32)


# -- indexer_logits -------------------------------------------------------------------------------
def test_indexer_logits_matches_brute_force_loop():
    g = torch.Generator().manual_seed(10)
    q, k = torch.randn(3, 2, 8, generator=g, dtype=torch.float64), torch.randn(7, 8, generator=g, dtype=torch.float64)
    w = torch.randn(3, 2, generator=g, dtype=torch.float64)
    ks, ke = i32(0, 2, 7), i32(7, 5, 7)  # full row, a window, an empty window
    got = ref.indexer_logits(q, k, w, ks, ke)
    assert_logits_equal(got, brute_indexer(q, k, w, ks, ke))
    assert torch.isneginf(got[1, [0, 1, 5, 6]]).all() and torch.isfinite(got[1, 2:5]).all() and torch.isneginf(got[2]).all()


def test_indexer_relu_drops_negative_heads():
    q = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])  # head 0 agrees with k, head 1 opposes it
    k = torch.tensor([[2.0, 0.0]])
    got = ref.indexer_logits(q, k, torch.tensor([[0.5, 100.0]]), i32(0), i32(1))
    assert got.item() == 1.0  # 0.5 * relu(2) + 100 * relu(-2)


@pytest.mark.parametrize("fmt", ["e4m3fn", "e4m3fnuz"])
def test_indexer_logits_fp8_codes_and_k_scale_by_brute_force(fmt):
    g = torch.Generator().manual_seed(11)
    q8 = (torch.randn(2, 3, 128, generator=g) * 40).to(DTYPE[fmt])
    k8 = (torch.randn(5, 128, generator=g) * 40).to(DTYPE[fmt])
    w = torch.randn(2, 3, generator=g)
    k_scale = torch.tensor([2.0 ** -7, 2.0 ** -3, 1.0, 0.5, 2.0 ** -9])
    ks, ke = i32(0, 1), i32(5, 4)
    want = brute_indexer(decode_codes(q8, fmt), decode_codes(k8, fmt), w, ks, ke, k_scale)
    assert_logits_equal(ref.indexer_logits(q8, k8, w, ks, ke, k_scale=k_scale), want)


def test_indexer_nan_is_reported_inside_its_window_only():
    q, k = torch.ones(2, 1, 4), torch.ones(6, 4)
    q[0, 0, 2] = float("nan")
    got = ref.indexer_logits(q, k, torch.ones(2, 1), i32(1, 0), i32(3, 6))
    assert torch.isnan(got[0, 1:3]).all() and torch.isneginf(got[0, [0, 3, 4, 5]]).all()
    assert torch.all(got[1] == 4.0)


def _hand_quantize(x: torch.Tensor, fmt: str):
    """Per-vector ue8m0 scales computed with math; the bound on |dequant - x|."""
    rows = x.reshape(-1, x.shape[-1]).double()
    s = torch.tensor([ue8m0(float(r.abs().max()), FMAX[fmt]) for r in rows], dtype=torch.float64)
    return s.reshape(x.shape[:-1])


@pytest.mark.parametrize("fmt", ["e4m3fn", "e4m3fnuz"])
def test_quantize_indexer_inputs_by_hand(fmt):
    g = torch.Generator().manual_seed(12)
    q, k = torch.randn(3, 4, 128, generator=g) * 5, torch.randn(9, 128, generator=g) / 7
    q[0, 1] = 0.0  # amax floor
    w = torch.randn(3, 4, generator=g)
    d = quantize_indexer_inputs(q, k, w, fmt=fmt)
    assert d["q"].dtype == d["k"].dtype == DTYPE[fmt] and d["k_scale"].dtype == d["weights"].dtype == torch.float32
    qs, kscale = _hand_quantize(q, fmt), _hand_quantize(k, fmt)
    assert torch.equal(d["k_scale"].double(), kscale)
    assert torch.equal(d["weights"].double(), w.double() * qs)  # q's power-of-two scale folded in exactly
    for codes, scale, x in ((d["q"], qs, q), (d["k"], kscale, k)):
        deq = decode_codes(codes, fmt) * scale[..., None]
        # round to nearest in 3 mantissa bits: <= 2^-4 relative, or half a subnormal step (<= 2^-10 * s)
        assert torch.all((deq - x.double()).abs() <= x.double().abs() * 2.0 ** -4 + scale[..., None] * 2.0 ** -10)


@pytest.mark.parametrize("fmt", ["e4m3fn", "e4m3fnuz"])
def test_quant_mimicking_path_equals_brute_force_on_dequantized_inputs(fmt):
    g = torch.Generator().manual_seed(13)
    q, k, w = torch.randn(3, 4, 128, generator=g), torch.randn(10, 128, generator=g), torch.randn(3, 4, generator=g)
    ks, ke = i32(0, 3, 2), i32(10, 9, 2)
    d = quantize_indexer_inputs(q, k, w, fmt=fmt)
    qs, kscale = _hand_quantize(q, fmt), _hand_quantize(k, fmt)
    want = brute_indexer(decode_codes(d["q"], fmt) * qs[..., None], decode_codes(d["k"], fmt) * kscale[:, None], w, ks, ke)
    assert_logits_equal(ref.indexer_logits(**d, ks=ks, ke=ke), want, rtol=1e-13)


@pytest.mark.parametrize("fmt", ["e4m3fn", "e4m3fnuz"])
@pytest.mark.parametrize("aligned", [False, True])
def test_fp8_path_is_within_the_quantization_bound_of_the_float_path(fmt, aligned):
    """Random signs test the bound's validity; aligned (all-positive) q, k, w leave no
    cancellation, so there the bound is tight enough to reject a 2x format mix-up."""
    g = torch.Generator().manual_seed(14)
    T, S, H, D = 4, 64, 8, 128
    q, k = torch.randn(T, H, D, generator=g, dtype=torch.float64), torch.randn(S, D, generator=g, dtype=torch.float64)
    w = indexer_weights(torch.randn(T, H, generator=g), n_heads=H, head_dim=D)
    if aligned:
        q, k, w = q.abs(), k.abs(), w.abs()
    ks, ke = torch.zeros(T, dtype=torch.int32), torch.full((T,), S, dtype=torch.int32)
    exact = ref.indexer_logits(q, k, w, ks, ke)
    d = quantize_indexer_inputs(q.float(), k.float(), w, fmt=fmt)
    approx = ref.indexer_logits(**d, ks=ks, ke=ke)
    qs, kscale = _hand_quantize(q.float(), fmt), _hand_quantize(k.float(), fmt)
    qh, kh = decode_codes(d["q"], fmt) * qs[..., None], decode_codes(d["k"], fmt) * kscale[:, None]
    eq = q.abs() * 2.0 ** -4 + qs[..., None] * 2.0 ** -10
    ek = k.abs() * 2.0 ** -4 + kscale[:, None] * 2.0 ** -10
    # relu is 1-Lipschitz: |I8 - I| <= sum_h |w| (|q^| . e_k + e_q . |k|), with the float32 rounding of q, k inside e
    per_head = torch.einsum("thd,sd->ths", qh.abs(), ek) + torch.einsum("thd,sd->ths", eq, k.abs())
    bound = torch.einsum("th,ths->ts", w.double().abs(), per_head) * (1 + 1e-6)
    err = (approx - exact).abs()
    assert torch.all(err <= bound)
    assert float(err.max()) > 0  # the FP8 path really is a different computation
    # not vacuous: about 2 * 2^-4 of the cancellation-free magnitude
    magnitude = torch.einsum("th,ths->ts", w.double().abs(), torch.einsum("thd,sd->ths", q.abs(), k.abs()))
    assert torch.all(bound <= 0.14 * magnitude)
    if aligned:
        assert torch.all((2 * approx - exact).abs() > bound)


def test_indexer_weights_folds_head_count_and_head_dim():
    w = torch.tensor([[1.0, -2.0]])
    assert indexer_weights(w).tolist()[0] == pytest.approx([1 / math.sqrt(64 * 128), -2 / math.sqrt(64 * 128)], rel=1e-7)
    assert indexer_weights(w, n_heads=4, head_dim=16).tolist()[0] == pytest.approx([1 / 8, -2 / 8], rel=1e-7)
    assert indexer_weights(w.bfloat16()).dtype == torch.float32


# -- paged key cache ---------------------------------------------------------------------------------
def test_index_cache_byte_layout_by_hand():
    k = torch.zeros(1, 2, 128)
    k[0, 0] = 224.0  # amax / 448 = 0.5 -> ue8m0 scale 0.5, every code 448 = 0b0_1111_110
    k[0, 1, 0] = -3.0  # amax / 448 = 0.0067 -> 2^-7 = 0.0078125; -3 / 2^-7 = -384 = 0b1_1111_100
    c = ref.index_cache_pack(k)
    assert c.shape == (1, 2, 132) and c.dtype == torch.uint8
    flat = c.reshape(-1).tolist()
    assert flat[:128] == [0x7E] * 128
    assert flat[128] == 0xFC and flat[129:256] == [0] * 127
    assert bytes(flat[256:260]) == struct.pack("<f", 0.5) == b"\x00\x00\x00\x3f"  # scales follow ALL the fp8 bytes
    assert bytes(flat[260:264]) == struct.pack("<f", 2.0 ** -7)


@pytest.mark.parametrize("fmt, bs", [("e4m3fn", 64), ("e4m3fn", 1), ("e4m3fnuz", 64), ("e4m3fnuz", 3)])
def test_index_cache_layout_and_round_trip(fmt, bs):
    g = torch.Generator().manual_seed(15)
    k = torch.randn(3, bs, 128, generator=g) * torch.rand(3, bs, 1, generator=g) * 10
    k[0, 0] = 0.0
    c = ref.index_cache_pack(k, fmt=fmt)
    for nb in range(3):
        blk = bytes(c[nb].reshape(-1).tolist())
        for j in range(bs):
            scale = struct.unpack_from("<f", blk, bs * 128 + 4 * j)[0]
            assert scale == ue8m0(float(k[nb, j].abs().max()), FMAX[fmt])
            deq = decode_codes(torch.tensor(list(blk[j * 128:(j + 1) * 128]), dtype=torch.uint8), fmt) * scale
            assert torch.all((deq - k[nb, j].double()).abs() <= k[nb, j].double().abs() * 2.0 ** -4 + scale * 2.0 ** -10)
    k8, s = ref.index_cache_unpack(c, fmt=fmt)
    assert k8.dtype == DTYPE[fmt] and s.dtype == torch.float32 and k8.shape == (3, bs, 128) and s.shape == (3, bs)
    raw = c.reshape(3, -1)
    assert torch.equal(k8.view(torch.uint8).reshape(3, -1), raw[:, : bs * 128])
    assert torch.equal(s.view(torch.uint8).reshape(3, -1), raw[:, bs * 128:])


@pytest.mark.parametrize("case_id", ["tiny", "page-size-1", "fnuz", "non-contiguous"])
def test_index_cache_unpack_loses_no_byte(case_id):
    case = next(c for c in dsport.get_spec("index_cache_unpack").cases() if c.id == case_id).inputs()
    c = case["cache"]
    k8, s = ref.index_cache_unpack(**case)
    nb, bs = c.shape[:2]
    for b in range(nb):
        blk = bytes(c[b].reshape(-1).tolist())
        assert bytes(k8[b].contiguous().view(torch.uint8).reshape(-1).tolist()) == blk[: bs * 128]
        assert s[b].tolist() == list(struct.unpack(f"<{bs}f", blk[bs * 128:]))


def _gather_keys(case, fmt):
    """Walk block_table by hand over the raw bytes: contiguous keys and scales per sequence."""
    c, table, lens = case["k_cache"], case["block_table"], case["seqlens"]
    bs = c.shape[1]
    seqs = []
    for b in range(table.shape[0]):
        keys, scales = [], []
        for p in range(int(lens[b])):
            blk = c[int(table[b, p // bs])].reshape(-1)
            j = p % bs
            keys.append(decode_codes(blk[j * 128:(j + 1) * 128], fmt))
            scales.append(struct.unpack("<f", bytes(blk[bs * 128 + 4 * j: bs * 128 + 4 * j + 4].tolist()))[0])
        seqs.append((torch.stack(keys) if keys else torch.zeros(0, 128, dtype=torch.float64),
                     torch.tensor(scales, dtype=torch.float64)))
    return seqs


@pytest.mark.parametrize("case_id, fmt", [("tiny", "e4m3fn"), ("page-size-1", "e4m3fn"), ("empty-sequence", "e4m3fn"),
                                          ("fnuz", "e4m3fnuz"), ("heads-8", "e4m3fn")])
def test_paged_equals_indexer_logits_on_the_gathered_keys(case_id, fmt):
    case = next(c for c in dsport.get_spec("indexer_logits_paged").cases() if c.id == case_id).inputs()
    got = ref.indexer_logits_paged(**case)
    mb_bs = case["block_table"].shape[1] * case["k_cache"].shape[1]
    assert got.shape == (case["q"].shape[0], mb_bs)
    for b, (keys, scales) in enumerate(_gather_keys(case, fmt)):
        n = keys.shape[0]
        assert torch.isneginf(got[b, n:]).all()
        if n:
            q = decode_codes(case["q"][b: b + 1], fmt)
            want = ref.indexer_logits(q, keys * scales[:, None], case["weights"][b: b + 1], i32(0), i32(n))
            torch.testing.assert_close(got[b, :n], want[0], rtol=1e-13, atol=0)


def test_paged_by_brute_force_on_one_small_sequence():
    case = next(c for c in dsport.get_spec("indexer_logits_paged").cases() if c.id == "page-size-1").inputs()
    (keys, scales), = _gather_keys({k: v[:1] if k != "k_cache" else v for k, v in case.items()}, "e4m3fn")
    n = keys.shape[0]
    want = brute_indexer(decode_codes(case["q"][:1], "e4m3fn"), keys, case["weights"][:1], [0], [n], scales)
    assert_logits_equal(ref.indexer_logits_paged(**case)[0, :n][None], want)


# -- top-k ---------------------------------------------------------------------------------------
def check_topk(idx, logits, k, ks=None, ke=None):
    """Set semantics: distinct indices in the window, -1 only as trailing padding after
    min(k, window) entries, selected values = the top-k multiset (Python's sorted)."""
    for t in range(logits.shape[0]):
        lo, hi = (0, logits.shape[1]) if ks is None else (int(ks[t]), int(ke[t]))
        row = idx[t].tolist()
        n = min(k, hi - lo)
        assert row[n:] == [-1] * (k - n)
        chosen = row[:n]
        assert len(set(chosen)) == n and all(lo <= i < hi for i in chosen)
        want = sorted(logits[t, lo:hi].tolist(), reverse=True)[:n]
        assert sorted((logits[t, i].item() for i in chosen), reverse=True) == want


def test_topk_hand_example_and_tie():
    logits = torch.tensor([[0.1, 5.0, 3.0, 5.0, -1.0, 2.0], [1.0, 2.0, 2.0, 2.0, 0.0, 0.0]])
    idx = ref.topk_select(logits, 3)
    assert idx.dtype == torch.int32 and idx.shape == (2, 3)
    assert set(idx[0].tolist()) == {1, 2, 3}
    assert set(idx[1].tolist()) == {1, 2, 3}
    two = ref.topk_select(logits[1:], 2)  # a tie straddles the boundary: any two of {1, 2, 3}
    assert set(two[0].tolist()) <= {1, 2, 3} and len(set(two[0].tolist())) == 2


def test_topk_pads_with_minus_one_when_fewer_than_k():
    idx = ref.topk_select(torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.0]]), 8)
    assert sorted(idx[0, :5].tolist()) == [0, 1, 2, 3, 4] and idx[0, 5:].tolist() == [-1, -1, -1]


def test_topk_respects_ks_ke():
    logits = torch.arange(10.0).repeat(3, 1)
    idx = ref.topk_select(logits, 3, i32(2, 0, 4), i32(6, 10, 4))
    assert set(idx[0].tolist()) == {3, 4, 5}  # 6.. are larger but outside [2, 6)
    assert set(idx[1].tolist()) == {7, 8, 9}
    assert idx[2].tolist() == [-1, -1, -1]  # empty window


def test_topk_minus_inf_inside_the_window_is_still_a_position():
    idx = ref.topk_select(torch.tensor([[NEG_INF, NEG_INF, 1.0]]), 3)
    assert sorted(idx[0].tolist()) == [0, 1, 2]


@pytest.mark.parametrize("case_id", ["ties-at-boundary", "ties-in-windows", "empty-windows", "masked-indexer-rows",
                                     "dense-S-lt-k", "infinities", "non-contiguous", "ds-whole-rows", "ds-causal-around-k", "ds-ties"])
def test_topk_cases_select_the_top_multiset(case_id):
    case = next(c for c in dsport.get_spec("topk_select").cases() if c.id == case_id).inputs()
    idx = ref.topk_select(**case)
    check_topk(idx, case["logits"], case["k"], case.get("ks"), case.get("ke"))


def test_topk_checker_catches_a_wrong_selection():
    logits = torch.tensor([[3.0, 1.0, 2.0, 2.0]])
    with pytest.raises(AssertionError):
        check_topk(torch.tensor([[0, 1]], dtype=torch.int32), logits, 2)  # 1 is not among the top two values
    with pytest.raises(AssertionError):
        check_topk(torch.tensor([[0, 0]], dtype=torch.int32), logits, 2)  # duplicate index
    with pytest.raises(AssertionError):
        check_topk(torch.tensor([[0, -1]], dtype=torch.int32), logits, 2)  # padding although 4 are valid
    check_topk(torch.tensor([[3, 0]], dtype=torch.int32), logits, 2)  # the other tie choice is fine


# -- the indexer's RoPE pairing changes what gets selected ---------------------------------------------
def test_indexer_rope_pairing_changes_the_selection():
    """One query at position 50 with energy only in dim 0; 48 keys whose dims (0, 32) -- a
    rotate-half pair -- are set so that, after rotate-half RoPE, the 8 target keys score
    exactly 1 and the others cos(0.5). Interleaved RoPE pairs dim 0 with dim 1 instead and
    scores key s as cos(phi_s) * cos(t - s): a different top-8 (computed here by hand)."""
    t_pos, n_keys, k_top = 50, 48, 8
    targets = {3, 7, 11, 19, 23, 31, 40, 45}
    freqs = ref.yarn_freqs()
    f0 = float(freqs[0])
    assert f0 == 1.0
    phi = [(t_pos - s) * f0 - (0.0 if s in targets else 0.5) for s in range(n_keys)]
    rotate_half = [math.cos(t_pos * f0 - p - s * f0) for s, p in enumerate(phi)]
    interleaved = [math.cos(p) * math.cos((t_pos - s) * f0) for s, p in enumerate(phi)]
    top = lambda v: set(sorted(range(n_keys), key=lambda s: -v[s])[:k_top])  # noqa: E731
    assert top(rotate_half) == targets and top(interleaved) != targets

    q = torch.zeros(1, 1, 128, dtype=torch.float64)
    q[0, 0, 0] = 1.0
    k = torch.zeros(n_keys, 1, 128, dtype=torch.float64)
    k[:, 0, 0] = torch.tensor([math.cos(p) for p in phi], dtype=torch.float64)
    k[:, 0, 32] = torch.tensor([math.sin(p) for p in phi], dtype=torch.float64)

    def select(interleave: bool) -> set[int]:
        """Indexer pipeline: RoPE on the FIRST 64 of 128 dims, Hadamard, logits, top-k."""
        def rotate(x, pos):
            return torch.cat([ref.rope(x[..., :64], pos, freqs, interleaved=interleave), x[..., 64:]], -1)
        qr = ref.hadamard(rotate(q, torch.tensor([t_pos])))
        kr = ref.hadamard(rotate(k, torch.arange(n_keys)))[:, 0]
        logits = ref.indexer_logits(qr, kr, torch.ones(1, 1), i32(0), i32(n_keys))
        want = rotate_half if not interleave else interleaved
        torch.testing.assert_close(logits[0], torch.tensor(want, dtype=torch.float64).clamp_min(0), rtol=0, atol=1e-12)
        return set(ref.topk_select(logits.float(), k_top, i32(0), i32(n_keys))[0].tolist())

    assert select(interleave=False) == targets
    assert select(interleave=True) == top(interleaved) != targets


# -- validation errors name op and argument ---------------------------------------------------------------
E4 = torch.float8_e4m3fn


def _fp8(*shape, dtype=E4):
    return torch.zeros(*shape).to(dtype)


def _paged(**over):
    args = {"q": _fp8(2, 4, 128), "k_cache": torch.zeros(3, 4, 132, dtype=torch.uint8), "weights": torch.ones(2, 4),
            "block_table": i32(0, 1, 2, -1).reshape(2, 2), "seqlens": i32(5, 3)}
    return {**args, **over}


Q, K, W, KS, KE = torch.randn(2, 3, 16), torch.randn(5, 16), torch.randn(2, 3), i32(0, 0), i32(5, 5)


@pytest.mark.parametrize("call, op, arg, fragment", [
    (lambda: ref.indexer_logits(torch.randn(2, 16), K, W, KS, KE), "indexer_logits", "q", "rank 3"),
    (lambda: ref.indexer_logits(Q, torch.randn(5, 8), W, KS, KE), "indexer_logits", "k", "shape"),
    (lambda: ref.indexer_logits(Q, K, torch.randn(2, 4), KS, KE), "indexer_logits", "weights", "shape"),
    (lambda: ref.indexer_logits(Q, K, W, KS.long(), KE), "indexer_logits", "ks", "dtype"),
    (lambda: ref.indexer_logits(Q, K, W, KS, i32(5, 6)), "indexer_logits", "ke", "ke[t] <= S"),
    (lambda: ref.indexer_logits(Q, K, W, i32(3, 0), i32(2, 5)), "indexer_logits", "ke", "ks[t] <= ke[t]"),
    (lambda: ref.indexer_logits(Q, K, W, i32(-1, 0), KE), "indexer_logits", "ke", "0 <= ks[t]"),
    (lambda: ref.indexer_logits(_fp8(2, 3, 16), K, W, KS, KE, torch.ones(5)), "indexer_logits", "k", "same kind as q"),
    (lambda: ref.indexer_logits(_fp8(2, 3, 16), _fp8(5, 16, dtype=torch.float8_e4m3fnuz), W, KS, KE, torch.ones(5)),
     "indexer_logits", "k", "same fp8 dtype"),
    (lambda: ref.indexer_logits(_fp8(2, 3, 16), _fp8(5, 16), W, KS, KE), "indexer_logits", "k_scale", "exactly when q and k are fp8"),
    (lambda: ref.indexer_logits(Q, K, W, KS, KE, torch.ones(5)), "indexer_logits", "k_scale", "exactly when q and k are fp8"),
    (lambda: ref.indexer_logits(_fp8(2, 3, 16), _fp8(5, 16), W, KS, KE, torch.ones(5, dtype=torch.float64)),
     "indexer_logits", "k_scale", "dtype"),
    (lambda: ref.indexer_logits(_fp8(2, 3, 16), _fp8(5, 16), W, KS, KE, torch.ones(4)), "indexer_logits", "k_scale", "shape"),
    (lambda: ref.indexer_logits_paged(**_paged(q=torch.zeros(2, 4, 128))), "indexer_logits_paged", "q", "dtype"),
    (lambda: ref.indexer_logits_paged(**_paged(q=_fp8(2, 4, 64))), "indexer_logits_paged", "q", "D == 128"),
    (lambda: ref.indexer_logits_paged(**_paged(k_cache=torch.zeros(3, 4, 128, dtype=torch.uint8))),
     "indexer_logits_paged", "k_cache", "shape"),
    (lambda: ref.indexer_logits_paged(**_paged(k_cache=torch.zeros(3, 4, 132, dtype=torch.int8))),
     "indexer_logits_paged", "k_cache", "dtype"),
    (lambda: ref.indexer_logits_paged(**_paged(weights=torch.ones(2, 5))), "indexer_logits_paged", "weights", "shape"),
    (lambda: ref.indexer_logits_paged(**_paged(seqlens=i32(9, 3))), "indexer_logits_paged", "seqlens", "MB * BS"),
    (lambda: ref.indexer_logits_paged(**_paged(seqlens=i32(-1, 3))), "indexer_logits_paged", "seqlens", "0 <= seqlens"),
    (lambda: ref.indexer_logits_paged(**_paged(block_table=i32(0, 3, 2, -1).reshape(2, 2))),
     "indexer_logits_paged", "block_table", "[-1, NB)"),
    (lambda: ref.indexer_logits_paged(**_paged(seqlens=i32(5, 7))), "indexer_logits_paged", "block_table", "every page"),
    (lambda: ref.index_cache_pack(torch.randn(2, 4, 64)), "index_cache_pack", "k", "shape"),
    (lambda: ref.index_cache_pack(torch.zeros(2, 4, 128, dtype=torch.uint8)), "index_cache_pack", "k", "dtype"),
    (lambda: ref.index_cache_pack(torch.randn(2, 4, 128), fmt="e5m2"), "index_cache_pack", "fmt", "e4m3fn"),
    (lambda: ref.index_cache_unpack(torch.zeros(2, 4, 132)), "index_cache_unpack", "cache", "dtype"),
    (lambda: ref.index_cache_unpack(torch.zeros(2, 4, 128, dtype=torch.uint8)), "index_cache_unpack", "cache", "shape"),
    (lambda: ref.index_cache_unpack(torch.zeros(2, 4, 132, dtype=torch.uint8), fmt="fp8"), "index_cache_unpack", "fmt", "one of"),
    (lambda: ref.topk_select(torch.randn(2, 5), 0), "topk_select", "k", ">= 1"),
    (lambda: ref.topk_select(torch.randn(2, 5), 2.0), "topk_select", "k", "type int"),
    (lambda: ref.topk_select(torch.randn(2, 5), 2, KS), "topk_select", "ke", "both given or both None"),
    (lambda: ref.topk_select(torch.randn(2, 5), 2, None, KE), "topk_select", "ke", "both given or both None"),
    (lambda: ref.topk_select(torch.randn(2, 5), 2, KS, i32(5, 6)), "topk_select", "ke", "ke[t] <= S"),
    (lambda: ref.topk_select(torch.randn(2, 5), 2, i32(4, 0), i32(3, 5)), "topk_select", "ke", "ks[t] <= ke[t]"),
    (lambda: ref.topk_select(torch.randn(2, 5, dtype=torch.bfloat16), 2), "topk_select", "logits", "dtype"),
    (lambda: ref.topk_select(torch.randn(2, 5), 2, i32(0, 0, 0), i32(5, 5, 5)), "topk_select", "ks", "shape"),
    (lambda: ref.topk_select(torch.randn(5), 2), "topk_select", "logits", "rank 2"),
])
def test_error_names_op_and_argument(call, op, arg, fragment):
    check_named_error(call, op, arg, fragment)


@pytest.mark.parametrize("call, op, arg, fragment", [
    (lambda: quantize_indexer_inputs(Q, K, torch.randn(1, 3)), "quantize_indexer_inputs", "weights", "[T, H]"),
    (lambda: quantize_indexer_inputs(Q, torch.randn(5, 8), W), "quantize_indexer_inputs", "k", "D = 16"),
    (lambda: quantize_indexer_inputs(Q[0], K, W), "quantize_indexer_inputs", "q", "rank 3"),
    (lambda: quantize_indexer_inputs(_fp8(2, 3, 16), K, W), "quantize_indexer_inputs", "q", "float"),
    (lambda: quantize_indexer_inputs(Q, K, W, fmt="e5m2"), "quantize_indexer_inputs", "fmt", "e4m3fn"),
])
def test_helper_error_names_op_and_argument(call, op, arg, fragment):
    check_named_error(call, op, arg, fragment)
